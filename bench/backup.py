"""Continuous backup and restore: backup lag under write load, restore throughput.

What it expects: one machine whose cores are shared by everything (six storage
nodes, the writer, the load clients of this process); a local disk under the
temporary directory (its filesystem is printed). The object store is the local
one (file://, on the same disk), so the figures are for the backup pipeline
itself, not for a network to S3.

1. Backup lag: a cluster (encryption on, backup every `backup_interval_ms` =
   1 s, the default) under LOAD_CLIENTS psycopg clients inserting ROW_BYTES rows
   without pause for LOAD_S seconds. Every SAMPLE_INTERVAL_S, `backup status`
   (control_plane/restore.backup_status: it reads the store) gives the latest
   restorable commit time; the lag sample is now minus that time. p50 and p99.
   Target: p99 under 5 s (Aurora: latest restorable time typically within 5
   minutes).
   Before the load, BULK volume_mb of rows (50 MiB; quick: 5) are inserted, so
   that the restore has a stated size to move.
2. Restore: `restore_cluster(--latest)` of that volume into a new directory:
   the time to read the store and write the new storage nodes' LMDB (all six
   copies), the bytes of records and page images restored (the volume's stated
   size), MB/s, and the time until the restored writer answers a query.

Later parts (other helpers; add their records to `records()`): clone time
against restore time (`clone_*`), TPC-B throughput with encryption on and off
in the same run (`tpcb_*`).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench import report  # noqa: E402
from borealis.errors import NotFound  # noqa: E402
from control_plane.restore import Target, backup_status, restore_cluster  # noqa: E402
from deploy.local import LocalCluster  # noqa: E402
from deploy.ports import PortAllocator  # noqa: E402

NAME = "backup"
ROW_BYTES = 1000
BULK_ROWS = 1000
SAMPLE_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 10


def filesystem_of(path: Path) -> str:
    try:
        output = subprocess.run(
            ["df", "-T", str(path)], capture_output=True, text=True, check=True
        ).stdout
        return output.splitlines()[-1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def load(url: str, password: str, stop: threading.Event, counts: list[int], index: int) -> None:
    payload = "x" * ROW_BYTES
    with psycopg.connect(
        url, password=password, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
    ) as connection:
        while not stop.is_set():
            connection.execute(
                "INSERT INTO rows (client, payload) VALUES (%s, %s)", (index, payload)
            )
            counts[index] += 1


def measure_lag(
    cluster: LocalCluster, store_url: str, volume: str, clients: int, load_s: float, volume_mb: int
) -> tuple[list[float], float]:
    url, password = cluster.writer().url(), cluster.password
    with psycopg.connect(url, password=password, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE rows (id integer PRIMARY KEY, client integer, payload text)"
        )
        # The volume's bulk, so the restore has a stated size to move.
        for _ in range(volume_mb * 2**20 // (ROW_BYTES * BULK_ROWS)):
            connection.execute(
                "INSERT INTO rows (client, payload) "
                f"SELECT -1, repeat('y', {ROW_BYTES}) FROM generate_series(1, {BULK_ROWS})"
            )
    stop = threading.Event()
    counts = [0] * clients
    threads = [
        threading.Thread(target=load, args=(url, password, stop, counts, index), daemon=True)
        for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    samples: list[float] = []
    started_s = time.monotonic()
    while time.monotonic() - started_s < load_s:
        time.sleep(SAMPLE_INTERVAL_S)  # the sampling period itself, not a wait for a state
        try:
            status = backup_status(store_url, volume)
        except NotFound:
            continue  # nothing uploaded yet
        if status["latest_restorable_time_us"] and time.monotonic() - started_s > 2.0:
            samples.append(time.time() - status["latest_restorable_time_us"] / 1e6)
    stop.set()
    for thread in threads:
        thread.join(30)
    return samples, sum(counts) / load_s


def run(quick: bool) -> dict[str, Any]:
    clients, load_s, volume_mb = (2, 10.0, 5) if quick else (4, 30.0, 50)
    root = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    ports = PortAllocator()
    store_url = f"file://{root / 'backup'}"
    original = LocalCluster(
        root / "original",
        ports=ports,
        writer=True,
        storage_overrides={
            "backup_store_url": store_url,
            "backup_cluster_id": "bench",
            "lmdb_map_size_bytes": 2**32,
        },
    )
    restored: LocalCluster | None = None
    try:
        original.start()
        samples, commits_per_s = measure_lag(
            original, store_url, "bench-1", clients, load_s, volume_mb
        )
        status = backup_status(store_url, "bench-1")
        started_s = time.monotonic()
        result = restore_cluster(store_url, root / "restored", Target(latest=True), ports=ports)
        restore_s = time.monotonic() - started_s
        restored = result.cluster
        restored.start()
        started_cluster_s = time.monotonic() - started_s
        with psycopg.connect(
            restored.writer().url(), password=restored.password, autocommit=True
        ) as connection:
            # An index lookup, not a scan: the time to serve, not to read the table.
            rows = connection.execute("SELECT max(id) FROM rows").fetchone()[0]
        ready_s = time.monotonic() - started_s
    finally:
        original.stop(immediate=True)
        if restored is not None:
            restored.stop(immediate=True)
        filesystem = filesystem_of(root)
        shutil.rmtree(root, ignore_errors=True)
    summary = {
        "filesystem": filesystem,
        "cpus": os.cpu_count(),
        "clients": clients,
        "load_s": load_s,
        "bulk_loaded_mb": volume_mb,
        "commits_per_s": round(commits_per_s, 1),
        "lag_samples": len(samples),
        "backup_lag_p50_s": round(percentile(samples, 0.5), 3) if samples else None,
        "backup_lag_p99_s": round(percentile(samples, 0.99), 3) if samples else None,
        "backup_lag_mean_s": round(statistics.fmean(samples), 3) if samples else None,
        "records_indexed": status["records_indexed"],
        "restored_lsn": result.plan.lsn,
        "restored_max_row_id": rows,
        "restored_pgs": result.pgs,
        "restored_bytes": result.bytes_restored,
        "restore_s": round(restore_s, 3),
        "restore_mb_per_s": round(result.bytes_restored / 2**20 / restore_s, 2),
        # Every PG is written to all six storage nodes' LMDB.
        "restore_written_mb_per_s": round(6 * result.bytes_restored / 2**20 / restore_s, 2),
        "restore_to_cluster_serving_s": round(started_cluster_s, 3),
        "restore_to_first_query_s": round(ready_s, 3),
    }
    return summary


def records(summary: dict[str, Any]) -> list[dict[str, object]]:
    return [
        report.record(f"{NAME}_lag_p50", summary["backup_lag_p50_s"], "s", False),
        report.record(f"{NAME}_lag_p99", summary["backup_lag_p99_s"], "s", False),
        report.record(f"{NAME}_restore_throughput", summary["restore_mb_per_s"], "MB/s", True),
        report.record(f"{NAME}_restore_time", summary["restore_s"], "s", False),
        report.record(f"{NAME}_restored_bytes", summary["restored_bytes"], "bytes", True),
        report.record(
            f"{NAME}_restore_to_first_query", summary["restore_to_first_query_s"], "s", False
        ),
        # Clone time against restore time and TPC-B with encryption on and off go here.
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 clients, 10 s of load")
    args = parser.parse_args()
    summary = run(args.quick)
    chart = {
        "lag p50 (s)": summary["backup_lag_p50_s"] or 0.0,
        "lag p99 (s)": summary["backup_lag_p99_s"] or 0.0,
        "restore (s)": summary["restore_s"],
        "restore MB/s": summary["restore_mb_per_s"],
    }
    report.write(NAME, records(summary), chart, "s or MB/s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
