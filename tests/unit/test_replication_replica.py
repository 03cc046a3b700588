"""ReplicaVolume's apply rules without storage: whole MTRs, cached pages only, read
point at MTR boundaries, and no stale version cached across a dropped record."""

from __future__ import annotations

import asyncio

import pytest

from borealis import redo
from borealis.ids import LSN_NONE, Epoch, Lsn, PgIndex, VolumeId
from borealis.redo import PAGE_SIZE_BYTES, Kind, RedoRecord
from compute_node.replication.core import Group
from compute_node.replication.replica import ReplicaVolume, StartPoint
from compute_node.volume.config import VolumeConfig
from storage_node.segment import Member

pytestmark = pytest.mark.unit


def image(byte: int) -> bytes:
    return bytes([byte]) * PAGE_SIZE_BYTES


def record(lsn: int, page: int, kind: Kind, payload: bytes, cpl: bool = False) -> bytes:
    return redo.encode(
        RedoRecord(
            lsn=Lsn(lsn),
            prev_lsn_volume=Lsn(lsn - 1),
            prev_lsn_pg=LSN_NONE,
            prev_lsn_page=LSN_NONE,
            page=page,
            kind=kind,
            payload=payload,
            cpl=cpl,
            commit_time_us=1 if cpl else 0,
        )
    )


async def make_replica() -> tuple[ReplicaVolume, list[tuple[Lsn, int]]]:
    nodes = [Member(f"s{i}", f"127.0.0.1:{i}", "az") for i in range(6)]
    replica = ReplicaVolume(VolumeId(1), nodes, VolumeConfig(cache_capacity_bytes=2**20))
    replica.set_volume(Epoch(1), pages_per_pg=100)
    replica.set_pg(PgIndex(0), Epoch(1), list(nodes))
    advanced: list[tuple[Lsn, int]] = []
    replica.attach(lambda lsn, count: advanced.append((lsn, count)), lambda: Lsn(0))
    replica.begin(StartPoint(Lsn(10), 3, {PgIndex(0): Lsn(10)}))
    return replica, advanced


def test_apply_changes_cached_pages_drops_others_and_moves_at_cpls() -> None:
    async def scenario() -> None:
        replica, advanced = await make_replica()
        assert not replica.start_if_durable(Lsn(9))  # the VDL must reach the start
        assert replica.start_if_durable(Lsn(10))
        assert advanced[-1] == (10, 3)
        # The starting point's reads are cacheable: page 1 read from "storage".
        replica.cache.put(1, image(1), Lsn(8))
        delta = redo.delta_payload([(0, b"\x09\x09")])
        replica.apply(
            Group(
                Lsn(13),
                5,
                (
                    record(11, 1, Kind.DELTA, delta),
                    record(12, 2, Kind.DELTA, delta),  # page 2 is not cached: dropped
                    record(13, 4, Kind.SIZE, b"", cpl=True),
                ),
            )
        )
        assert advanced[-1] == (13, 4)
        assert replica.lsn_applied == 13 and replica.page_count() == 4
        cached = replica.cache.peek(1)
        assert cached is not None
        assert cached.page_lsn == 11 and cached.image[:3] == b"\x09\x09\x01"
        assert replica.cache.peek(2) is None
        assert replica.records_applied == 1 and replica.records_dropped == 1
        # A read at the old read point does not get the newer cached version.
        assert replica.cache.get(1, Lsn(10)) is None
        assert replica.cache.get(1, Lsn(13)) is not None
        # A new page's IMAGE record is cached even though the page was not.
        replica.apply(Group(Lsn(14), 6, (record(14, 3, Kind.IMAGE, image(7), cpl=True),)))
        assert replica.cache.peek(3) == (image(7), 14)
        # The PG history follows the stream, for storage reads at read points.
        assert replica.lsn_readable(PgIndex(0), Lsn(12)) == 12
        assert replica.lsn_readable(PgIndex(0), Lsn(10)) == 10
        # A repeated group (a resubscription overlapping) is skipped.
        replica.apply(Group(Lsn(14), 6, (record(14, 3, Kind.IMAGE, image(8), cpl=True),)))
        assert replica.cache.peek(3) == (image(7), 14)
        await replica.close()

    asyncio.run(scenario())


def test_resubscription_drops_the_cache_and_waits_for_the_new_start() -> None:
    async def scenario() -> None:
        replica, advanced = await make_replica()
        assert replica.start_if_durable(Lsn(10))
        replica.cache.put(1, image(1), Lsn(8))
        replica.begin(StartPoint(Lsn(20), 5, {PgIndex(0): Lsn(19)}))
        # Records between 10 and 20 were never seen: nothing cached survives.
        assert replica.cache.peek(1) is None
        # Until the VDL covers the new start, the old read point stays.
        assert replica.start_if_durable(Lsn(15))
        assert replica.lsn_applied == 10
        assert replica.start_if_durable(Lsn(20))
        assert replica.lsn_applied == 20 and advanced[-1] == (20, 5)
        assert replica.resyncs == 1
        assert replica.lsn_readable(PgIndex(0), Lsn(20)) == 19
        await replica.close()

    asyncio.run(scenario())
