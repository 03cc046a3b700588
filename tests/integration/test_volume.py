"""The writer's volume client on six real storage nodes, under the engine (SQLite).

SQLite runs on the test's thread; the volume (shipper, page reader, clients) lives
on an event loop in a background thread, as in the instance. Small PGs (16 pages)
make a few thousand rows span many PGs.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from borealis.errors import AlreadyExists, StaleEpoch, Unavailable
from borealis.ids import Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.metrics import Metrics
from borealis.wait import wait_until
from compute_node.engine import EngineConnection, LockingMode, VolumeVFS, open_connection
from compute_node.volume.config import VolumeConfig
from compute_node.volume.recovery import RecordSeen, durable_point
from compute_node.volume.shipper import ShipperConfig
from compute_node.volume.topology import Topology
from compute_node.volume.volume import Volume
from deploy.local import LocalCluster
from storage_node.client import StorageClient
from tests.support.storage import members

pytestmark = pytest.mark.integration

T = TypeVar("T")

VOLUME = VolumeId(11)
PAGES_PER_PG = 16
ROWS_PER_TRANSACTION = 100
CONFIG = VolumeConfig(pages_per_pg=PAGES_PER_PG, lal_lsns=100_000)


class LoopThread:
    """An event loop on a background thread: the volume's home."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop_thread = LoopThread()
    try:
        yield loop_thread
    finally:
        loop_thread.close()


class Writer:
    """A volume and the engine's one writing connection on it."""

    def __init__(self, loop_thread: LoopThread, volume: Volume, cache_pages: int = 2000) -> None:
        self.loop_thread = loop_thread
        self.volume = volume
        self.vfs = VolumeVFS(volume)
        self.connection: EngineConnection = open_connection(
            self.vfs, writable=True, locking_mode=LockingMode.EXCLUSIVE, cache_pages=cache_pages
        )
        self.sqlite = self.connection.sqlite

    @classmethod
    def create(
        cls, loop_thread: LoopThread, cluster: LocalCluster, cache_pages: int = 2000, **config: Any
    ) -> Writer:
        volume = loop_thread.run(Volume.create(VOLUME, members(cluster), replace(CONFIG, **config)))
        return cls(loop_thread, volume, cache_pages)

    @classmethod
    def open(cls, loop_thread: LoopThread, cluster: LocalCluster, **config: Any) -> Writer:
        volume = loop_thread.run(Volume.open(VOLUME, members(cluster), replace(CONFIG, **config)))
        return cls(loop_thread, volume)

    def commit_durable(self, sql: str, *bindings: Any) -> Lsn:
        """Runs a statement (its own transaction, or a COMMIT) and waits for VDL >= CPL."""
        self.sqlite.execute(sql, bindings or None)
        return self.volume.wait_durable_blocking(self.connection.file.lsn_commit_last)

    def close(self) -> None:
        self.connection.close()
        self.vfs.unregister()
        self.loop_thread.run(self.volume.close())


def row(index: int) -> tuple[int, str, bytes]:
    value = hashlib.sha256(index.to_bytes(8, "little")).digest() * (1 + index % 7)
    return index, f"key-{index * 7919 % 100_003:06d}", value


def create_schema(writer: Writer) -> None:
    writer.commit_durable(
        "CREATE TABLE item(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL);"
        "CREATE INDEX item_k ON item(k)"
    )


def insert_rows(writer: Writer, first: int, count: int, durable: bool = True) -> None:
    """Inserts rows first .. first + count - 1 in transactions of ROWS_PER_TRANSACTION."""
    for start in range(first, first + count, ROWS_PER_TRANSACTION):
        end = min(first + count, start + ROWS_PER_TRANSACTION)
        with writer.sqlite:
            writer.sqlite.executemany(
                "INSERT INTO item VALUES(?, ?, ?)", (row(i) for i in range(start, end))
            )
        if durable:
            writer.volume.wait_durable_blocking(writer.connection.file.lsn_commit_last)


def digest(writer: Writer) -> tuple[int, str]:
    """(row count, a hash of every row in key order, through the index)."""
    hasher = hashlib.sha256()
    count = 0
    for index, key, value in writer.sqlite.execute(
        "SELECT id, k, v FROM item INDEXED BY item_k ORDER BY k, id"
    ):
        hasher.update(f"{index}:{key}:".encode() + value)
        count += 1
    return count, hasher.hexdigest()


def expected_digest(count: int) -> tuple[int, str]:
    hasher = hashlib.sha256()
    for index, key, value in sorted((row(i) for i in range(count)), key=lambda r: (r[1], r[0])):
        hasher.update(f"{index}:{key}:".encode() + value)
    return count, hasher.hexdigest()


def integrity(writer: Writer) -> str:
    return writer.sqlite.execute("PRAGMA integrity_check").fetchall()[0][0]


async def set_failpoint(cluster: LocalCluster, names: list[str], name: str, action: str) -> None:
    for node in cluster.storage_nodes:
        if node.name in names:
            async with StorageClient(node.address, 5.0) as client:
                await client.set_failpoint(name, action)


# -- create, restart, reopen ----------------------------------------------------------------


def test_rows_survive_a_restart_and_a_kill_of_every_storage_node(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        with pytest.raises(AlreadyExists):
            loop_thread.run(Volume.create(VOLUME, members(storage_cluster), CONFIG))
        create_schema(writer)
        insert_rows(writer, 0, 3000)
        assert digest(writer) == expected_digest(3000)
        metrics = writer.volume.metrics()
        assert writer.volume.pg_count >= 8, metrics
        assert metrics["waiter_timeouts"] == 0 and metrics["segments_left_behind"] == 0
    finally:
        writer.close()

    # A clean stop of every node, then the writer reopens the volume.
    storage_cluster.stop()
    storage_cluster.start()
    writer = Writer.open(loop_thread, storage_cluster)
    try:
        recovered = writer.volume.recovered
        assert recovered is not None and recovered.volume_epoch == 2
        assert recovered.excluded == []
        assert writer.volume.pg_count >= 8
        assert integrity(writer) == "ok"
        assert digest(writer) == expected_digest(3000)
        # The new writer appends above the truncation range, linked to what survived.
        insert_rows(writer, 3000, 500)
        assert digest(writer) == expected_digest(3500)
        # Then commits that are not waited for, and kill -9 of every node at once
        # (the writer is gone too: nothing is shipped after the kill).
        insert_rows(writer, 3500, 1000, durable=False)
        durable = writer.volume.vdl
        storage_cluster.stop(immediate=True)
    finally:
        writer.close()

    storage_cluster.start()
    writer = Writer.open(loop_thread, storage_cluster)
    try:
        recovered = writer.volume.recovered
        assert recovered is not None and recovered.volume_epoch == 3
        assert recovered.vdl >= durable
        assert integrity(writer) == "ok"
        # Whole transactions only: every acknowledged one, perhaps some after it.
        count, _ = digest(writer)
        assert 3500 <= count <= 4500 and count % ROWS_PER_TRANSACTION == 0, count
        assert digest(writer) == expected_digest(count)
        insert_rows(writer, count, 200)
        assert digest(writer) == expected_digest(count + 200)
    finally:
        writer.close()


# -- failures -----------------------------------------------------------------------------


def test_commits_continue_with_two_nodes_down_and_stall_with_three(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    # Tiny caches (SQLite's and the volume's): pages are read back from storage
    # all along, also while nodes are down.
    # A small LAL, so that the stall reaches it quickly.
    limits: dict[str, Any] = {"lal_lsns": 300, "admit_timeout_ms": 2000.0}
    writer = Writer.create(
        loop_thread,
        storage_cluster,
        cache_pages=16,
        cache_capacity_bytes=48 * 4096,
        shipper=ShipperConfig(durable_timeout_ms=2000.0, rpc_timeout_ms=1000.0),
        **limits,
    )
    nodes = storage_cluster.storage_nodes
    try:
        create_schema(writer)
        writer.commit_durable("CREATE TABLE tick(n INTEGER NOT NULL); INSERT INTO tick VALUES(0)")
        insert_rows(writer, 0, 500)
        # Two nodes of one AZ and... any two: every PG keeps a write quorum.
        nodes[0].kill()
        nodes[3].kill()
        started = time.monotonic()
        insert_rows(writer, 500, 1000)
        assert time.monotonic() - started < 15
        assert digest(writer) == expected_digest(1500)
        assert writer.volume.metrics()["rpc_failures"] > 0
        assert writer.volume.metrics()["storage_reads"] > 100
        assert writer.volume.reader.stats.failed_reads == 0

        # A third node down: commits are taken but never acknowledged durable.
        nodes[4].kill()
        with writer.sqlite:
            writer.sqlite.executemany(
                "INSERT INTO item VALUES(?, ?, ?)", (row(i) for i in range(1500, 1600))
            )
        cpl = writer.connection.file.lsn_commit_last
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"PG \d+ has no write quorum") as caught:
            writer.volume.wait_durable_blocking(cpl)
        assert 1.5 < time.monotonic() - started < 10
        assert caught.value.context["lsn"] == cpl
        assert writer.volume.vdl < cpl
        # The writer takes commits until it is the LAL ahead of the VDL; then admit
        # waits, and refuses: SQLite rolls the transaction back. (Small updates: a
        # commit growing into a new PG would be refused sooner, as the PG cannot
        # be created on a write quorum.)
        ticks = 0
        with pytest.raises(Unavailable, match="LSN allocation limit"):
            for _ in range(1000):
                writer.sqlite.execute("UPDATE tick SET n = n + 1")
                ticks += 1
        assert 100 < ticks < 300, ticks
        assert not writer.sqlite.in_transaction
        assert writer.volume.metrics()["admit_waits"] >= 1
        cpl = writer.connection.file.lsn_commit_last
        committed = 1600

        # The nodes come back: the stalled commits become durable, and the nodes
        # that missed records catch up (from the writer's retained records).
        for node in (nodes[0], nodes[3], nodes[4]):
            node.start()
        writer.volume.wait_durable_blocking(cpl, timeout_s=30)
        insert_rows(writer, committed, 200)
        total = committed + 200
        assert digest(writer) == expected_digest(total)
        shipper = writer.volume.shipper

        def all_caught_up() -> bool:
            vdl = writer.volume.vdl
            return all(
                view["scl"] >= writer.volume.shipper.lsn_readable(PgIndex(pg), vdl)
                for pg in range(writer.volume.pg_count)
                for view in shipper.segment_view(PgIndex(pg)).values()
            )

        wait_until(all_caught_up, 30, what="every segment to catch up")
    finally:
        writer.close()
    storage_cluster.stop()
    storage_cluster.start()
    writer = Writer.open(loop_thread, storage_cluster, **limits)
    try:
        assert integrity(writer) == "ok"
        assert digest(writer) == expected_digest(total)
        assert writer.sqlite.execute("SELECT n FROM tick").fetchall() == [(ticks,)]
    finally:
        writer.close()


def test_a_commit_is_not_durable_while_only_three_nodes_ack(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    slow = [node.name for node in storage_cluster.storage_nodes[:3]]
    try:
        create_schema(writer)
        insert_rows(writer, 0, 300)
        loop_thread.run(
            set_failpoint(storage_cluster, slow, "storage.append.before_ack", "sleep(3000)")
        )
        started = time.monotonic()
        writer.sqlite.execute("INSERT INTO item VALUES(?, ?, ?)", row(300))
        cpl = writer.connection.file.lsn_commit_last
        # Three acks arrive at once, but the quorum needs a fourth.
        time.sleep(1.0)
        assert writer.volume.vdl < cpl
        writer.volume.wait_durable_blocking(cpl)
        elapsed_s = time.monotonic() - started
        assert elapsed_s > 2.5, elapsed_s
        loop_thread.run(set_failpoint(storage_cluster, slow, "storage.append.before_ack", "off"))
        assert digest(writer) == expected_digest(301)
    finally:
        writer.close()


def test_a_pg_created_on_too_few_nodes_does_not_stop_a_reopen(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 300)
        pg = PgIndex(writer.volume.pg_count)
    finally:
        writer.close()
    # A writer that died while creating the next PG left it on two nodes only.
    placement = Topology(VOLUME, members(storage_cluster), PAGES_PER_PG).placement(pg)

    async def create_partially() -> None:
        for member in placement[:2]:
            async with StorageClient(member.address, 5.0) as client:
                await client.set_membership(
                    SegmentId(VOLUME, pg),
                    Epochs(Epoch(1), Epoch(1)),
                    pg * PAGES_PER_PG,
                    PAGES_PER_PG,
                    placement,
                )

    loop_thread.run(create_partially())
    writer = Writer.open(loop_thread, storage_cluster)
    try:
        recovered = writer.volume.recovered
        assert recovered is not None
        assert sorted(recovered.missing_by_pg[pg]) == sorted(m.node for m in placement[2:])
        assert digest(writer) == expected_digest(300)
        # Growing into the PG creates its missing segments.
        insert_rows(writer, 300, 700)
        assert writer.volume.pg_count > pg
        assert writer.volume.shipper.stats.segments_recreated == 4
        assert digest(writer) == expected_digest(1000)
    finally:
        writer.close()
    writer = Writer.open(loop_thread, storage_cluster)
    try:
        assert integrity(writer) == "ok"
        assert digest(writer) == expected_digest(1000)
    finally:
        writer.close()


def test_a_new_writer_fences_the_old_one(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    old = Writer.create(loop_thread, storage_cluster)
    new: Writer | None = None
    try:
        create_schema(old)
        insert_rows(old, 0, 300)
        new = Writer.open(loop_thread, storage_cluster)
        # The old writer's next commit is refused by every segment: never durable.
        old.sqlite.execute("INSERT INTO item VALUES(?, ?, ?)", row(300))
        with pytest.raises(StaleEpoch, match="fenced"):
            old.volume.wait_durable_blocking(old.connection.file.lsn_commit_last)
        # And it takes no more commits.
        with pytest.raises(StaleEpoch):
            old.sqlite.execute("INSERT INTO item VALUES(?, ?, ?)", row(301))
        assert digest(new) == expected_digest(300)
        insert_rows(new, 300, 100)
        assert digest(new) == expected_digest(400)
        assert integrity(new) == "ok"
    finally:
        old.close()
        if new is not None:
            new.close()


# -- group commit ----------------------------------------------------------------------------


def run_committers(
    writer: Writer, sessions: int, commits_each: int, statement: Callable[[int], tuple[str, tuple]]
) -> list[float]:
    """`sessions` threads each run `commits_each` single-statement transactions
    (`statement(n)` for n = 0, 1, ... across sessions) and wait for durability
    outside the engine's lock, as sessions sharing the writing connection do;
    returns every commit's latency in seconds."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def session(index: int) -> None:
        try:
            for n in range(commits_each):
                sql, bindings = statement(index * commits_each + n)
                started = time.perf_counter()
                with lock:
                    writer.sqlite.execute(sql, bindings)
                    cpl = writer.connection.file.lsn_commit_last
                writer.volume.wait_durable_blocking(cpl)
                latencies.append(time.perf_counter() - started)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=session, args=(index,)) for index in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return latencies


def measure(
    writer: Writer, sessions: int, commits: int, statement: Callable[[int], tuple[str, tuple]]
) -> dict[str, float]:
    shipper_before = replace(writer.volume.shipper.stats)
    volume_before = replace(writer.volume.stats)
    started = time.perf_counter()
    latencies = run_committers(writer, sessions, commits // sessions, statement)
    elapsed_s = time.perf_counter() - started
    shipper = writer.volume.shipper.stats
    volume = writer.volume.stats
    commits_done = volume.commits - volume_before.commits
    assert commits_done == len(latencies)
    rpcs = shipper.rpcs - shipper_before.rpcs
    return {
        "commits_per_s": round(commits_done / elapsed_s),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(statistics.quantiles(latencies, n=100)[98] * 1000, 1),
        "rpcs_per_segment_per_commit": round(
            rpcs / (6 * (shipper.pg_groups - shipper_before.pg_groups)), 3
        ),
        "rpcs_per_commit": round(rpcs / commits_done, 2),
        "records_per_batch": round(
            (shipper.batch_records - shipper_before.batch_records)
            / (shipper.batches - shipper_before.batches),
            2,
        ),
        "redo_bytes_per_commit": round(
            (volume.record_bytes - volume_before.record_bytes) / commits_done
        ),
        "dirty_bytes_per_commit": round(
            (volume.dirty_bytes - volume_before.dirty_bytes) / commits_done
        ),
    }


@pytest.mark.slow
def test_eight_concurrent_committers_share_batches(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    writer = Writer.create(loop_thread, storage_cluster)
    try:
        create_schema(writer)
        insert_rows(writer, 0, 1000)
        writer.commit_durable(
            "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
            "WITH RECURSIVE i(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM i WHERE x < 999)"
            " INSERT INTO counter SELECT x, 0 FROM i"
        )
        results = {}
        inserted = 1000

        def insert(n: int) -> tuple[str, tuple]:
            return "INSERT INTO item VALUES(?, ?, ?)", row(inserted + n)

        def update(n: int) -> tuple[str, tuple]:
            return "UPDATE counter SET n = n + 1 WHERE id = ?", (n * 7 % 1000,)

        for sessions in (1, 8):
            results[f"insert_{sessions}"] = measure(writer, sessions, 400, insert)
            inserted += 400
        results["update_8"] = measure(writer, 8, 400, update)
        print("\ncommitters:", results)
        # Alone, a committer gets a batch per PG per commit; eight share them.
        for name in ("insert_8", "update_8"):
            assert results[name]["rpcs_per_segment_per_commit"] < 1, results
        assert results["insert_8"]["records_per_batch"] > results["insert_1"]["records_per_batch"]
        # Single-row updates ship deltas: 10x fewer bytes than the pages they dirty.
        update_8 = results["update_8"]
        assert update_8["redo_bytes_per_commit"] * 10 <= update_8["dirty_bytes_per_commit"]
        assert digest(writer) == expected_digest(inserted)
        assert writer.sqlite.execute("SELECT sum(n) FROM counter").fetchall() == [(400,)]
        assert integrity(writer) == "ok"
        registry = Metrics("borealis_compute")
        writer.volume.register_metrics(registry)
        text = registry.render()
        for name in ("redo_batches_total", "redo_append_rpcs_total", "volume_vdl"):
            assert f"borealis_compute_{name} " in text, name
    finally:
        writer.close()


# -- the recovery walk (pure; no cluster) ------------------------------------------------------


def seen(pg: int, prev: int, cpl: bool = False, holders: int = 6) -> RecordSeen:
    return RecordSeen(PgIndex(pg), Lsn(prev), Lsn(0), cpl, False, 0, holders)


def test_durable_point_walks_the_volume_chain_from_the_floor() -> None:
    needed = {PgIndex(0): 4, PgIndex(1): 4}
    records = {
        Lsn(11): seen(0, 9),  # links below the floor (10): fine for the first record
        Lsn(12): seen(1, 11, cpl=True),
        Lsn(13): seen(0, 12),
        Lsn(14): seen(1, 13, cpl=True, holders=4),
        Lsn(15): seen(0, 14, cpl=True, holders=3),  # not on a write quorum
        Lsn(16): seen(1, 15, cpl=True),
    }
    assert durable_point(records, Lsn(10), needed) == (14, 14)
    # A record missing everywhere shows up as a broken link: 13 links to 12.
    del records[Lsn(12)]
    assert durable_point(records, Lsn(10), needed) == (11, None)
    # The first record above the floor links above it: a record between is missing.
    assert durable_point({Lsn(12): seen(0, 11, cpl=True)}, Lsn(10), needed) == (10, None)
    # A group whose CPL is not complete is not durable, though its first records are.
    partial = {Lsn(11): seen(0, 10), Lsn(12): seen(1, 11, cpl=True, holders=2)}
    assert durable_point(partial, Lsn(10), needed) == (11, None)
    # With only 4 segments of PG 1 usable, 2 holders may be a write quorum.
    assert durable_point(partial, Lsn(10), {PgIndex(0): 4, PgIndex(1): 2}) == (12, 12)
