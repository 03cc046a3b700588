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

3. Clone against restore: on the same cluster, once the backup holds its newest
   commit (and, waited for up to IMAGES_WAIT_S, image sets cover the volume: the
   cluster takes one every IMAGE_INTERVAL_S), `clone_cluster` (copy-on-write: the
   clone reads the parent's page images from the store, none are written) against
   `clone_cluster(copy_images=True)` (a full copy of the same point, what a
   restore writes). `clone_s`, `clone_full_copy_s`, the allocated bytes of each
   new data directory's LMDB files (`clone_bytes_on_disk`,
   `full_copy_bytes_on_disk`) and the ratios, also against `restore_s`. Both are
   configured, not started, and removed with the run's directory.
4. TPC-B with encryption on against off, in the same run: a cluster with
   `encryption=True`, then one with `encryption=False` (one after the other,
   never together), each `pgbench -i -s 1` then `pgbench -n -M prepared -c 4 -j 2
   -T 20` (quick: -T 5) on the writer's PostgreSQL port, the pair alternated
   TPCB_ROUNDS times and the best run of each kept (the machine is shared).
   `encryption_cost` = 1 - encrypted tps / plain tps; target under 10%. A failed
   transaction fails the benchmark.

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
from bench.pgbench_compare import endpoint_of_cluster, parse_pgbench, pgbench  # noqa: E402
from borealis import backup_format as layout  # noqa: E402
from borealis.errors import NotFound, Unavailable  # noqa: E402
from borealis.wait import wait_until  # noqa: E402
from control_plane.clone import clone_cluster  # noqa: E402
from control_plane.restore import (  # noqa: E402
    BackupReader,
    Target,
    backup_status,
    restore_cluster,
)
from control_plane.snapshots import backup_location, wait_backup_covers, writer_vdl  # noqa: E402
from deploy.local import LocalCluster  # noqa: E402
from deploy.ports import PortAllocator  # noqa: E402

NAME = "backup"
ROW_BYTES = 1000
BULK_ROWS = 1000
SAMPLE_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 10
# Image sets (the volume's pages as of a point) every few seconds, so that a clone
# has images to share (the default, an hour, leaves a short run with none).
IMAGE_INTERVAL_S = 5.0
IMAGES_WAIT_S = 60.0
IMAGES_POLL_S = 0.5
# TPC-B, encryption on against off.
TPCB_SCALE = 1
TPCB_CLIENTS = 4
TPCB_THREADS = 2
TPCB_ROUNDS = 2
TPCB_INIT_TIMEOUT_S = 600.0
TPCB_RUN_MARGIN_S = 120.0
ENCRYPTION_TARGET = 0.10


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


def allocated_bytes(data_dir: Path) -> int:
    """Bytes the storage nodes' segment stores (LMDB files) take on disk (allocated blocks)."""
    return sum(
        path.stat().st_blocks * 512 for path in data_dir.glob("s*/segments/*") if path.is_file()
    )


def wait_images_cover(cluster: LocalCluster) -> bool:
    """Waits (up to IMAGES_WAIT_S) for every PG's newest image set to hold all of its
    records up to the writer's VDL now; False when they do not by then."""
    location = backup_location(cluster.data_dir)
    objects = location.objects()
    lsn = writer_vdl(cluster.data_dir)
    wait_backup_covers(lambda: BackupReader(objects, location.volume_name), lsn)

    def covered() -> bool:
        history = BackupReader(objects, location.volume_name).history()
        newest: dict[int, int] = {}
        for each, (pg, _) in history.entries.items():
            if each <= lsn:
                newest[pg] = max(newest.get(pg, 0), each)
        bases = layout.bases_for(history, lsn)
        return bool(newest) and all(bases.get(pg, 0) >= top for pg, top in newest.items())

    try:
        wait_until(covered, IMAGES_WAIT_S, IMAGES_POLL_S, "image sets to cover the volume")
    except Unavailable:
        return False
    return True


def measure_clone(parent: LocalCluster, root: Path, ports: PortAllocator) -> dict[str, Any]:
    """A copy-on-write clone and a full copy of the same point of `parent` (running);
    neither is started."""
    images_cover = wait_images_cover(parent)
    clone = clone_cluster(parent.data_dir, root / "clone", ports=ports, name="bench-clone")
    clone_bytes = allocated_bytes(clone.cluster.data_dir)
    full = clone_cluster(
        parent.data_dir, root / "full-copy", ports=ports, name="bench-full", copy_images=True
    )
    full_bytes = allocated_bytes(full.cluster.data_dir)
    return {
        "clone_images_cover_volume": images_cover,
        "clone_lsn": clone.plan.lsn,
        "clone_s": round(clone.seconds, 3),
        "clone_full_copy_s": round(full.seconds, 3),
        "clone_page_images_written": clone.pages,
        "full_copy_page_images_written": full.pages,
        "clone_bytes_written": clone.bytes_restored,
        "full_copy_bytes_written": full.bytes_restored,
        "clone_bytes_on_disk": clone_bytes,
        "full_copy_bytes_on_disk": full_bytes,
        "clone_time_ratio": round(clone.seconds / full.seconds, 3),
        "clone_bytes_ratio": round(clone_bytes / full_bytes, 3) if full_bytes else None,
    }


def tpcb_once(directory: Path, ports: PortAllocator, encryption: bool, duration_s: int) -> float:
    """TPC-B tps on a new cluster (encryption on or off), stopped on the way out."""
    cluster = LocalCluster(
        directory,
        ports=ports,
        writer=True,
        encryption=encryption,
        storage_overrides={"log_level": "warning"},
        instance_overrides={"log_level": "warning"},
    )
    try:
        cluster.start()
        endpoint = endpoint_of_cluster(cluster.data_dir)
        pgbench(endpoint, ["-i", "-q", "-s", str(TPCB_SCALE)], TPCB_INIT_TIMEOUT_S)
        arguments = ["-n", "-M", "prepared", "-c", str(TPCB_CLIENTS), "-j", str(TPCB_THREADS)]
        output = pgbench(
            endpoint, [*arguments, "-T", str(duration_s)], duration_s + TPCB_RUN_MARGIN_S
        )
    finally:
        cluster.stop(immediate=True)
        shutil.rmtree(directory, ignore_errors=True)
    result = parse_pgbench(output)
    label = "on" if encryption else "off"
    print(
        f"{NAME}: TPC-B encryption {label}: {result.tps:.1f} tps, "
        f"{result.processed} transactions, {result.failed} failed",
        file=sys.stderr,
        flush=True,
    )
    if result.failed or result.processed == 0:
        raise RuntimeError(
            f"TPC-B with encryption {label}: {result.failed} failed, {result.processed} processed"
        )
    return result.tps


def measure_tpcb(root: Path, ports: PortAllocator, duration_s: int) -> dict[str, Any]:
    """TPC-B with encryption on and off, alternated TPCB_ROUNDS times; the best of each."""
    runs: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(TPCB_ROUNDS):
        for encryption in (True, False):
            directory = root / f"tpcb-{round_}-{'on' if encryption else 'off'}"
            runs[encryption].append(tpcb_once(directory, ports, encryption, duration_s))
    encrypted, plain = max(runs[True]), max(runs[False])
    cost = 1 - encrypted / plain
    return {
        "tpcb_scale": TPCB_SCALE,
        "tpcb_clients": TPCB_CLIENTS,
        "tpcb_duration_s": duration_s,
        "tpcb_encrypted_runs_tps": [round(each, 1) for each in runs[True]],
        "tpcb_plain_runs_tps": [round(each, 1) for each in runs[False]],
        "tpcb_encrypted_tps": round(encrypted, 1),
        "tpcb_plain_tps": round(plain, 1),
        "tpcb_failed": 0,
        "encryption_cost": round(cost, 4),
        "encryption_target_met": cost < ENCRYPTION_TARGET,
    }


def run(quick: bool) -> dict[str, Any]:
    clients, load_s, volume_mb = (2, 10.0, 5) if quick else (4, 30.0, 50)
    tpcb_duration_s = 5 if quick else 20
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
            "backup_image_interval_s": IMAGE_INTERVAL_S,
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
        # Not running while the clones are timed: they would share its CPU.
        restored.stop(immediate=True)
        restored = None
        clone_figures = measure_clone(original, root, ports)
        original.stop(immediate=True)
        tpcb_figures = measure_tpcb(root, ports, tpcb_duration_s)
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
        **clone_figures,
        "clone_vs_restore_time_ratio": round(clone_figures["clone_s"] / restore_s, 3),
        **tpcb_figures,
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
        report.record(f"{NAME}_clone_time", summary["clone_s"], "s", False),
        report.record(f"{NAME}_clone_full_copy_time", summary["clone_full_copy_s"], "s", False),
        report.record(
            f"{NAME}_clone_bytes_on_disk", summary["clone_bytes_on_disk"], "bytes", False
        ),
        report.record(
            f"{NAME}_full_copy_bytes_on_disk", summary["full_copy_bytes_on_disk"], "bytes", False
        ),
        report.record(f"{NAME}_clone_time_ratio", summary["clone_time_ratio"], "ratio", False),
        report.record(f"{NAME}_clone_bytes_ratio", summary["clone_bytes_ratio"], "ratio", False),
        report.record(
            f"{NAME}_clone_vs_restore_time_ratio",
            summary["clone_vs_restore_time_ratio"],
            "ratio",
            False,
        ),
        report.record(f"{NAME}_tpcb_encrypted_tps", summary["tpcb_encrypted_tps"], "tps", True),
        report.record(f"{NAME}_tpcb_plain_tps", summary["tpcb_plain_tps"], "tps", True),
        report.record(f"{NAME}_encryption_cost", summary["encryption_cost"], "fraction", False),
    ]


def write_png(summary: dict[str, Any]) -> None:
    """Replaces report.write's single bar chart with three panels, one unit each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "backup, restore and clone (s)",
            {
                "lag p50": summary["backup_lag_p50_s"] or 0.0,
                "lag p99": summary["backup_lag_p99_s"] or 0.0,
                "restore": summary["restore_s"],
                "full copy": summary["clone_full_copy_s"],
                "clone": summary["clone_s"],
            },
            "%.2f",
        ),
        (
            "new bytes on disk (MiB)",
            {
                "full copy": summary["full_copy_bytes_on_disk"] / 2**20,
                "clone": summary["clone_bytes_on_disk"] / 2**20,
            },
            "%.1f",
        ),
        (
            f"TPC-B (tps), encryption cost {100 * summary['encryption_cost']:.2f}%",
            {"encrypted": summary["tpcb_encrypted_tps"], "plain": summary["tpcb_plain_tps"]},
            "%.0f",
        ),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [5, 2, 2]})
    for axis, (title, values, fmt) in zip(axes, panels, strict=True):
        bars = axis.bar(list(values), list(values.values()), color="#3b6ea5")
        axis.bar_label(bars, fmt=fmt)
        axis.set_title(title, fontsize=10)
    figure.suptitle(f"{NAME} ({summary['cpus']} shared CPUs, {summary['filesystem']})")
    figure.tight_layout()
    figure.savefig(report.RESULTS_DIR / f"{NAME}.png", dpi=100)
    plt.close(figure)


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
    write_png(summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
