"""Recovery on six real storage nodes (DESIGN.md section 8; issue 6 "Recovery and fencing").

The volume runs in process, as in tests/integration/test_volume.py (whose Writer and
helpers these reuse); storage nodes are real processes that the tests stop, start
and fault with failpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from borealis import redo
from borealis.errors import Unavailable
from borealis.ids import Epochs, Lsn, PgIndex, SegmentId
from borealis.wait import wait_until
from compute_node.volume.recovery import RecoveredVolume
from deploy.local import LocalCluster
from storage_node.client import StorageClient
from storage_node.segment import SegmentMeta
from tests.integration.test_volume import (
    VOLUME,
    LoopThread,
    Writer,
    create_schema,
    digest,
    expected_digest,
    insert_rows,
    integrity,
    loop_thread,
    row,
    set_failpoint,
)
from tests.support.storage import node_metric

__all__ = ["loop_thread"]

pytestmark = pytest.mark.integration

# Down nodes are given up on quickly at open.
FAST_OPEN = {"node_wait_ms": 300.0, "control_rpc_timeout_ms": 2000.0}


def open_writer(loop_thread: LoopThread, cluster: LocalCluster) -> Writer:
    return Writer.open(loop_thread, cluster, **FAST_OPEN)


def segments_on(loop_thread: LoopThread, cluster: LocalCluster, name: str) -> list[SegmentMeta]:
    async def listing() -> list[SegmentMeta]:
        async with StorageClient(cluster.node(name).address, 5.0) as client:
            return [m for m in await client.list_segments() if m.volume_id == VOLUME]

    return loop_thread.run(listing())


def all_at_epoch(
    loop_thread: LoopThread, cluster: LocalCluster, names: list[str], epoch: int
) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            meta.volume_epoch == epoch
            for name in names
            for meta in segments_on(loop_thread, cluster, name)
        )

    return check


def records_in(
    loop_thread: LoopThread,
    cluster: LocalCluster,
    name: str,
    metas: list[SegmentMeta],
    after: Lsn,
    up_to: Lsn,
) -> list[int]:
    """LSNs the node's segments hold in (after, up_to], read at each segment's epochs."""

    async def read() -> list[int]:
        lsns: list[int] = []
        async with StorageClient(cluster.node(name).address, 5.0) as client:
            for meta in metas:
                epochs = Epochs(meta.volume_epoch, meta.membership_epoch)  # type: ignore[arg-type]
                records, _, _ = await client.read_records(
                    SegmentId(VOLUME, PgIndex(meta.pg)), epochs, after, up_to
                )
                lsns += [redo.HEADER.unpack_from(data)[1] for data in records]
        return lsns

    return loop_thread.run(read())


def names(cluster: LocalCluster, indexes: tuple[int, ...]) -> list[str]:
    return [cluster.storage_nodes[index].name for index in indexes]


def recovered_of(writer: Writer) -> RecoveredVolume:
    recovered = writer.volume.recovered
    assert recovered is not None
    return recovered


def test_reopen_with_two_storage_nodes_down_then_writes_continue_and_they_catch_up(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 300)
    finally:
        writer.close()
    down = names(storage_cluster, (0, 2))
    for name in down:
        storage_cluster.node(name).stop(immediate=True)
    writer = open_writer(loop_thread, storage_cluster)
    try:
        recovered = recovered_of(writer)
        assert recovered.volume_epoch == 2
        for nodes in recovered.caught_up_by_pg.values():
            assert sorted(nodes) == sorted(set(names(storage_cluster, tuple(range(6)))) - set(down))
        assert digest(writer) == expected_digest(300)
        # Writes go on with 4 of 6.
        insert_rows(writer, 300, 300)
        for name in down:
            storage_cluster.node(name).start()
        # The shipper brings the returning segments to the new epoch ...
        wait_until(
            all_at_epoch(loop_thread, storage_cluster, down, 2), 20, what="caught up to epoch 2"
        )
        # ... and they count again: with two other nodes down, writes still commit.
        for name in names(storage_cluster, (1, 3)):
            storage_cluster.node(name).stop(immediate=True)
        insert_rows(writer, 600, 200)
        assert digest(writer) == expected_digest(800)
    finally:
        writer.close()
    for name in names(storage_cluster, (1, 3)):
        storage_cluster.node(name).start()
    writer = open_writer(loop_thread, storage_cluster)
    try:
        assert recovered_of(writer).excluded == []
        assert digest(writer) == expected_digest(800)
        assert integrity(writer) == "ok"
    finally:
        writer.close()


def test_reopen_with_an_az_and_one_more_node_down_reads_and_writes_wait_for_a_fourth(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 300)
    finally:
        writer.close()
    # storage_layout puts nodes 0 and 1 in one AZ.
    down = names(storage_cluster, (0, 1, 2))
    azs = {storage_cluster.node(name).az for name in down}
    assert len(azs) == 2, azs
    for name in down:
        storage_cluster.node(name).stop(immediate=True)
    writer = open_writer(loop_thread, storage_cluster)
    try:
        assert recovered_of(writer).volume_epoch == 2
        # Reads at the recovered VDL work from a read quorum.
        assert digest(writer) == expected_digest(300)
        assert integrity(writer) == "ok"
        # A write is not durable with 3 of 6 ...
        writer.sqlite.execute("INSERT INTO item VALUES(?, ?, ?)", row(300))
        lsn = writer.connection.file.lsn_commit_last
        with pytest.raises(Unavailable, match="no write quorum"):
            writer.volume.wait_durable_blocking(lsn, timeout_s=1.0)
        # ... until a fourth node returns (brought to the new epoch by the shipper).
        storage_cluster.node(down[0]).start()
        assert writer.volume.wait_durable_blocking(lsn, timeout_s=30.0) >= lsn
        insert_rows(writer, 301, 99)
        assert digest(writer) == expected_digest(400)
    finally:
        writer.close()
    for name in down[1:]:
        storage_cluster.node(name).start()
    writer = open_writer(loop_thread, storage_cluster)
    try:
        assert digest(writer) == expected_digest(400)
        assert integrity(writer) == "ok"
    finally:
        writer.close()


def test_a_segment_down_during_recovery_does_not_resurrect_records_above_the_vdl(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    refusing = names(storage_cluster, (0, 1, 2))
    holder = storage_cluster.storage_nodes[3].name
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 300)
        # Three nodes refuse appends: the next commit reaches only the other three,
        # so it is never durable, and the old writer goes away with it.
        loop_thread.run(
            set_failpoint(storage_cluster, refusing, "storage.append.before_write", "error")
        )
        writer.sqlite.execute("INSERT INTO item VALUES(?, ?, ?)", row(300))
        cpl = writer.connection.file.lsn_commit_last
        wait_until(
            lambda: any(
                meta.highest_lsn >= cpl
                for meta in segments_on(loop_thread, storage_cluster, holder)
            ),
            10,
            what="the lost commit on the holder",
        )
        assert writer.volume.vdl < cpl
    finally:
        writer.close()
    storage_cluster.node(holder).stop(immediate=True)
    # The failpoint stays until recovery has fenced: until then gossip could still
    # copy the lost commit to the refusing nodes and make it durable after all.
    writer = open_writer(loop_thread, storage_cluster)
    try:
        loop_thread.run(
            set_failpoint(storage_cluster, refusing, "storage.append.before_write", "off")
        )
        recovered = recovered_of(writer)
        # Held by 2 of the 5 segments read: not on a write quorum, truncated.
        assert recovered.vdl < cpl <= recovered.truncate_up_to
        assert digest(writer) == expected_digest(300)
        storage_cluster.node(holder).start()
        # Row 300 again, new contents' LSNs: the old record must not come back.
        insert_rows(writer, 300, 100)
        wait_until(
            all_at_epoch(loop_thread, storage_cluster, [holder], 2), 20, what="holder caught up"
        )
        metas = segments_on(loop_thread, storage_cluster, holder)
        assert all(
            (meta.truncated_above_lsn, meta.truncated_up_to_lsn)
            == (recovered.vdl, recovered.truncate_up_to)
            for meta in metas
        )
        assert (
            records_in(
                loop_thread,
                storage_cluster,
                holder,
                metas,
                recovered.vdl,
                recovered.truncate_up_to,
            )
            == []
        )
        # The holder serves again: with two other nodes down, writes need it.
        for name in refusing[:2]:
            storage_cluster.node(name).stop(immediate=True)
        insert_rows(writer, 400, 100)
        assert digest(writer) == expected_digest(500)
    finally:
        writer.close()
    for name in refusing[:2]:
        storage_cluster.node(name).start()
    writer = open_writer(loop_thread, storage_cluster)
    try:
        assert digest(writer) == expected_digest(500)
        assert integrity(writer) == "ok"
    finally:
        writer.close()


def test_recovery_repairs_a_pg_short_of_a_write_quorum_up_to_the_vdl(
    cluster_builder: Callable[..., LocalCluster], loop_thread: LoopThread
) -> None:
    # No gossip: only recovery's repair can fill the segments that missed records.
    cluster = cluster_builder(gossip_interval_ms=3_600_000).start()
    writer = Writer.create(loop_thread, cluster)
    lagging = names(cluster, (4, 5))
    try:
        create_schema(writer)
        insert_rows(writer, 0, 100)
        for name in lagging:
            cluster.node(name).stop(immediate=True)
        # Durable on nodes 0-3 only.
        insert_rows(writer, 100, 300)
    finally:
        writer.close()
    gone = cluster.storage_nodes[0].name
    cluster.node(gone).stop(immediate=True)
    for name in lagging:
        cluster.node(name).start()
    writer = open_writer(loop_thread, cluster)
    try:
        recovered = recovered_of(writer)
        # Only nodes 1-3 were complete in the PGs written while 4 and 5 were down:
        # repair brought one more of them up to each PG's last record.
        assert recovered.repaired_by_pg, recovered
        assert recovered.records_repaired > 0
        for pg, repaired in recovered.repaired_by_pg.items():
            assert len(repaired) == 1 and repaired[0] in lagging
            (meta,) = [m for m in segments_on(loop_thread, cluster, repaired[0]) if m.pg == pg]
            assert meta.scl >= recovered.last_lsn_by_pg[pg]
        assert digest(writer) == expected_digest(400)
        # New commits need 4 complete segments per PG: without the repair, nodes
        # 4 and 5 would keep a hole (no gossip) and these would never be durable.
        insert_rows(writer, 400, 100)
        assert digest(writer) == expected_digest(500)
        assert integrity(writer) == "ok"
    finally:
        writer.close()


def test_recovery_fails_without_a_read_quorum(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
    finally:
        writer.close()
    for name in names(storage_cluster, (0, 1, 2, 3)):
        storage_cluster.node(name).stop(immediate=True)
    with pytest.raises(Unavailable, match="fewer than 3 usable segments"):
        open_writer(loop_thread, storage_cluster)


def test_reopen_after_garbage_collection_below_a_cold_pgs_completeness(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    """A PG written only when it was created keeps a low PGCL while storage
    garbage-collects a busy PG's old records below its PGMRPL: recovery must not walk
    the chain through the collected records (it would stop there and truncate
    acknowledged commits)."""
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 1500)  # fills several PGs once: the cold ones
        assert writer.volume.pg_count >= 3
        writer.sqlite.execute("CREATE TABLE hot(id INTEGER PRIMARY KEY, n INTEGER)")
        writer.sqlite.execute("INSERT INTO hot VALUES(1, 0)")
        for _ in range(200):
            writer.sqlite.execute("UPDATE hot SET n = n + 1 WHERE id = 1")
        vdl = writer.volume.wait_durable_blocking(writer.connection.file.lsn_commit_last)
        # PGMRPL at the VDL (each PG is told its newest record at or below it, as
        # the publisher does), then GC on every node: the hot PG's old versions and
        # their records go.
        shipper = writer.volume.shipper
        pgs = {
            PgIndex(pg): shipper.lsn_readable(PgIndex(pg), vdl)
            for pg in range(writer.volume.pg_count)
        }
        assert loop_thread.run(writer.volume.send_pgmrpl(pgs, 5.0)) > 0

        async def collect() -> float:
            """A GC pass now on every node; the records GC deleted so far (this pass
            or a background one)."""
            deleted = 0.0
            for node in storage_cluster.storage_nodes:
                async with StorageClient(node.address, 10.0) as client:
                    await client.run_task("gc")
                    deleted += await node_metric(client, "gc_records_deleted_total")
            return deleted

        wait_until(lambda: loop_thread.run(collect()) > 0, 20, what="GC deleted records")
    finally:
        writer.close()
    writer = open_writer(loop_thread, storage_cluster)
    try:
        assert writer.sqlite.execute("SELECT n FROM hot").fetchall() == [(200,)]
        assert digest(writer) == expected_digest(1500)
        assert integrity(writer) == "ok"
    finally:
        writer.close()
