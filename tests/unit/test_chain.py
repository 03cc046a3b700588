"""storage_node/chain.py: the segment chain and its SCL, against a plain reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from borealis.ids import Lsn
from storage_node.chain import SegmentChain

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=150, deadline=None)


def links(chain: list[int]) -> list[tuple[int, int]]:
    """(lsn, prev_lsn_pg) for each record of a PG chain; the first one's backlink is 0."""
    return [(lsn, chain[index - 1] if index else 0) for index, lsn in enumerate(chain)]


def complete_prefix_end(chain: list[int], delivered: set[int]) -> int:
    """The last LSN of the longest prefix of `chain` that is fully delivered (0 if none)."""
    scl = 0
    for lsn in chain:
        if lsn not in delivered:
            break
        scl = lsn
    return scl


def assert_consistent(segment: SegmentChain, chain: list[int], delivered: set[int]) -> None:
    scl = complete_prefix_end(chain, delivered)
    assert segment.scl == scl
    pending = sorted(lsn for lsn in delivered if lsn > scl)
    assert segment.pending() == len(pending)
    if pending:
        assert segment.hole() == (scl, pending[0])
        # The hole is real: the record right after the SCL is missing, the bound is held.
        missing = chain[chain.index(scl) + 1 if scl else 0]
        assert scl < missing < pending[0]
        assert not segment.holds(Lsn(missing))
    else:
        assert segment.hole() is None
    for lsn in chain:
        assert segment.holds(Lsn(lsn)) == (lsn in delivered), lsn
    assert segment.highest_lsn == max(delivered, default=0)


chains = st.lists(st.integers(1, 10**6), unique=True, max_size=40).map(sorted)


@SETTINGS
@given(chains, st.data())
def test_scl_is_the_end_of_the_longest_complete_prefix(chain: list[int], data) -> None:
    records = links(chain)
    deliveries = (
        data.draw(st.lists(st.sampled_from(records), max_size=3 * len(records)), label="order")
        if records
        else []
    )
    segment = SegmentChain()
    assert_consistent(segment, chain, set())
    delivered: set[int] = set()
    for lsn, prev in deliveries:
        scl_before = segment.scl
        added = segment.add(Lsn(lsn), Lsn(prev))
        assert added == (lsn not in delivered)
        delivered.add(lsn)
        assert segment.scl >= scl_before
        assert_consistent(segment, chain, delivered)
    # Delivering every record completes the chain, whatever came before.
    for lsn, prev in records:
        segment.add(Lsn(lsn), Lsn(prev))
    assert segment.scl == (chain[-1] if chain else 0)
    assert segment.pending() == 0
    assert segment.hole() is None


@SETTINGS
@given(chains, st.data())
def test_the_order_of_delivery_does_not_change_the_result(chain: list[int], data) -> None:
    records = links(chain)
    subset = (
        data.draw(st.lists(st.sampled_from(records), unique=True), label="subset")
        if records
        else []
    )
    shuffled = data.draw(st.permutations(subset), label="shuffled")
    in_order, out_of_order = SegmentChain(), SegmentChain()
    for lsn, prev in sorted(subset):
        in_order.add(Lsn(lsn), Lsn(prev))
    for lsn, prev in shuffled:
        out_of_order.add(Lsn(lsn), Lsn(prev))
    assert in_order.scl == out_of_order.scl
    assert in_order.pending() == out_of_order.pending()
    assert in_order.hole() == out_of_order.hole()
    # A chain rebuilt from its saved SCL and pending records is the same chain.
    pending = [(lsn, prev) for lsn, prev in subset if lsn > out_of_order.scl]
    reopened = SegmentChain(out_of_order.scl, pending)
    assert (reopened.scl, reopened.pending(), reopened.hole()) == (
        out_of_order.scl,
        out_of_order.pending(),
        out_of_order.hole(),
    )
    assert reopened.highest_lsn == out_of_order.highest_lsn


def test_add_returns_false_for_duplicates_below_and_above_the_scl() -> None:
    segment = SegmentChain()
    assert segment.add(Lsn(10), Lsn(0)) is True
    assert segment.add(Lsn(10), Lsn(0)) is False  # at the SCL
    assert segment.add(Lsn(30), Lsn(20)) is True
    assert segment.add(Lsn(30), Lsn(20)) is False  # pending
    assert (segment.scl, segment.pending(), segment.hole()) == (10, 1, (10, 30))
    assert segment.add(Lsn(20), Lsn(10)) is True
    assert (segment.scl, segment.pending(), segment.hole()) == (30, 0, None)
    assert segment.add(Lsn(20), Lsn(10)) is False  # now below the SCL
    assert segment.highest_lsn == 30


@SETTINGS
@given(chains, st.data())
def test_extend_is_add_for_a_batch(chain: list[int], data) -> None:
    records = links(chain)
    delivered = data.draw(st.lists(st.sampled_from(records)), label="delivered") if records else []
    batches = data.draw(st.lists(st.integers(0, 6), max_size=len(delivered) + 1), label="cuts")
    by_add, by_extend = SegmentChain(), SegmentChain()
    start = 0
    for size in [*batches, len(delivered)]:
        batch = sorted(delivered[start : start + size])  # extend takes LSN ascending
        start += size
        expected = [by_add.add(Lsn(lsn), Lsn(prev)) for lsn, prev in batch]
        assert by_extend.extend(batch) == expected
        assert (by_extend.scl, by_extend.pending(), by_extend.hole(), by_extend.highest_lsn) == (
            by_add.scl,
            by_add.pending(),
            by_add.hole(),
            by_add.highest_lsn,
        )


def test_extend_in_chain_order_moves_the_scl() -> None:
    segment = SegmentChain()
    assert segment.extend([(1, 0), (3, 1), (7, 3)]) == [True, True, True]
    assert (segment.scl, segment.pending(), segment.highest_lsn) == (7, 0, 7)
    assert segment.extend([(7, 3), (9, 7), (20, 15)]) == [False, True, True]
    assert (segment.scl, segment.pending(), segment.hole()) == (9, 1, (9, 20))
    assert segment.extend([(15, 9)]) == [True]
    assert (segment.scl, segment.pending(), segment.hole()) == (20, 0, None)


def test_a_backlink_at_or_above_the_lsn_is_a_programming_error() -> None:
    segment = SegmentChain()
    with pytest.raises(AssertionError):
        segment.add(Lsn(5), Lsn(5))
    with pytest.raises(AssertionError):
        segment.add(Lsn(5), Lsn(9))


# --- truncate --------------------------------------------------------------------------


def chain_with(delivered: list[int], chain: list[int]) -> SegmentChain:
    prev = dict(links(chain))
    segment = SegmentChain()
    for lsn in delivered:
        segment.add(Lsn(lsn), Lsn(prev[lsn]))
    return segment


def test_truncate_below_the_scl_falls_back_to_the_last_held_record() -> None:
    chain = [2, 4, 6, 8, 10]
    segment = chain_with(chain, chain)
    assert segment.scl == 10
    segment.truncate(above=Lsn(5), up_to=Lsn(20), last_held_at_or_below=Lsn(4))
    assert (segment.scl, segment.pending(), segment.hole(), segment.highest_lsn) == (4, 0, None, 4)
    assert not segment.holds(Lsn(6)) and not segment.holds(Lsn(10))
    # The new writer's records link to the last record at or below the truncation point.
    assert segment.add(Lsn(21), Lsn(4)) is True
    assert segment.scl == 21


def test_truncate_drops_pending_records_in_the_range_only() -> None:
    chain = [1, 2, 3, 4, 5, 6]
    segment = chain_with([1, 3, 5, 6], chain)
    assert (segment.scl, segment.pending()) == (1, 3)
    segment.truncate(above=Lsn(4), up_to=Lsn(5), last_held_at_or_below=Lsn(3))
    # 5 is forgotten; 3 (below the range) and 6 (above it) stay pending; the SCL stays.
    assert segment.scl == 1
    assert segment.pending() == 2
    assert segment.hole() == (1, 3)
    assert segment.holds(Lsn(3)) and segment.holds(Lsn(6)) and not segment.holds(Lsn(5))
    assert segment.highest_lsn == 6
    # A truncated record may be delivered again later (e.g. by a new writer).
    assert segment.add(Lsn(5), Lsn(4)) is True


def test_truncate_above_the_scl_keeps_it_and_lets_it_advance() -> None:
    chain = [1, 2, 3]
    segment = chain_with([1, 3], chain)
    segment.truncate(above=Lsn(2), up_to=Lsn(3), last_held_at_or_below=Lsn(1))
    assert (segment.scl, segment.pending(), segment.hole(), segment.highest_lsn) == (1, 0, None, 1)
    assert segment.add(Lsn(2), Lsn(1)) is True
    assert segment.scl == 2


def test_truncate_exactly_at_the_scl_changes_nothing_below() -> None:
    chain = [1, 2, 3]
    segment = chain_with(chain, chain)
    segment.truncate(above=Lsn(3), up_to=Lsn(9), last_held_at_or_below=Lsn(3))
    assert (segment.scl, segment.pending(), segment.highest_lsn) == (3, 0, 3)


def test_truncate_finds_the_new_writers_record_that_arrived_first() -> None:
    # Old chain 1, 2, 3; recovery truncates (2, 3]; the new writer's first record 4
    # links to 2. It arrives before the old record 3 (which shares its backlink)
    # and before the segment applies the truncation.
    segment = SegmentChain()
    assert segment.add(Lsn(4), Lsn(2)) is True
    assert segment.add(Lsn(3), Lsn(2)) is True
    assert segment.add(Lsn(1), Lsn(0)) is True
    assert segment.add(Lsn(2), Lsn(1)) is True
    assert segment.scl == 3  # along the old branch, for now
    segment.truncate(above=Lsn(2), up_to=Lsn(3), last_held_at_or_below=Lsn(2))
    assert segment.add(Lsn(4), Lsn(2)) is False  # the store re-adds it from its log
    assert (segment.scl, segment.pending(), segment.hole(), segment.highest_lsn) == (
        4,
        0,
        None,
        4,
    )
    assert segment.add(Lsn(5), Lsn(4)) is True
    assert segment.scl == 5


def test_truncate_argument_order_is_asserted() -> None:
    segment = SegmentChain()
    with pytest.raises(AssertionError):
        segment.truncate(above=Lsn(5), up_to=Lsn(4), last_held_at_or_below=Lsn(0))
    with pytest.raises(AssertionError):
        segment.truncate(above=Lsn(5), up_to=Lsn(9), last_held_at_or_below=Lsn(6))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 8), st.data())
def test_recovery_with_old_and_new_records_in_any_order(old_count: int, data) -> None:
    """Old records 1..old_count; recovery truncates (above, up_to]; the new writer's records
    link to the last kept one. Before the segment applies the truncation it gets any mix
    of both, in any order; afterwards it must agree with the surviving chain."""
    old = list(range(1, old_count + 1))
    above = data.draw(st.integers(0, old_count), label="above")
    up_to = old_count + data.draw(st.integers(0, 2), label="extra")
    new = list(range(up_to + 1, up_to + 1 + data.draw(st.integers(0, 4), label="new")))
    survivors = [lsn for lsn in old if lsn <= above] + new
    prev = {**dict(links(old)), **dict(links(survivors))}  # new records link into survivors
    records = [(lsn, prev[lsn]) for lsn in old + new]
    before = data.draw(st.lists(st.sampled_from(records)), label="before") if records else []
    segment = SegmentChain()
    logged: set[int] = set()  # what the store wrote: records the chain called new
    for lsn, backlink in before:
        if segment.add(Lsn(lsn), Lsn(backlink)):
            logged.add(lsn)
    last_held = max((lsn for lsn in logged if lsn <= above), default=0)
    segment.truncate(Lsn(above), Lsn(up_to), Lsn(last_held))
    for lsn in sorted(logged):  # op_set_epoch re-adds what its log holds above the range
        if lsn > up_to:
            segment.add(Lsn(lsn), Lsn(prev[lsn]))
    assert_consistent(segment, survivors, {lsn for lsn in logged if lsn in survivors})
    for lsn in survivors:
        segment.add(Lsn(lsn), Lsn(prev[lsn]))
    assert segment.scl == (survivors[-1] if survivors else 0)
    assert segment.pending() == 0


# --- state machine ---------------------------------------------------------------------


class ChainMachine(RuleBasedStateMachine):
    """A PG's chain grows, records arrive in any order, and recovery truncates it.

    The model is the list of the PG's records and the set the segment was given.
    Recovery truncates above a point up to (at least) everything the old writer
    allocated; the new writer then links its first record to the last one kept.
    """

    @initialize()
    def start(self) -> None:
        self.segment = SegmentChain()
        self.chain: list[int] = []
        self.delivered: set[int] = set()
        self.truncated: set[int] = set()
        self.lsn_allocated = 0

    @rule(step=st.integers(1, 3))
    def allocate(self, step: int) -> None:
        # LSNs are volume-wide: the records of other PGs take the ones skipped here.
        self.lsn_allocated += step
        self.chain.append(self.lsn_allocated)

    @precondition(lambda self: self.chain)
    @rule(data=st.data())
    def deliver(self, data) -> None:
        index = data.draw(st.integers(0, len(self.chain) - 1), label="index")
        lsn = self.chain[index]
        prev = self.chain[index - 1] if index else 0
        scl_before = self.segment.scl
        assert self.segment.add(Lsn(lsn), Lsn(prev)) == (lsn not in self.delivered)
        self.delivered.add(lsn)
        assert self.segment.scl >= scl_before

    @precondition(lambda self: self.chain)
    @rule()
    def deliver_all_in_order(self) -> None:
        for index, lsn in enumerate(self.chain):
            self.segment.add(Lsn(lsn), Lsn(self.chain[index - 1] if index else 0))
            self.delivered.add(lsn)
        assert self.segment.scl == self.chain[-1]

    @rule(data=st.data())
    def truncate(self, data) -> None:
        above = data.draw(st.integers(0, self.lsn_allocated), label="above")
        up_to = self.lsn_allocated + data.draw(st.integers(0, 5), label="extra")
        last_held = max((lsn for lsn in self.delivered if lsn <= above), default=0)
        self.segment.truncate(Lsn(above), Lsn(up_to), Lsn(last_held))
        self.truncated |= {lsn for lsn in self.chain if above < lsn <= up_to}
        self.chain = [lsn for lsn in self.chain if not above < lsn <= up_to]
        self.delivered = {lsn for lsn in self.delivered if not above < lsn <= up_to}
        self.lsn_allocated = up_to

    @invariant()
    def matches_the_model(self) -> None:
        assert_consistent(self.segment, self.chain, self.delivered)
        for lsn in self.truncated:
            if lsn > self.segment.scl:
                assert not self.segment.holds(Lsn(lsn)), lsn


ChainMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestChainMachine = ChainMachine.TestCase


class RecoveryMachine(RuleBasedStateMachine):
    """Recovery as a storage node sees it: the new writer's records may arrive before
    this segment applies the truncation, while old records of the truncated range are
    still pending or still arriving. The store then re-adds the records above the range
    from its log (storage_node/store.py op_set_epoch); after that the chain must match
    the model of the surviving chain exactly.
    """

    @initialize()
    def start(self) -> None:
        self.segment = SegmentChain()
        self.chain: list[int] = []  # the old writer's records (the new one's after recovery)
        self.delivered: set[int] = set()
        self.lsn_allocated = 0
        self.recovery: tuple[int, int] | None = None
        self.new_records: list[tuple[int, int]] = []

    @rule(step=st.integers(1, 3))
    def allocate(self, step: int) -> None:
        self.lsn_allocated += step
        if self.recovery is None:
            self.chain.append(self.lsn_allocated)
            return
        above, _ = self.recovery
        if self.new_records:
            prev = self.new_records[-1][0]
        else:
            prev = max((lsn for lsn in self.chain if lsn <= above), default=0)
        self.new_records.append((self.lsn_allocated, prev))

    def _records(self) -> list[tuple[int, int]]:
        return links(self.chain) + self.new_records

    @precondition(lambda self: self.chain or self.new_records)
    @rule(data=st.data())
    def deliver(self, data) -> None:
        # Half the time one of the new writer's records, when there are any.
        sources = [
            st.sampled_from(records) for records in (self.new_records, links(self.chain)) if records
        ]
        lsn, prev = data.draw(st.one_of(sources), label="record")
        scl_before = self.segment.scl
        added = self.segment.add(Lsn(lsn), Lsn(prev))
        # Mid-recovery the SCL may have run along the new writer's branch, past old
        # records it never got: those count as held (and the store does not log them).
        assert added == (lsn not in self.delivered and lsn > scl_before)
        if added:
            self.delivered.add(lsn)
        assert self.segment.scl >= scl_before

    @precondition(lambda self: self.chain)
    @rule(data=st.data())
    def deliver_old_records_in_order(self, data) -> None:
        """The writer's retry or gossip filling the old chain from its start."""
        count = data.draw(st.integers(1, len(self.chain)), label="count")
        for index, lsn in enumerate(self.chain[:count]):
            scl_before = self.segment.scl
            prev = self.chain[index - 1] if index else 0
            added = self.segment.add(Lsn(lsn), Lsn(prev))
            assert added == (lsn not in self.delivered and lsn > scl_before)
            if added:
                self.delivered.add(lsn)

    @precondition(lambda self: self.recovery is None)
    @rule(data=st.data())
    def begin_recovery(self, data) -> None:
        # Truncating at a record of the chain, or between records, or above them all.
        above = data.draw(
            st.one_of(st.sampled_from([0, *self.chain]), st.integers(0, self.lsn_allocated)),
            label="above",
        )
        up_to = self.lsn_allocated + data.draw(st.integers(0, 5), label="extra")
        self.recovery = (above, up_to)
        self.lsn_allocated = up_to

    @precondition(lambda self: self.recovery is not None)
    @rule()
    def apply_truncation(self) -> None:
        assert self.recovery is not None
        above, up_to = self.recovery
        last_held = max((lsn for lsn in self.delivered if lsn <= above), default=0)
        self.segment.truncate(Lsn(above), Lsn(up_to), Lsn(last_held))
        for lsn, prev in self.new_records:  # what op_set_epoch reads back from the log
            if lsn in self.delivered:
                self.segment.add(Lsn(lsn), Lsn(prev))
        self.chain = [lsn for lsn in self.chain if lsn <= above] + [
            lsn for lsn, _ in self.new_records
        ]
        self.delivered = {lsn for lsn in self.delivered if not above < lsn <= up_to}
        self.recovery = None
        self.new_records = []

    @invariant()
    def matches_the_model(self) -> None:
        if self.recovery is None:
            assert_consistent(self.segment, self.chain, self.delivered)
            return
        # Mid-recovery the segment sees two branches; it holds exactly what it was given
        # above its SCL, and its SCL is a record it was given.
        assert self.segment.scl == 0 or self.segment.scl in self.delivered
        for lsn, _ in self._records():
            if lsn > self.segment.scl:
                assert self.segment.holds(Lsn(lsn)) == (lsn in self.delivered), lsn


RecoveryMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
TestRecoveryMachine = RecoveryMachine.TestCase
