"""compute_node/volume/lsn.py: LSNs and backlinks, against the full history as reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borealis.ids import Lsn, PgIndex, VolumeId
from compute_node.volume.lsn import SIZE_PG, Assignment, LsnAllocator
from compute_node.volume.topology import Topology
from storage_node.chain import SegmentChain
from storage_node.segment import Member

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=150, deadline=None)
PAGES_PER_PG = 4
TOPOLOGY = Topology(
    VolumeId(1),
    [Member(f"s{i}", f"127.0.0.1:{9000 + i}", f"az-{i // 2}") for i in range(6)],
    pages_per_pg=PAGES_PER_PG,
)

# A commit group: the pages it writes, and the new page count if the size changed.
groups = st.tuples(
    st.lists(st.integers(0, 5 * PAGES_PER_PG - 1), max_size=6),
    st.none() | st.integers(0, 100),
).filter(lambda group: group[0] or group[1] is not None)


def expected_backlinks(history: list[Assignment], pg: int, page: int, size: bool) -> tuple:
    """(prev_lsn_volume, prev_lsn_pg, prev_lsn_page) computed from every earlier record."""
    prev_volume = history[-1].lsn if history else 0
    prev_pg = max((a.lsn for a in history if a.pg == pg), default=0)
    prev_page = max(
        (a.lsn for a in history if a.size == size and (size or a.page == page)), default=0
    )
    return prev_volume, prev_pg, prev_page


def check_group(
    group: list[Assignment],
    pages: list[int],
    page_count: int | None,
    first: int,
    history: list[Assignment],
) -> None:
    expected_targets = [(page, False) for page in pages]
    if page_count is not None:
        expected_targets.append((page_count, True))
    assert [(a.page, a.size) for a in group] == expected_targets
    assert [a.lsn for a in group] == list(range(first, first + len(group)))
    assert [a.cpl for a in group] == [False] * (len(group) - 1) + [True]
    for assignment in group:
        pg = SIZE_PG if assignment.size else TOPOLOGY.pg_of(assignment.page)
        assert assignment.pg == pg
        assert (
            assignment.prev_lsn_volume,
            assignment.prev_lsn_pg,
            assignment.prev_lsn_page,
        ) == expected_backlinks(history, pg, assignment.page, assignment.size)
        assert (
            max(assignment.prev_lsn_volume, assignment.prev_lsn_pg, assignment.prev_lsn_page)
            < assignment.lsn
        )
        history.append(assignment)


@SETTINGS
@given(st.lists(groups, max_size=20))
def test_backlinks_match_the_history(history_groups: list[tuple[list[int], int | None]]) -> None:
    allocator = LsnAllocator()
    history: list[Assignment] = []
    for pages, page_count in history_groups:
        first = allocator.lsn_allocated + 1
        group = allocator.assign(pages, TOPOLOGY, page_count)
        check_group(group, pages, page_count, first, history)
        assert allocator.lsn_allocated == group[-1].lsn
    # Each PG's records form one chain from LSN_NONE: a segment that receives them in any
    # order reaches the PG's last LSN as its SCL.
    for pg in {a.pg for a in history}:
        chain = SegmentChain()
        for assignment in reversed([a for a in history if a.pg == pg]):
            chain.add(assignment.lsn, assignment.prev_lsn_pg)
        assert chain.scl == allocator.lsn_last_of(pg)
        assert chain.pending() == 0


@SETTINGS
@given(
    st.lists(groups, max_size=10),
    st.lists(groups, min_size=1, max_size=10),
    st.integers(0, 50),
)
def test_restart_keeps_the_pg_chains_exact(
    before: list[tuple[list[int], int | None]],
    after: list[tuple[list[int], int | None]],
    truncation_lsns: int,
) -> None:
    allocator = LsnAllocator()
    history: list[Assignment] = []
    for pages, page_count in before:
        history.extend(allocator.assign(pages, TOPOLOGY, page_count))
    # Recovery: the segments report each PG's last record; new LSNs start above the
    # truncation range.
    last_by_pg = {pg: max(a.lsn for a in history if a.pg == pg) for pg in {a.pg for a in history}}
    start_after = Lsn(allocator.lsn_allocated + truncation_lsns)
    reopened = LsnAllocator(start_after=start_after, last_lsn_by_pg=last_by_pg)
    assert reopened.lsn_allocated == start_after
    first = True
    for pages, page_count in after:
        group = reopened.assign(pages, TOPOLOGY, page_count)
        if first:
            assert group[0].lsn == start_after + 1
            assert group[0].prev_lsn_volume == (history[-1].lsn if history else 0)
            first = False
        for assignment in group:
            # The PG and volume chains continue across the restart; the page and size
            # backlinks are unknown (0) until the page or size is written again.
            earlier = [a for a in history if a.pg == assignment.pg]
            assert assignment.prev_lsn_pg == (earlier[-1].lsn if earlier else 0)
            after_restart = [
                a
                for a in history
                if a.lsn > start_after
                and a.size == assignment.size
                and (assignment.size or a.page == assignment.page)
            ]
            assert assignment.prev_lsn_page == (after_restart[-1].lsn if after_restart else 0)
            history.append(assignment)
    for pg in {a.pg for a in history}:
        chain = SegmentChain()
        for assignment in [a for a in history if a.pg == pg]:
            chain.add(assignment.lsn, assignment.prev_lsn_pg)
        assert chain.scl == reopened.lsn_last_of(pg)


@SETTINGS
@given(
    st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=5), max_size=30), st.integers(1, 6)
)
def test_page_backlinks_are_exact_or_unknown_when_bounded(
    history_groups: list[list[int]], page_backlinks_max: int
) -> None:
    allocator = LsnAllocator(page_backlinks_max=page_backlinks_max)
    last_by_page: dict[int, int] = {}
    for pages in history_groups:
        for assignment in allocator.assign(pages, TOPOLOGY):
            assert assignment.prev_lsn_page in (0, last_by_page.get(assignment.page, 0))
            last_by_page[assignment.page] = assignment.lsn
        assert len(allocator._last_lsn_by_page) <= page_backlinks_max


def test_a_recently_written_page_keeps_its_backlink_under_the_bound() -> None:
    allocator = LsnAllocator(page_backlinks_max=2)
    allocator.assign([0], TOPOLOGY)  # lsn 1
    allocator.assign([1], TOPOLOGY)  # lsn 2
    allocator.assign([0], TOPOLOGY)  # lsn 3: page 0 is now the most recent
    allocator.assign([2], TOPOLOGY)  # lsn 4: page 1 is forgotten
    assert allocator.assign([0], TOPOLOGY)[0].prev_lsn_page == 3
    assert allocator.assign([1], TOPOLOGY)[0].prev_lsn_page == 0


def test_size_records_go_to_pg_0_and_chain_among_themselves() -> None:
    allocator = LsnAllocator()
    first = allocator.assign([9], TOPOLOGY, page_count=10)
    assert [(a.lsn, a.pg, a.page, a.size, a.cpl) for a in first] == [
        (1, 2, 9, False, False),
        (2, 0, 10, True, True),
    ]
    assert first[1].prev_lsn_pg == 0 and first[1].prev_lsn_page == 0
    second = allocator.assign([1], TOPOLOGY, page_count=12)
    assert (second[0].prev_lsn_pg, second[1].prev_lsn_pg, second[1].prev_lsn_page) == (2, 3, 2)
    only_size = allocator.assign([], TOPOLOGY, page_count=3)
    assert [(a.lsn, a.pg, a.cpl, a.prev_lsn_pg, a.prev_lsn_page) for a in only_size] == [
        (5, 0, True, 4, 4)
    ]
    assert allocator.lsn_last_by_pg() == {PgIndex(0): 5, PgIndex(2): 1}


def test_programming_errors_are_asserted() -> None:
    allocator = LsnAllocator()
    with pytest.raises(AssertionError):
        allocator.assign([], TOPOLOGY)
    with pytest.raises(AssertionError):
        allocator.assign([-1], TOPOLOGY)
    # A restart must not start inside the known history.
    with pytest.raises(AssertionError):
        LsnAllocator(start_after=Lsn(5), last_lsn_by_pg={PgIndex(0): Lsn(6)})
