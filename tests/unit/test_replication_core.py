"""The sans-IO parts of replication: PG LSN history, MTR buffering and apply order,
subscriber queues and the resync decision, PGMRPL derivation."""

from __future__ import annotations

import pytest

from borealis.ids import LSN_NONE, Lsn, PgIndex
from compute_node.replication.core import (
    Event,
    Group,
    MtrBuffer,
    PgLsnHistory,
    ReadPoints,
    SubscriberQueue,
    derive_pgmrpl,
    pgmrpl_by_pg,
)

pytestmark = pytest.mark.unit

PG0, PG1 = PgIndex(0), PgIndex(1)


def group(cpl: int, size_bytes: int = 10, commit_time_us: int = 0) -> Group:
    return Group(Lsn(cpl), commit_time_us, (b"x" * size_bytes,))


def test_history_maps_a_read_point_to_the_pgs_newest_record_at_or_below_it() -> None:
    history = PgLsnHistory({PG0: Lsn(5)})
    for lsn in (7, 9):
        history.add(PG1, Lsn(lsn))
    history.add(PG0, Lsn(12))
    assert history.lsn_readable(PG0, Lsn(11)) == 5
    assert history.lsn_readable(PG0, Lsn(12)) == 12
    assert history.lsn_readable(PG1, Lsn(8)) == 7
    assert history.lsn_readable(PG1, Lsn(6)) == LSN_NONE
    assert history.lsn_readable(PgIndex(7), Lsn(100)) == LSN_NONE
    # A starting point that repeats known records changes nothing.
    history.start({PG0: Lsn(12), PG1: Lsn(9)})
    assert len(history) == 4


def test_history_prune_keeps_what_reads_at_or_above_the_oldest_point_need() -> None:
    history = PgLsnHistory()
    for lsn in (1, 3, 5, 7):
        history.add(PG0, Lsn(lsn))
    history.prune(Lsn(6))
    assert history.lsn_readable(PG0, Lsn(6)) == 5
    assert history.lsn_readable(PG0, Lsn(8)) == 7
    assert len(history) == 2


def test_buffer_hands_out_whole_groups_in_order_only_up_to_the_vdl() -> None:
    buffer = MtrBuffer(bytes_max=1000, lsn_applied=Lsn(10))
    for cpl in (12, 15, 20):
        assert buffer.add(group(cpl, commit_time_us=cpl))
    assert list(buffer.ready()) == []
    buffer.advance_vdl(Lsn(14))  # between CPLs: nothing partial is handed out
    assert list(buffer.ready()) == [group(12, commit_time_us=12)]
    buffer.advance_vdl(Lsn(20))
    assert [each.cpl for each in buffer.ready()] == [15, 20]
    assert len(buffer) == 0 and buffer.size_bytes == 0
    buffer.advance_vdl(Lsn(3))  # never moves back
    assert buffer.vdl == 20


def test_buffer_refuses_a_group_beyond_its_bound() -> None:
    buffer = MtrBuffer(bytes_max=25)
    assert buffer.add(group(1, 10))
    assert buffer.add(group(2, 10))
    assert not buffer.add(group(3, 10))
    assert buffer.oldest_commit_time_us() == 0
    # One group larger than the bound alone is still taken (it must be applied).
    empty = MtrBuffer(bytes_max=5)
    assert empty.add(group(1, 10))


def test_subscriber_queue_coalesces_vdl_advances_and_batches() -> None:
    queue = SubscriberQueue(bytes_max=100, events_max=10, event_bytes_max=50)
    queue.push(Event("group", "g1", 20))
    queue.push(Event("vdl", 1, 1))
    queue.push(Event("vdl", 2, 1))
    queue.push(Event("group", "g2", 20))
    assert len(queue) == 3
    taken = queue.take(events_max=10, bytes_max=25)
    assert [event.value for event in taken] == ["g1", 2]
    assert [event.value for event in queue.take(10, 25)] == ["g2"]
    assert queue.size_bytes == 0 and not queue.overflowed


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([Event("group", "big", 60)], "one event larger than a message"),
        ([Event("group", str(i), 30) for i in range(4)], "bytes"),
        ([Event("group", str(i), 1) for i in range(11)], "events"),
    ],
)
def test_subscriber_queue_overflows_instead_of_slowing_the_writer(
    events: list[Event], reason: str
) -> None:
    queue = SubscriberQueue(bytes_max=100, events_max=10, event_bytes_max=50)
    for event in events:
        queue.push(event)
    assert queue.overflowed, reason
    assert len(queue) == 0 and queue.size_bytes == 0
    queue.push(Event("vdl", 9, 1))
    assert len(queue) == 0  # nothing more is queued for a subscriber told to resync


def test_pgmrpl_is_the_lowest_read_point_and_never_above_the_vdl() -> None:
    points = ReadPoints()
    assert derive_pgmrpl(Lsn(50), points.values(), vdl=Lsn(40)) == 40
    points.subscribed(1, Lsn(30))  # counts at its starting point until it reports
    assert derive_pgmrpl(Lsn(50), points.values(), vdl=Lsn(60)) == 30
    assert points.report(1, Lsn(45))
    assert derive_pgmrpl(Lsn(50), points.values(), vdl=Lsn(60)) == 45
    assert derive_pgmrpl(Lsn(20), points.values(), vdl=Lsn(60)) == 20
    assert not points.report(2, Lsn(1))
    points.gone(1)
    assert derive_pgmrpl(Lsn(50), points.values(), vdl=Lsn(60)) == 50


def test_pgmrpl_by_pg_is_each_pgs_newest_record_at_or_below_it() -> None:
    history = PgLsnHistory({PG0: Lsn(3), PG1: Lsn(8)})
    history.add(PG0, Lsn(12))
    assert pgmrpl_by_pg(Lsn(10), history, [PG0, PG1, PgIndex(2)]) == {
        PG0: 3,
        PG1: 8,
        PgIndex(2): LSN_NONE,
    }
