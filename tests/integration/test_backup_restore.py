"""Continuous backup and point-in-time restore (issue 8, must hold 1).

A cluster writes under load (the bank workload plus a high-water-mark table whose
writes are paced, so that a gap of known client times lies between two of them);
its storage nodes stream the log and page images to an object store. A time T in
the middle is chosen inside such a gap, the original cluster is killed and its
data directory deleted, and a new cluster restored to T from the store alone
must hold exactly the transactions committed at or before T:

- the high-water mark equals the last one acknowledged before T (exact: its
  commit time lies between the client's clock before BEGIN and after COMMIT, on
  the same host clock the writer stamps commits with, and T lies after that
  COMMIT returned and before the next BEGIN);
- the bank is sound (total balance, no half-applied transfer, integrity check),
  every transfer acknowledged before T is there, and no transfer a client began
  after T is.

Once from the local store (encryption on, the KMS key kept outside the data
directory, as a real KMS is), once from an S3 endpoint (moto's server mode) with
the uploading storage node killed during the load (the next one takes over).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from borealis import kms, metrics, rpc
from borealis.cli.main import main
from borealis.errors import InvalidRequest, NotFound, Unavailable
from borealis.object_store import S3ObjectStore, object_store_from_url
from borealis.wait import wait_until
from control_plane.restore import Target, backup_status, restore_cluster
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from storage_node.client import StorageClient
from tests.conftest import FAST_STORAGE
from tests.fault.bank import (
    BankWorkload,
    bank_violations,
    connector,
    create_bank,
    integrity_check,
    read_bank,
)
from tests.support.moto_server import moto_server
from tests.support.storage import metric_value

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT_S = 5
US_PER_S = 1_000_000
# The high-water-mark writer waits this long between commits: T lies in such a gap.
HWM_PACE_S = 0.05
BACKUP = {
    "backup_interval_ms": 200,
    # Image sets every 2 s, so a restore starts some PGs from one (the hydration path).
    "backup_image_interval_s": 2.0,
}
# Small PGs, so the volume has several and restore must join their logs.
INSTANCE = {"pages_per_pg": 4}


@dataclass
class HighWaterMark:
    """One client raising a counter, one commit at a time; what it saw."""

    connect: Any
    # (value, wall time before BEGIN, wall time after COMMIT returned)
    commits: list[tuple[int, float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> HighWaterMark:
        self._thread = threading.Thread(target=self._run, daemon=True, name="hwm")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        assert not self._thread.is_alive(), "the high-water-mark client did not stop"

    def _run(self) -> None:
        value = 0
        with self.connect() as connection:
            while not self._stop.is_set():
                before = time.time()
                try:
                    connection.execute("BEGIN")
                    connection.execute("UPDATE hwm SET value = %s WHERE id = 1", (value + 1,))
                    connection.execute("COMMIT")
                except psycopg.Error as error:
                    if getattr(error, "sqlstate", None) != "40001":
                        # Any other failure leaves the commit's outcome unknown.
                        self.errors.append(str(error))
                        return
                    connection.execute("ROLLBACK")  # a serialization failure: retry
                    continue
                value += 1
                self.commits.append((value, before, time.time()))
                self._stop.wait(HWM_PACE_S)


def transfer_attempt(transfer_id: str) -> tuple[int, int]:
    """(client, attempt) of a bank transfer id `c{client}-{attempt}`."""
    client, _, attempt = transfer_id[1:].partition("-")
    return int(client), int(attempt)


@dataclass
class Run:
    cluster: LocalCluster
    bank: BankWorkload
    bank_started_wall_s: float
    hwm: HighWaterMark
    target_time_s: float
    target_hwm: int


def start_cluster(
    data_dir: Path, ports: PortAllocator, clusters: list[LocalCluster], **options: Any
) -> LocalCluster:
    storage = {**FAST_STORAGE, **BACKUP, **options.pop("storage", {})}
    cluster = LocalCluster(
        data_dir,
        ports=ports,
        writer=True,
        storage_overrides=storage,
        instance_overrides=INSTANCE,
        **options,
    )
    clusters.append(cluster)
    return cluster.start()


def connect_to(cluster: LocalCluster) -> Any:
    return connector(cluster.writer().url(), cluster.password)


def write_under_load(
    cluster: LocalCluster, load_s: float, meanwhile: Callable[[], None] | None = None
) -> Run:
    """The bank and the high-water mark for `load_s` (`meanwhile` runs after a third
    of it); T is a gap in the middle."""
    connect = connect_to(cluster)
    create_bank(connect)
    with connect() as connection:
        connection.execute("CREATE TABLE hwm (id integer PRIMARY KEY, value integer)")
        connection.execute("INSERT INTO hwm VALUES (1, 0)")
    bank = BankWorkload(connect, seed=8).start()
    # The wall time of the workload's clock zero (its acks are relative to it).
    bank_started_wall_s = time.time() - bank.now_s()
    hwm = HighWaterMark(connect).start()
    started_s = time.monotonic()
    if meanwhile is not None:
        wait_until(lambda: time.monotonic() - started_s >= load_s / 3, load_s, 0.1, "the load")
        meanwhile()
    wait_until(lambda: time.monotonic() - started_s >= load_s, load_s + 5, 0.1, "the load")
    # T: right after a commit returned, well before the next BEGIN, near the middle.
    commits = list(hwm.commits)
    assert len(commits) >= 6, f"too few high-water-mark commits: {len(commits)} {hwm.errors}"
    middle = len(commits) // 2
    for index in range(middle, len(commits) - 1):
        value, _, acked = commits[index]
        next_begin = commits[index + 1][1]
        if next_begin - acked >= HWM_PACE_S / 2:
            return Run(cluster, bank, bank_started_wall_s, hwm, acked + HWM_PACE_S / 4, value)
    raise AssertionError("no gap between high-water-mark commits")


def wait_backed_up(store_url: str, volume: str, time_s: float, endpoint_url: str | None) -> None:
    def covered() -> bool:
        status = backup_status(store_url, volume, endpoint_url)
        return (status["latest_restorable_time_us"] or 0) > time_s * US_PER_S

    wait_until(covered, 20, 0.2, "the backup to cover the target time")


def check_restored(restored: LocalCluster, run: Run) -> None:
    with connect_to(restored)() as connection:
        value = connection.execute("SELECT value FROM hwm WHERE id = 1").fetchone()
        assert value == (run.target_hwm,), (value, run.target_hwm)
        state = read_bank(connection)
        assert integrity_check(connection) == ["ok"]
    target_offset_s = run.target_time_s - run.bank_started_wall_s
    acknowledged_before = {
        transfer
        for record in run.bank.records
        for transfer, at_s in record.acknowledged.items()
        if at_s <= target_offset_s
    }
    problems = bank_violations(state, acknowledged_before)
    assert not problems, problems
    # A client's attempts are sequential: every attempt after its first one
    # acknowledged after T began after T, so none of them may be restored.
    first_after: dict[int, int] = {}
    for record in run.bank.records:
        later = [
            transfer_attempt(t)[1] for t, at in record.acknowledged.items() if at > target_offset_s
        ]
        first_after[record.client] = min(later, default=2**31)
    too_new = [
        transfer
        for transfer in state.transfers
        if transfer_attempt(transfer)[1] > first_after[transfer_attempt(transfer)[0]]
    ]
    assert not too_new, f"transfers begun after T were restored: {too_new[:10]}"
    assert len(state.transfers) >= len(acknowledged_before) > 0


def uploaded_pgs(cluster: LocalCluster, node: str) -> int:
    """How many PGs the node uploads now (its backup_uploader gauges)."""
    samples = metrics.parse(asyncio.run(rpc.metrics_text(cluster.node(node).address, 5.0)))
    return int(
        sum(
            value
            for key, value in samples.items()
            if key.startswith("borealis_storage_backup_uploader{")
        )
    )


@pytest.fixture
def clusters() -> Iterator[list[LocalCluster]]:
    started: list[LocalCluster] = []
    try:
        yield started
    finally:
        for cluster in started:
            cluster.stop(immediate=True)
    unexpected = [
        f"{node.name}: {line}"
        for cluster in started
        if cluster.data_dir.exists()
        for node in cluster.storage_nodes
        for line in node.error_lines()
    ]
    assert not unexpected, "unexpected ERROR lines:\n" + "\n".join(unexpected)


def test_restore_to_a_time_from_the_local_store(
    tmp_path: Path,
    port_allocator: PortAllocator,
    clusters: list[LocalCluster],
    capsys: pytest.CaptureFixture[str],
) -> None:
    master_key = tmp_path / "kms" / "master.key"
    kms.create_master_key_file(master_key)
    store_url = f"file://{tmp_path / 'backup'}"
    original = start_cluster(
        tmp_path / "original",
        port_allocator,
        clusters,
        storage={"backup_store_url": store_url, "backup_cluster_id": "orig"},
        kms_url=kms.LOCAL_SCHEME + str(master_key),
    )
    run = write_under_load(original, load_s=6.0)
    wait_backed_up(store_url, "orig-1", run.target_time_s + 1.0, None)
    assert main(["backup", "status", "--json", "--data-dir", str(original.data_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["store_url"] == store_url and status["volume"] == "orig-1"
    assert status["latest_restorable_time_us"] > run.target_time_s * US_PER_S
    assert 0 <= status["backup_lag_s"] < 10
    run.bank.stop()
    run.hwm.stop()
    assert not run.hwm.errors, run.hwm.errors
    original.stop(immediate=True)
    shutil.rmtree(original.data_dir)

    result = restore_cluster(
        store_url,
        tmp_path / "restored",
        Target(time_us=int(run.target_time_s * US_PER_S)),
        ports=port_allocator,
        storage_overrides=FAST_STORAGE,
    )
    clusters.append(result.cluster)
    assert result.plan.commit_time_us <= run.target_time_s * US_PER_S
    # Image sets were taken every 2 s: some PG starts from one (the hydration path).
    assert result.pages > 0 and result.pgs > 1, result
    assert result.plan.manifest.kms_url  # the backup was encrypted
    result.cluster.start()
    check_restored(result.cluster, run)
    # An encrypted backup seals every chunk and image: no schema text in any object.
    objects = [*(tmp_path / "backup").rglob("*.chunk"), *(tmp_path / "backup").rglob("*.images")]
    assert objects and not any(b"CREATE TABLE" in path.read_bytes() for path in objects)


def test_restore_refuses_bad_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = f"file://{tmp_path / 'empty'}"
    with pytest.raises(NotFound):
        restore_cluster(empty, tmp_path / "r1", Target(latest=True))
    with pytest.raises(InvalidRequest):
        Target(latest=True, lsn=5)
    with pytest.raises(InvalidRequest):
        object_store_from_url("ftp://nowhere")
    assert not (tmp_path / "r1" / "cluster.json").exists()
    # The CLI: a clear message and exit status 1, no cluster.
    for target in (["--latest"], ["--to-time", "2026-11-28T17:00:00"]):
        status = main(["restore", "--from", empty, *target, "--data-dir", str(tmp_path / "r2")])
        assert status == 1
    assert "needs a zone" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "cluster.json").exists()


@pytest.fixture
def s3_endpoint(port_allocator: PortAllocator, tmp_path: Path) -> Iterator[str]:
    with moto_server(port_allocator.allocate(), tmp_path / "moto.log") as endpoint:
        yield endpoint


def test_s3_object_store(s3_endpoint: str) -> None:
    store = S3ObjectStore("objects", "some/prefix", s3_endpoint)
    store.ensure_bucket()
    store.put("a/1", b"one")
    store.put("a/2", b"two")
    store.put("b/1", b"three")
    assert store.get("a/2") == b"two"
    assert store.list("a/") == ["a/1", "a/2"]
    store.delete(["a/1", "a/never"])
    assert store.list("") == ["a/2", "b/1"]
    with pytest.raises(NotFound):
        store.get("a/1")
    unreachable = S3ObjectStore("objects", "", "http://127.0.0.1:9")
    with pytest.raises(Unavailable):
        unreachable.get("a/2")


def test_restore_to_a_time_from_s3(
    tmp_path: Path, port_allocator: PortAllocator, clusters: list[LocalCluster], s3_endpoint: str
) -> None:
    store_url = "s3://backups/borealis"
    S3ObjectStore("backups", "borealis", s3_endpoint).ensure_bucket()
    original = start_cluster(
        tmp_path / "original",
        port_allocator,
        clusters,
        storage={
            "backup_store_url": store_url,
            "backup_endpoint_url": s3_endpoint,
            "backup_cluster_id": "s3orig",
        },
        encryption=False,
    )
    # s1, first by name, uploads every PG; killed, s2 takes over.
    run = write_under_load(original, load_s=6.0, meanwhile=original.node("s1").kill)
    wait_backed_up(store_url, "s3orig-1", run.target_time_s + 1.0, s3_endpoint)
    assert uploaded_pgs(original, "s2") >= 1
    run.bank.stop()
    run.hwm.stop()
    original.stop(immediate=True)
    shutil.rmtree(original.data_dir)

    result = restore_cluster(
        store_url,
        tmp_path / "restored",
        Target(time_us=int(run.target_time_s * US_PER_S)),
        endpoint_url=s3_endpoint,
        ports=port_allocator,
        storage_overrides=FAST_STORAGE,
    )
    clusters.append(result.cluster)
    result.cluster.start()
    check_restored(result.cluster, run)


async def gc_pass_and_counts(address: str) -> tuple[float, float, float]:
    """One GC pass now; then (records deleted by GC, backup failures, the node's
    highest segment PGMRPL)."""
    client = StorageClient(address, timeout_s=10.0)
    try:
        await client.run_task("gc")
        text = await client.metrics()
        pgmrpl = max(meta.pgmrpl for meta in await client.list_segments())
    finally:
        await client.close()
    return (
        metric_value(text, "gc_records_deleted_total"),
        metric_value(text, "backup_failures_total"),
        pgmrpl,
    )


def test_gc_keeps_what_the_backup_does_not_hold(
    tmp_path: Path, port_allocator: PortAllocator, clusters: list[LocalCluster]
) -> None:
    """With the object store unreachable, nothing is backed up, so storage GC deletes
    nothing, however far the PGMRPL moves."""
    cluster = start_cluster(
        tmp_path / "cluster",
        port_allocator,
        clusters,
        storage={
            "backup_store_url": "s3://nowhere/backup",
            "backup_endpoint_url": "http://127.0.0.1:9",
            "backup_cluster_id": "gc",
        },
        encryption=False,
    )
    with connect_to(cluster)() as connection:
        connection.execute("CREATE TABLE t (id integer PRIMARY KEY, value integer)")
        connection.execute("INSERT INTO t VALUES (1, 0)")
        for value in range(200):  # 200 versions of the same page: garbage below PGMRPL
            connection.execute("UPDATE t SET value = %s WHERE id = 1", (value,))
    s1 = cluster.node("s1").address

    def pgmrpl_moved_and_upload_failed() -> bool:
        _, failures, pgmrpl = asyncio.run(gc_pass_and_counts(s1))
        return failures > 0 and pgmrpl > 0

    wait_until(pgmrpl_moved_and_upload_failed, 30, 0.2, "PGMRPL to move and an upload to fail")
    deleted, _, _ = asyncio.run(gc_pass_and_counts(s1))
    assert deleted == 0


@pytest.mark.slow
def test_retention_keeps_only_what_restores_in_the_window_need(
    tmp_path: Path, port_allocator: PortAllocator, clusters: list[LocalCluster]
) -> None:
    """Retention of 3 s with image sets every second: old objects go while the load
    runs, a time before the window is refused, the latest point still restores."""
    store_url = f"file://{tmp_path / 'backup'}"
    cluster = start_cluster(
        tmp_path / "original",
        port_allocator,
        clusters,
        storage={
            "backup_store_url": store_url,
            "backup_cluster_id": "ret",
            "backup_image_interval_s": 1.0,
            "backup_retention_days": 3 / 86_400,
        },
        encryption=False,
    )
    run = write_under_load(cluster, load_s=8.0)
    wait_until(
        lambda: asyncio.run(deleted_objects(cluster.node("s1").address)) > 0,
        20,
        0.2,
        "retention to delete old objects",
    )
    run.bank.stop()
    run.hwm.stop()
    last_value = run.hwm.commits[-1][0]
    early_time_s = run.hwm.commits[0][2]
    with connect_to(cluster)() as connection:
        final_s = time.time()
        connection.execute("INSERT INTO hwm VALUES (2, 0)")  # a commit after the load
    wait_backed_up(store_url, "ret-1", final_s, None)
    cluster.stop(immediate=True)

    with pytest.raises(NotFound):
        restore_cluster(store_url, tmp_path / "early", Target(time_us=int(early_time_s * US_PER_S)))
    result = restore_cluster(
        store_url,
        tmp_path / "restored",
        Target(latest=True),
        ports=port_allocator,
        storage_overrides=FAST_STORAGE,
    )
    clusters.append(result.cluster)
    assert result.pages > 0  # every PG starts from an image set now
    result.cluster.start()
    with connect_to(result.cluster)() as connection:
        rows = connection.execute("SELECT id, value FROM hwm ORDER BY id").fetchall()
        assert rows == [(1, last_value), (2, 0)]
        state = read_bank(connection)
        assert integrity_check(connection) == ["ok"]
    assert not bank_violations(state, run.bank.acknowledged())


async def deleted_objects(address: str) -> float:
    client = StorageClient(address, timeout_s=10.0)
    try:
        return metric_value(await client.metrics(), "backup_objects_deleted_total")
    finally:
        await client.close()
