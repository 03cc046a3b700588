"""New readers start with a warm cache (issue 7), on real processes.

A writer holds a table spread over several PGs, larger than its buffer cache, and a
query pattern over part of it makes those pages the writer's hottest. A reader added
then (prewarm on, the default) asks the writer for its hot pages and reads them
before it serves: before its first query its cache holds most of them, and running
the hot pattern reads far fewer pages from storage than on a reader added with
prewarm off in the same test. Both answer correctly.

A slow prewarm (every storage page read delayed) stops at its time bound: the
reader serves soon after it, with what it read, and answers correctly.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from borealis import metrics as metrics_module
from borealis import rpc
from deploy.local import InstanceProcess, LocalCluster
from deploy.ports import PortAllocator
from proto import capacity_pb2, capacity_pb2_grpc
from tests.conftest import FAST_STORAGE
from tests.support import storage

pytestmark = pytest.mark.integration

RPC_TIMEOUT_S = 10.0
PAGE_BYTES = 4096
# Every instance's cache holds 256 pages (1 MiB); a PG holds 128 pages, so the table
# (about 4000 rows of 360 bytes, some 450 pages) spans four PGs and does not fit.
CACHE_BYTES = 2**20
CACHE_PAGES = CACHE_BYTES // PAGE_BYTES
PAGES_PER_PG = 128
ROWS = 4000
ROWS_PER_INSERT = 200
PAD_REPEAT = 60
# The hot pattern: the first quarter of the table (about 110 pages), queried again
# and again.
HOT_IDS = 1000
HOT_RUNS = 3
METRIC_PREFIX = "borealis_instance_"
# The slow prewarm: each storage page read waits this long, two at a time, and the
# prewarm may take this long in all (some 10 of the 256 pages it is asked for).
SLOW_PAGE_READ_MS = 200
SLOW_PREWARM_CONCURRENCY = 2
SLOW_PREWARM_TIMEOUT_MS = 1000
# How far past its bound the prewarm may end (the cancelled reads unwind), and how
# long the reader's whole start may take with every page read slowed.
PREWARM_OVERRUN_S = 0.5
SLOW_START_MAX_S = 20.0


@pytest.fixture
def cluster(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path / "cluster",
        ports=port_allocator,
        writer=True,
        storage_overrides=FAST_STORAGE,
        instance_overrides={"pages_per_pg": PAGES_PER_PG, "buffer_cache_bytes": CACHE_BYTES},
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(immediate=True)
    errors = [f"{each.name}: {line}" for each in cluster.processes() for line in each.error_lines()]
    assert not errors, "logged errors:\n" + "\n".join(errors)


def pad_of(row_id: int) -> str:
    return f"{row_id:06d}" * PAD_REPEAT


def connect(cluster: LocalCluster, instance: InstanceProcess) -> psycopg.Connection:
    return psycopg.connect(instance.url(), password=cluster.password, autocommit=True)


def load_table(cluster: LocalCluster) -> None:
    with connect(cluster, cluster.writer()) as connection:
        connection.execute("CREATE TABLE items (id integer PRIMARY KEY, v integer, pad text)")
        for first in range(0, ROWS, ROWS_PER_INSERT):
            ids = range(first, first + ROWS_PER_INSERT)
            placeholders = ", ".join(["(%s, %s, %s)"] * len(ids))
            values = [value for row_id in ids for value in (row_id, 7 * row_id, pad_of(row_id))]
            connection.execute(f"INSERT INTO items VALUES {placeholders}", values)  # type: ignore[arg-type]


def run_hot_pattern(cluster: LocalCluster, instance: InstanceProcess) -> None:
    """The hot queries, each answer checked. Each run is a read transaction, which
    the engine runs on a reading connection: their SQLite page caches are dropped
    whenever the read point moves, so their reads reach the buffer cache. (An
    autocommit read may run on the writer's own connection, whose SQLite page cache
    of 2000 pages is never dropped: the buffer cache would not see it.)"""
    expected_sum = 7 * sum(range(HOT_IDS))
    with connect(cluster, instance) as connection:
        for _ in range(HOT_RUNS):
            with connection.transaction():
                check_hot_answers(connection, expected_sum)


def check_hot_answers(connection: psycopg.Connection, expected_sum: int) -> None:
    row = connection.execute(
        "SELECT count(*), sum(v), sum(length(pad)) FROM items WHERE id < %s", (HOT_IDS,)
    ).fetchone()
    assert row == (HOT_IDS, expected_sum, HOT_IDS * 6 * PAD_REPEAT), row
    row = connection.execute("SELECT v, pad FROM items WHERE id = %s", (HOT_IDS // 2,)).fetchone()
    assert row == (7 * (HOT_IDS // 2), pad_of(HOT_IDS // 2)), row


def hot_pages(instance: InstanceProcess, max_pages: int = CACHE_PAGES) -> list[int]:
    with rpc.sync_channel(instance.address) as channel:
        response = capacity_pb2_grpc.CapacityStub(channel).HotPages(
            capacity_pb2.HotPagesRequest(max_pages=max_pages), timeout=RPC_TIMEOUT_S
        )
    return list(response.pages)


def metric(instance: InstanceProcess, name: str) -> float:
    with urllib.request.urlopen(instance.metrics_url, timeout=RPC_TIMEOUT_S) as response:
        return metrics_module.parse(response.read().decode())[METRIC_PREFIX + name]


def storage_reads_of_hot_pattern(cluster: LocalCluster, instance: InstanceProcess) -> float:
    """Pages the instance read from storage while it ran the hot pattern."""
    before = metric(instance, "page_reads_total")
    run_hot_pattern(cluster, instance)
    return metric(instance, "page_reads_total") - before


def test_new_reader_starts_with_the_writers_hot_pages(cluster: LocalCluster) -> None:
    writer = cluster.writer()
    load_table(cluster)
    run_hot_pattern(cluster, writer)
    writer_hot = hot_pages(writer)
    # The writer's cache is full (the table is larger) and lists at most the bound.
    assert len(writer_hot) == CACHE_PAGES
    assert len(hot_pages(writer, max_pages=10)) == 10

    warm = cluster.add_reader()
    # Before any query: prewarm ran to completion within its time bound.
    assert metric(warm, "replica_prewarm_pages_listed") == CACHE_PAGES
    assert metric(warm, "replica_prewarm_timed_out") == 0
    assert metric(warm, "replica_prewarm_failures") == 0
    assert metric(warm, "replica_prewarm_pages") >= 0.9 * CACHE_PAGES
    assert metric(warm, "replica_prewarm_seconds") > 0
    warm_overlap = len(set(writer_hot) & set(hot_pages(warm)))
    assert warm_overlap >= 0.9 * len(writer_hot), (warm_overlap, len(writer_hot))

    cluster.instance_overrides = {**cluster.instance_overrides, "prewarm": False}
    cold = cluster.add_reader()
    assert metric(cold, "replica_prewarm_pages") == 0
    cold_overlap = len(set(writer_hot) & set(hot_pages(cold)))
    assert cold_overlap <= 0.2 * len(writer_hot), (cold_overlap, len(writer_hot))

    cold_reads = storage_reads_of_hot_pattern(cluster, cold)
    warm_reads = storage_reads_of_hot_pattern(cluster, warm)
    # The hot pattern touches about 110 pages: a cold cache reads them from storage,
    # a warm one (almost) none of them.
    assert cold_reads >= 50, cold_reads
    assert warm_reads <= cold_reads / 10, (warm_reads, cold_reads)


def set_storage_failpoint(cluster: LocalCluster, name: str, action: str) -> None:
    async def set_all() -> None:
        clients = storage.clients(cluster)
        try:
            await asyncio.gather(*(client.set_failpoint(name, action) for client in clients))
        finally:
            await storage.close_all(clients)

    asyncio.run(set_all())


@pytest.mark.slow
def test_slow_prewarm_stops_at_its_time_bound(cluster: LocalCluster) -> None:
    load_table(cluster)
    run_hot_pattern(cluster, cluster.writer())
    cluster.instance_overrides = {
        **cluster.instance_overrides,
        "prewarm_timeout_ms": SLOW_PREWARM_TIMEOUT_MS,
        "prewarm_concurrency": SLOW_PREWARM_CONCURRENCY,
    }
    set_storage_failpoint(cluster, "storage.get_page", f"sleep({SLOW_PAGE_READ_MS})")
    try:
        started_s = time.monotonic()
        reader = cluster.add_reader()
        start_s = time.monotonic() - started_s
    finally:
        set_storage_failpoint(cluster, "storage.get_page", "off")
    assert start_s < SLOW_START_MAX_S, start_s
    assert metric(reader, "replica_prewarm_timed_out") == 1
    assert metric(reader, "replica_prewarm_pages_listed") == CACHE_PAGES
    prewarmed = metric(reader, "replica_prewarm_pages")
    # Some pages were read, far from all of them.
    assert 0 < prewarmed < CACHE_PAGES / 4, prewarmed
    prewarm_s = metric(reader, "replica_prewarm_seconds")
    assert prewarm_s < SLOW_PREWARM_TIMEOUT_MS / 1000 + PREWARM_OVERRUN_S, prewarm_s
    run_hot_pattern(cluster, reader)
