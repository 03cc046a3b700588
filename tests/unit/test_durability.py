"""compute_node/volume/durability.py: VDL tracking, waiters and LAL, against a brute-force
reference recomputed from every SCL after each step."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from borealis.errors import InvalidRequest
from borealis.ids import Lsn, PgIndex, VolumeId
from compute_node.volume.durability import AckRefused, DurabilityTracker, Waiters
from compute_node.volume.lsn import LsnAllocator
from compute_node.volume.topology import WRITE_QUORUM, Topology
from storage_node.segment import Member

pytestmark = pytest.mark.unit

NODES = [f"n{index}" for index in range(9)]
PGS_MAX = 4
GROUP_RECORDS_MAX = 5


SIX = ["a", "b", "c", "d", "e", "f"]


def reference(
    records: list[tuple[int, int, bool]],
    scl: dict[tuple[int, str], int],
    members_by_pg: dict[int, list[str]],
    lsn_start: int,
) -> tuple[int, int]:
    """(VCL, VDL) from scratch: a record is complete when 4 of its PG's members report
    SCL >= it; VCL ends the longest complete prefix; VDL is the last CPL within it."""
    vcl = vdl = lsn_start
    for lsn, pg, is_cpl in records:
        holders = sum(scl[(pg, node)] >= lsn for node in members_by_pg[pg])
        if holders < WRITE_QUORUM:
            break
        vcl = lsn
        if is_cpl:
            vdl = lsn
    return vcl, vdl


class DurabilityMachine(RuleBasedStateMachine):
    """Rules draw from fixed strategies (indices reduced modulo the current choices):
    strategies built per step from the state cost more than the tracker, and they
    shrink poorly."""

    @initialize(
        rotations=st.lists(st.integers(0, len(NODES) - 1), min_size=PGS_MAX, max_size=PGS_MAX),
        pg_count=st.integers(1, PGS_MAX),
        lsn_start=st.integers(0, 40),
        truncation_lsns=st.integers(0, 10),
        lal_lsns=st.integers(1, 25),
    )
    def start(
        self,
        rotations: list[int],
        pg_count: int,
        lsn_start: int,
        truncation_lsns: int,
        lal_lsns: int,
    ) -> None:
        # PGs share a pool of nodes, each PG on 6 of them, as placement does.
        self.members_by_pg = {
            pg: (NODES[rotations[pg] :] + NODES[: rotations[pg]])[:6] for pg in range(pg_count)
        }
        self.lsn_start = lsn_start
        self.floor = lsn_start + truncation_lsns
        self.lal_lsns = lal_lsns
        self.tracker = DurabilityTracker(
            lsn_start=Lsn(lsn_start),
            lal_lsns=lal_lsns,
            lsn_allocation_floor=Lsn(self.floor),
            members_by_pg={PgIndex(pg): names for pg, names in self.members_by_pg.items()},
        )
        self.records: list[tuple[int, int, bool]] = []
        self.scl = {(pg, node): 0 for pg, names in self.members_by_pg.items() for node in names}
        self.lsn_sent = self.floor
        self.vdl_seen = [lsn_start]
        self.waiters: Waiters[int] = Waiters()
        self.waiting: dict[int, int] = {}  # token -> lsn
        self.released: dict[int, int] = {}

    # --- rules ----------------------------------------------------------------------

    @rule(
        size=st.integers(1, GROUP_RECORDS_MAX),
        pg_choices=st.lists(
            st.integers(0, PGS_MAX - 1), min_size=GROUP_RECORDS_MAX, max_size=GROUP_RECORDS_MAX
        ),
        # LSNs are dense in practice; gaps must not matter to the tracker.
        steps=st.lists(
            st.sampled_from([1, 1, 1, 2]), min_size=GROUP_RECORDS_MAX, max_size=GROUP_RECORDS_MAX
        ),
    )
    def send_group(self, size: int, pg_choices: list[int], steps: list[int]) -> None:
        # The allocation limit, computed independently.
        if size > self.lal_lsns:
            with pytest.raises(InvalidRequest):
                self.tracker.may_allocate(size)
            return
        allowed = self.lsn_sent + size - max(self.vdl_seen[-1], self.floor) <= self.lal_lsns
        assert self.tracker.may_allocate(size) == allowed
        if not allowed:
            return
        for index in range(size):
            lsn = self.lsn_sent + steps[index]
            pg = pg_choices[index] % len(self.members_by_pg)
            is_cpl = index == size - 1
            self.tracker.record_sent(Lsn(lsn), PgIndex(pg), is_cpl)
            self.records.append((lsn, pg, is_cpl))
            self.lsn_sent = lsn

    @rule(
        pg_choice=st.integers(0, PGS_MAX - 1),
        node_choice=st.integers(0, 5),
        scl_choice=st.integers(0, 2**16),
        real_scl=st.booleans(),
    )
    def ack(self, pg_choice: int, node_choice: int, scl_choice: int, real_scl: bool) -> None:
        pg = pg_choice % len(self.members_by_pg)
        node = self.members_by_pg[pg][node_choice]
        if real_scl:
            # One of the PG's records (possibly a stale one that arrives late), as a
            # segment reports it.
            scls = [0, *(lsn for lsn, record_pg, _ in self.records if record_pg == pg)]
            scl = scls[-1 - scl_choice % len(scls)]
        else:
            scl = scl_choice % (self.lsn_sent + 1)
        self._ack(pg, node, scl)

    @precondition(lambda self: self.records)
    @rule(down_choices=st.lists(st.integers(0, 5), min_size=2 * PGS_MAX, max_size=2 * PGS_MAX))
    def quorum_acks_everything(self, down_choices: list[int]) -> None:
        """A write quorum of every PG (2 members down) acks all that was sent."""
        for pg, names in self.members_by_pg.items():
            down = {down_choices[2 * pg], down_choices[2 * pg + 1]}
            up = [node for index, node in enumerate(names) if index not in down]
            for node in up[:WRITE_QUORUM]:
                self._ack(pg, node, self.lsn_sent)
        assert self.tracker.vdl == max(lsn for lsn, _, cpl in self.records if cpl)
        assert self.tracker.vcl == self.records[-1][0]
        assert self.tracker.outstanding() == 0

    @rule(pg_choice=st.integers(0, PGS_MAX - 1), stranger_choice=st.integers(0, 2))
    def ack_refused(self, pg_choice: int, stranger_choice: int) -> None:
        pg = pg_choice % len(self.members_by_pg)
        strangers = [node for node in NODES if node not in self.members_by_pg[pg]]
        before = self.tracker.vdl, self.tracker.vcl, self.tracker.pgcl(PgIndex(pg))
        with pytest.raises(AckRefused):
            self.tracker.ack(PgIndex(pg), strangers[stranger_choice], Lsn(self.lsn_sent))
        member = self.members_by_pg[pg][0]
        with pytest.raises(AckRefused):
            self.tracker.ack(PgIndex(pg), member, Lsn(self.lsn_sent + 1))
        with pytest.raises(AckRefused):
            self.tracker.ack(PgIndex(len(self.members_by_pg)), member, Lsn(0))
        assert (self.tracker.vdl, self.tracker.vcl, self.tracker.pgcl(PgIndex(pg))) == before

    @rule(offset=st.integers(-5, 8))
    def wait(self, offset: int) -> None:
        token = len(self.waiting) + len(self.released)
        lsn = max(0, self.lsn_sent + offset)
        # The I/O layer answers at once what VDL already covers.
        if lsn <= self.tracker.vdl:
            self.released[token] = lsn
            return
        self.waiters.add(Lsn(lsn), token)
        self.waiting[token] = lsn

    def _ack(self, pg: int, node: str, scl: int) -> None:
        vdl_before = self.tracker.vdl
        vdl = self.tracker.ack(PgIndex(pg), node, Lsn(scl))
        self.scl[(pg, node)] = max(self.scl[(pg, node)], scl)
        assert vdl == self.tracker.vdl
        released = self.waiters.release(vdl)
        if vdl == vdl_before:
            assert released == []
        lsns = [self.waiting.pop(token) for token in released]
        assert lsns == sorted(lsns)
        for token, lsn in zip(released, lsns, strict=True):
            self.released[token] = lsn
        self.vdl_seen.append(vdl)

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def matches_the_reference(self) -> None:
        vcl, vdl = reference(self.records, self.scl, self.members_by_pg, self.lsn_start)
        assert (self.tracker.vcl, self.tracker.vdl) == (vcl, vdl)
        assert self.tracker.outstanding() == sum(lsn > vcl for lsn, _, _ in self.records)
        for pg, names in self.members_by_pg.items():
            scls = sorted((self.scl[(pg, node)] for node in names), reverse=True)
            assert self.tracker.pgcl(PgIndex(pg)) == scls[WRITE_QUORUM - 1]

    @invariant()
    def vdl_is_monotonic_durable_and_on_a_cpl(self) -> None:
        vdl = self.tracker.vdl
        assert self.vdl_seen == sorted(self.vdl_seen)
        assert vdl >= self.vdl_seen[-1]
        assert vdl == self.lsn_start or (vdl, True) in {(lsn, cpl) for lsn, _, cpl in self.records}
        # Never past a PG's write-quorum completeness for any record at or below it.
        for lsn, pg, _ in self.records:
            if lsn <= vdl:
                holders = sum(self.scl[(pg, node)] >= lsn for node in self.members_by_pg[pg])
                assert holders >= WRITE_QUORUM, (lsn, pg)

    @invariant()
    def waiters_are_released_exactly_when_vdl_covers_them(self) -> None:
        vdl = self.tracker.vdl
        assert all(lsn > vdl for lsn in self.waiting.values())
        assert all(lsn <= vdl for lsn in self.released.values())
        assert len(self.waiters) == len(self.waiting)


DurabilityMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
TestDurability = DurabilityMachine.TestCase


# --- examples -----------------------------------------------------------------------


def tracker_for(pg_count: int = 1, **kwargs) -> DurabilityTracker:
    return DurabilityTracker(members_by_pg={PgIndex(pg): SIX for pg in range(pg_count)}, **kwargs)


def test_four_of_six_make_a_record_complete_and_vdl_lands_on_cpls() -> None:
    tracker = tracker_for(2)
    # One group over two PGs: 1 (PG 0), 2 (PG 1), 3 (PG 0, CPL).
    for lsn, pg, cpl in [(1, 0, False), (2, 1, False), (3, 0, True)]:
        tracker.record_sent(Lsn(lsn), PgIndex(pg), cpl)
    for node in "abc":
        assert tracker.ack(PgIndex(0), node, Lsn(3)) == 0
    assert tracker.pgcl(PgIndex(0)) == 0
    assert tracker.ack(PgIndex(0), "d", Lsn(3)) == 0  # PG 0 complete to 3, but PG 1 is not
    assert (tracker.vcl, tracker.oldest_incomplete()) == (1, (2, 1))
    for node in "cdef":
        tracker.ack(PgIndex(1), node, Lsn(2))
    assert (tracker.vcl, tracker.vdl, tracker.outstanding()) == (3, 3, 0)


def test_vdl_stops_below_an_incomplete_group() -> None:
    tracker = tracker_for()
    for lsn, cpl in [(1, True), (2, False), (3, True)]:
        tracker.record_sent(Lsn(lsn), PgIndex(0), cpl)
    for node in "abcd":
        tracker.ack(PgIndex(0), node, Lsn(2))
    # Record 2 is complete, but it is not a CPL: its MTR ends at 3.
    assert (tracker.vcl, tracker.vdl) == (2, 1)
    # A late, lower SCL changes nothing.
    assert tracker.ack(PgIndex(0), "a", Lsn(1)) == 1
    assert tracker.scl_by_node(PgIndex(0))["a"] == 2


def test_reopen_starts_at_vdl_with_nothing_outstanding_and_lal_from_the_floor() -> None:
    tracker = tracker_for(lsn_start=Lsn(100), lsn_allocation_floor=Lsn(150), lal_lsns=10)
    assert (tracker.vdl, tracker.vcl, tracker.outstanding(), tracker.lsn_sent) == (100, 100, 0, 150)
    # Segments report their SCLs from before the restart; nothing moves.
    assert tracker.ack(PgIndex(0), "a", Lsn(90)) == 100
    # The gap of the truncation range does not count against the LAL.
    assert tracker.may_allocate(10)
    with pytest.raises(AssertionError):
        tracker.record_sent(Lsn(150), PgIndex(0), True)
    for lsn in range(151, 161):
        tracker.record_sent(Lsn(lsn), PgIndex(0), lsn % 2 == 0)
    assert not tracker.may_allocate(1)
    for node in "abcd":
        tracker.ack(PgIndex(0), node, Lsn(155))
    assert tracker.vdl == 154
    assert tracker.may_allocate(4) and not tracker.may_allocate(5)
    with pytest.raises(InvalidRequest, match="larger than the LSN allocation limit"):
        tracker.may_allocate(11)


def test_transitional_quorum_needs_both_member_sets() -> None:
    tracker = tracker_for()
    tracker.record_sent(Lsn(1), PgIndex(0), True)
    tracker.record_sent(Lsn(2), PgIndex(0), True)
    for node in "abcdef":
        tracker.ack(PgIndex(0), node, Lsn(1))
    assert tracker.vdl == 1
    # Node f is replaced by g: g hydrates while both sets must hold a write quorum.
    new = ["a", "b", "c", "d", "e", "g"]
    tracker.set_members(PgIndex(0), new, members_old=SIX)
    assert tracker.members_of(PgIndex(0)) == (tuple(new), tuple(SIX))
    assert tracker.scl_by_node(PgIndex(0))["g"] == 0
    for node in "afg":
        tracker.ack(PgIndex(0), node, Lsn(2))
    tracker.ack(PgIndex(0), "b", Lsn(2))
    # a, b, f, g hold 2: that is 3 of the new set (a, b, g) and 3 of the old (a, b, f).
    assert tracker.vdl == 1
    tracker.ack(PgIndex(0), "c", Lsn(2))
    # New set: a, b, c, g (4); old set: a, b, c, f (4).
    assert tracker.vdl == 2
    # Ending the change drops f; its acks are refused from now on.
    tracker.set_members(PgIndex(0), new)
    with pytest.raises(AckRefused):
        tracker.ack(PgIndex(0), "f", Lsn(2))


def test_ending_a_membership_change_can_advance_vdl() -> None:
    tracker = tracker_for()
    new = ["a", "b", "c", "d", "e", "g"]
    tracker.set_members(PgIndex(0), new, members_old=SIX)
    tracker.record_sent(Lsn(1), PgIndex(0), True)
    for node in "abcg":
        tracker.ack(PgIndex(0), node, Lsn(1))
    assert tracker.vdl == 0  # the old set has only a, b, c
    assert tracker.set_members(PgIndex(0), new) == 1


def test_membership_is_checked() -> None:
    with pytest.raises(AssertionError):
        tracker_for().set_members(PgIndex(0), ["a", "b", "c", "d", "e"])
    with pytest.raises(AssertionError):
        tracker_for().set_members(PgIndex(0), ["a", "a", "c", "d", "e", "f"])
    with pytest.raises(AssertionError):
        tracker_for().record_sent(Lsn(1), PgIndex(7), True)


def test_waiters_release_in_lsn_order_and_can_be_taken_all() -> None:
    waiters: Waiters[str] = Waiters()
    for lsn, token in [(5, "x"), (3, "y"), (5, "z"), (9, "w")]:
        waiters.add(Lsn(lsn), token)
    assert waiters.lsn_lowest() == 3
    assert waiters.release(Lsn(2)) == []
    assert waiters.release(Lsn(5)) == ["y", "x", "z"]
    assert len(waiters) == 1
    waiters.add(Lsn(7), "v")
    assert waiters.take_all() == ["v", "w"]
    assert len(waiters) == 0 and waiters.lsn_lowest() is None


def test_allocator_groups_flow_through_the_tracker() -> None:
    nodes = [Member(name, f"127.0.0.1:{7000 + i}", f"az-{i // 2}") for i, name in enumerate(SIX)]
    topology = Topology(VolumeId(1), nodes, pages_per_pg=2)
    allocator = LsnAllocator()
    tracker = DurabilityTracker(
        members_by_pg={PgIndex(pg): topology.placement_names(PgIndex(pg)) for pg in range(3)}
    )
    waiters: Waiters[int] = Waiters()
    for commit, pages in enumerate([[0, 3], [5], [1, 2, 4]]):
        group = allocator.assign(pages, topology, page_count=6 if commit == 0 else None)
        tracker.group_sent(group)
        waiters.add(group[-1].lsn, commit)
    assert tracker.lsn_sent == allocator.lsn_allocated == 7
    # Every segment acks its PG's last record.
    released = []
    for pg in range(3):
        for node in topology.placement_names(PgIndex(pg)):
            released += waiters.release(
                tracker.ack(PgIndex(pg), node, allocator.lsn_last_of(PgIndex(pg)))
            )
    assert released == [0, 1, 2] and tracker.vdl == 7
