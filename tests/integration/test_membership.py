"""Storage node replacement on the writer (compute_node/volume/membership.py), with
a real engine over seven real storage nodes: the volume is created on s1..s6 and
node s5 is replaced by s7 (both in az-c) while rows are written.

The volume runs in process as in test_volume.py; storage nodes are real processes.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from borealis.errors import DeadlineExceeded
from borealis.ids import PgIndex
from compute_node.volume.volume import Volume
from deploy.local import LocalCluster
from storage_node.client import StorageClient
from storage_node.segment import Member, SegmentMeta
from tests.integration.test_volume import (
    CONFIG,
    VOLUME,
    LoopThread,
    Writer,
    create_schema,
    digest,
    expected_digest,
    insert_rows,
    integrity,
    loop_thread,
    set_failpoint,
)
from tests.support.storage import members

__all__ = ["loop_thread"]

pytestmark = pytest.mark.integration

OLD, NEW = "s5", "s7"
HYDRATION_FINISH = "storage.hydration.before_finish"
FAST = {"node_wait_ms": 300.0, "control_rpc_timeout_ms": 2000.0}


@pytest.fixture
def seven(cluster_builder) -> LocalCluster:  # type: ignore[no-untyped-def]
    cluster = cluster_builder(storage_nodes=7).start()
    azs = {node.name: node.az for node in cluster.storage_nodes}
    assert azs[OLD] == azs[NEW], azs
    return cluster


def member(cluster: LocalCluster, name: str) -> Member:
    return next(m for m in members(cluster) if m.node == name)


def open_on(loop_thread: LoopThread, nodes: list[Member], create: bool = False) -> Writer:
    config = replace(CONFIG, **FAST)
    opening = Volume.create if create else Volume.open
    return Writer(loop_thread, loop_thread.run(opening(VOLUME, nodes, config)))


def listing(loop_thread: LoopThread, cluster: LocalCluster, name: str) -> list[SegmentMeta]:
    async def call() -> list[SegmentMeta]:
        async with StorageClient(cluster.node(name).address, 5.0) as client:
            return [meta for meta in await client.list_segments() if meta.volume_id == VOLUME]

    return loop_thread.run(call())


def replace_node(writer: Writer, cluster: LocalCluster, timeout_s: float) -> list[PgIndex]:
    return writer.loop_thread.run(
        writer.volume.replace_node(OLD, member(cluster, NEW), timeout_s), timeout_s + 30
    )


def test_a_live_node_is_replaced_while_rows_are_written(
    seven: LocalCluster, loop_thread: LoopThread
) -> None:
    six = [m for m in members(seven) if m.node != NEW]
    writer = open_on(loop_thread, six, create=True)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 600)
        pgs_on_old = {meta.pg for meta in listing(loop_thread, seven, OLD)}
        assert pgs_on_old, "the old node holds segments"
        # Writes go on (from another thread) during the change.
        written = []
        stop = threading.Event()

        def write() -> None:
            next_row = 600
            while not stop.is_set() and next_row < 1600:
                insert_rows(writer, next_row, 100)
                next_row += 100
                written.append(next_row)

        writing = threading.Thread(target=write)
        writing.start()
        try:
            pgs = replace_node(writer, seven, timeout_s=60)
        finally:
            stop.set()
            writing.join(60)
        assert set(pgs) >= pgs_on_old
        count = written[-1] if written else 600
        assert digest(writer) == expected_digest(count)
        # The new node holds every moved PG, settled on the new members.
        metas = {meta.pg: meta for meta in listing(loop_thread, seven, NEW)}
        assert set(metas) >= pgs_on_old
        for meta in metas.values():
            assert not meta.hydrating and not meta.members_old
            assert OLD not in {m.node for m in meta.members} and NEW in {
                m.node for m in meta.members
            }
        # PGs created while the change began may be moved too, or placed on the
        # new node from the start.
        assert len(pgs_on_old) <= writer.volume.stats.pgs_moved <= len(pgs)
    finally:
        writer.close()
    # The old node goes away; the volume reopens on the new set, and the new node
    # counts towards quorums: with two more nodes down, writes still commit.
    seven.node(OLD).stop(immediate=True)
    current = [m for m in members(seven) if m.node != OLD]
    for name in ("s1", "s3"):
        seven.node(name).stop(immediate=True)
    writer = open_on(loop_thread, current)
    try:
        assert digest(writer) == expected_digest(count)
        insert_rows(writer, count, 100)
        assert digest(writer) == expected_digest(count + 100)
        assert integrity(writer) == "ok"
    finally:
        writer.close()


def test_a_dead_node_is_replaced_and_the_new_node_serves_reads(
    seven: LocalCluster, loop_thread: LoopThread
) -> None:
    six = [m for m in members(seven) if m.node != NEW]
    writer = open_on(loop_thread, six, create=True)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 500)
        seven.node(OLD).kill()
        insert_rows(writer, 500, 100)
        pgs = replace_node(writer, seven, timeout_s=60)
        assert pgs
        insert_rows(writer, 600, 100)
    finally:
        writer.close()
    # Reads at the VDL work with only a read quorum left, the new node among it.
    current = [m for m in members(seven) if m.node != OLD]
    for name in ("s1", "s3", "s6"):
        seven.node(name).stop(immediate=True)
    writer = open_on(loop_thread, current)
    try:
        assert digest(writer) == expected_digest(700)
        assert integrity(writer) == "ok"
    finally:
        writer.close()


def test_a_writer_stopping_mid_change_leaves_the_old_members_after_recovery(
    seven: LocalCluster, loop_thread: LoopThread
) -> None:
    six = [m for m in members(seven) if m.node != NEW]
    writer = open_on(loop_thread, six, create=True)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 300)
        pgs_before = {PgIndex(meta.pg) for meta in listing(loop_thread, seven, OLD)}
        # The new node cannot finish hydrating: the change begins and stays open.
        loop_thread.run(set_failpoint(seven, [NEW], HYDRATION_FINISH, "error"))
        with pytest.raises(DeadlineExceeded):
            replace_node(writer, seven, timeout_s=1.0)
        assert {meta.hydrating for meta in listing(loop_thread, seven, NEW)} == {True}
        insert_rows(writer, 300, 100)
    finally:
        writer.close()
    loop_thread.run(set_failpoint(seven, [NEW], HYDRATION_FINISH, "off"))
    writer = open_on(loop_thread, six)
    try:
        assert digest(writer) == expected_digest(400)
        old_members = {m.node for m in six}
        for meta in listing(loop_thread, seven, OLD):
            assert {m.node for m in meta.members} == old_members and not meta.members_old
        recovered = writer.volume.recovered
        assert recovered is not None
        # Begun at epoch 2, rolled back at epoch 3 with the old members (PGs created
        # since are placed on the new node from the start, at epoch 1).
        epochs = recovered.membership_epoch_by_pg
        assert {epochs[pg] for pg in pgs_before} == {3}, epochs
        insert_rows(writer, 400, 100)
        # Asked again, the replacement starts over: the new node's segments, out of
        # their PGs since the rollback, drop what they held and hydrate again.
        replace_node(writer, seven, timeout_s=60)
        insert_rows(writer, 500, 100)
        assert digest(writer) == expected_digest(600)
    finally:
        writer.close()
    # The new node counts: with the old node and two more down, the volume opens,
    # reads and writes.
    current = [m for m in members(seven) if m.node != OLD]
    for name in (OLD, "s1", "s3"):
        seven.node(name).stop(immediate=True)
    writer = open_on(loop_thread, current)
    try:
        assert digest(writer) == expected_digest(600)
        insert_rows(writer, 600, 50)
        assert integrity(writer) == "ok"
    finally:
        writer.close()
