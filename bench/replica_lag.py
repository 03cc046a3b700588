"""Replica lag at fixed writer rates, and select-only throughput through the reader endpoint.

What it expects: one machine whose cores are shared by everything - six storage
nodes, the writer w1, the readers r1 and r2, the router, pgbench, this process
(the paced writer) and one polling process per reader. Every figure is therefore
a loaded-laptop figure, not a cluster's: the pollers and pgbench take CPU the
instances would otherwise have. A local disk under the temporary directory (its
filesystem is printed; on tmpfs an fsync costs nothing). The cluster is started
here with deploy/local.py (`LocalCluster(writer=True, readers=2, router=True)`).

Lag, measured end to end. A paced writer (asyncio, psycopg AsyncConnection, a
few connections through the router's writer endpoint) commits single-row INSERTs
into `lag_probe` at a target rate; each row's id is chosen by the writer, which
notes the wall-clock moment each commit is acknowledged. One process per reader
polls the reader's own endpoint (not the router) with a prepared
`SELECT id, clock_timestamp() FROM lag_probe WHERE id > $1` about every
millisecond. A row's lag on a reader lies between two bounds: the lower one is
when the previous poll (which did not see it) was sent, the upper one is the
reader's clock when it returned the row (after that statement's snapshot; SQLite's
clock has millisecond resolution, added to the bound). The upper bound is the
headline figure; `lag_received` (when the answer reached the poller) shows what a
client polling over the same connection would see. Both ends read this host's
wall clock. A row the reader shows before the writer's client got its
acknowledgement counts as 0 (`negative_fraction` counts those). Quick: 100 and
300 writes/s; full: 200, 1000, and unpaced (the highest rate the writer sustains
with 32 connections). Achieved write rates are reported: a target the writer
cannot reach is reported at the rate it reached.

The readers' own lag metrics are sampled every 100 ms during each run (Admin
GetMetrics): `replica_apply_delay_ms` (writer engine commit to reader apply of
the last group; it includes the writer's own 4/6 durability round, which the
client's acknowledgement also waits for, so it runs higher than the end-to-end
figure) and `replica_lag_ms` (the age of the oldest group received but not yet
applied: 0 whenever the reader is caught up, a backlog gauge, not a latency).

Throughput: pgbench -S -M prepared -c 4 -j 2 (quick -T 5, full -T 20) after
`pgbench -i -s 1` on the writer endpoint, once both readers see every account:
through the router's reader endpoint with two readers; then r2 is removed and
the router's reader endpoint (one reader) and r1's own endpoint run alternately,
twice each: router overhead = 1 - mean router tps / mean direct tps.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench import report  # noqa: E402
from bench.pgbench_compare import Endpoint, filesystem_of, parse_pgbench, pgbench  # noqa: E402
from borealis import metrics, rpc  # noqa: E402
from borealis.wait import wait_until  # noqa: E402
from deploy.local import LocalCluster, read_cluster_file  # noqa: E402
from deploy.ports import PortAllocator  # noqa: E402

NAME = "replica_lag"
READERS = ("r1", "r2")
SCHEMA = "CREATE TABLE lag_probe (id BIGINT PRIMARY KEY, payload TEXT NOT NULL)"
INSERT = "INSERT INTO lag_probe (id, payload) VALUES (%s, %s)"
# clock_timestamp() is the reader's wall clock when SQLite evaluates the row, after
# the statement's snapshot was taken (millisecond resolution: SQLite's 'now').
POLL = "SELECT id, clock_timestamp() FROM lag_probe WHERE id > %s"
CLOCK_RESOLUTION_S = 0.001
PAYLOAD = "x" * 100
# One writer connection per this many writes/s of target (a commit takes some
# tens of ms on this machine), within bounds.
WRITES_PER_CONNECTION = 25
CONNECTIONS_MIN = 4
CONNECTIONS_MAX = 32
POLL_PERIOD_S = 0.001
METRICS_PERIOD_S = 0.1
METRICS_TIMEOUT_S = 1.0
# After the writer stops, how long the pollers may take to see its last rows.
DRAIN_TIMEOUT_S = 15.0
POLLER_START_TIMEOUT_S = 30.0
VISIBLE_TIMEOUT_S = 60.0
ROUTER_TOPOLOGY_TIMEOUT_S = 30.0
PGBENCH_CLIENTS = 4
PGBENCH_THREADS = 2
# Router and direct select-only runs, alternating, for the router overhead.
OVERHEAD_PAIRS = 2
PGBENCH_ACCOUNTS_PER_SCALE = 100_000
INIT_TIMEOUT_S = 600.0
RUN_MARGIN_S = 120.0
# Full runs' target rates; None is unpaced (the highest rate the writer sustains).
RATES_FULL: tuple[int | None, ...] = (200, 1000, None)
RATES_QUICK: tuple[int | None, ...] = (100, 300)


# --- the cluster's endpoints -----------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """What the benchmark needs from cluster.json."""

    writer: str
    reader: str
    instances: dict[str, str]
    addresses: dict[str, str]
    password: str

    def endpoint(self, url: str) -> Endpoint:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"bad endpoint {url}"
        return Endpoint(
            parts.hostname,
            parts.port,
            unquote(parts.username or ""),
            self.password,
            unquote(parts.path.lstrip("/")),
        )


def cluster_of(data_dir: Path) -> Cluster:
    document = read_cluster_file(data_dir)
    password = os.environ.get("PGPASSWORD")
    if password is None:
        password = Path(document["password_file"]).read_text().split("\n", 1)[0]
    endpoints = document["endpoints"]
    return Cluster(
        writer=endpoints["writer"],
        reader=endpoints["reader"],
        instances=dict(endpoints["instances"]),
        addresses={entry["name"]: entry["address"] for entry in document["instances"]},
        password=password,
    )


# --- the pollers (one process per reader) -----------------------------------------------


def poll_reader(
    url: str,
    password: str,
    id_first: int,
    id_last: Synchronized[int],
    stop: multiprocessing.synchronize.Event,
    ready: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Polls one reader until it saw every id up to `id_last` (0 while the writer
    runs) or `stop`; puts {seen: {id: (lower, upper, received)}, polls, elapsed_s}
    on `results`, all wall-clock seconds.

    The row became visible after `lower`, when the poll before the one that first
    returned it was sent (that poll's snapshot did not have it), and before `upper`,
    the reader's clock when it produced the row (rounded up to the clock's
    resolution; never after `received`, when the poll's answer arrived here).
    """
    seen: dict[int, tuple[float, float, float]] = {}
    polls = 0
    with psycopg.connect(url, password=password, autocommit=True) as connection:
        watermark = id_first - 1
        connection.execute(POLL, (watermark,), prepare=True).fetchall()
        ready.set()
        started = sent_before = time.time()
        while not stop.is_set():
            sent = time.time()
            rows = connection.execute(POLL, (watermark,), prepare=True).fetchall()
            received = time.time()
            polls += 1
            for row_id, produced in rows:
                upper = min(received, produced.timestamp() + CLOCK_RESOLUTION_S)
                seen.setdefault(row_id, (sent_before, upper, received))
            while watermark + 1 in seen:
                watermark += 1
            sent_before = sent
            last = id_last.value
            if last and watermark >= last:
                break
            pause_s = sent + POLL_PERIOD_S - time.time()
            if pause_s > 0:
                time.sleep(pause_s)
        elapsed_s = time.time() - started
    results.put({"seen": seen, "polls": polls, "elapsed_s": elapsed_s})


# --- the paced writer ------------------------------------------------------------------


@dataclass
class WriteResult:
    acknowledged: dict[int, float]
    elapsed_s: float
    connections: int
    commit_ms: list[float] = field(default_factory=list)


async def write_paced(
    url: str, password: str, rate: int | None, duration_s: float, id_first: int, connections: int
) -> WriteResult:
    """Commits single-row INSERTs (ids from `id_first`) at `rate` per second (None:
    as fast as `connections` connections go) for `duration_s`.

    Each connection takes the next id when it is free, and waits for that id's due
    time; a connection that is late sends at once, so a rate the writer cannot
    reach shows as a lower achieved rate, never as a queue that grows.
    """
    sessions = [
        await psycopg.AsyncConnection.connect(url, password=password, autocommit=True)
        for _ in range(connections)
    ]
    acknowledged: dict[int, float] = {}
    commit_ms: list[float] = []
    next_index = 0
    started = time.monotonic()
    end = started + duration_s

    async def loop(session: psycopg.AsyncConnection[Any]) -> None:
        nonlocal next_index
        while True:
            index = next_index
            due = started + (index / rate if rate else 0.0)
            if due >= end or time.monotonic() >= end:
                return
            next_index += 1
            pause_s = due - time.monotonic()
            if pause_s > 0:
                await asyncio.sleep(pause_s)
            sent = time.monotonic()
            await session.execute(INSERT, (id_first + index, PAYLOAD), prepare=True)
            done = time.monotonic()
            # Wall clock, as the pollers' reader clock is (the same host clock).
            acknowledged[id_first + index] = time.time()
            commit_ms.append((done - sent) * 1000)

    try:
        await asyncio.gather(*(loop(session) for session in sessions))
    finally:
        for session in sessions:
            await session.close()
    return WriteResult(acknowledged, time.monotonic() - started, connections, commit_ms)


async def sample_metrics(
    addresses: dict[str, str], stop: asyncio.Event
) -> dict[str, dict[str, list[float]]]:
    """Every METRICS_PERIOD_S, each reader's lag gauges, until `stop`."""
    names = ("replica_apply_delay_ms", "replica_lag_ms", "replica_lag_lsns")
    samples: dict[str, dict[str, list[float]]] = {
        reader: {name: [] for name in names} for reader in addresses
    }
    while not stop.is_set():
        for reader, address in addresses.items():
            try:
                text = await rpc.metrics_text(address, METRICS_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - a missed sample, reported below
                print(f"  metrics of {reader} unreadable: {error!r}", flush=True)
                continue
            parsed = metrics.parse(text)
            for name in names:
                value = parsed.get(f"borealis_instance_{name}")
                if value is not None:
                    samples[reader][name].append(value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METRICS_PERIOD_S)
    return samples


# --- one lag run ------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


def connections_for(rate: int | None) -> int:
    if rate is None:
        return CONNECTIONS_MAX
    return min(CONNECTIONS_MAX, max(CONNECTIONS_MIN, math.ceil(rate / WRITES_PER_CONNECTION)))


def run_lag(cluster: Cluster, rate: int | None, duration_s: float, id_first: int) -> dict[str, Any]:
    """One rate: the pollers, the writer and the metric sampler together; the figures."""
    context = multiprocessing.get_context("spawn")
    id_last = context.Value("q", 0)
    stop, results = context.Event(), context.Queue()
    pollers = []
    for reader in READERS:
        ready = context.Event()
        process = context.Process(
            target=poll_reader,
            args=(
                cluster.instances[reader],
                cluster.password,
                id_first,
                id_last,
                stop,
                ready,
                results,
            ),
            daemon=True,
        )
        process.start()
        pollers.append((reader, process, ready))
    try:
        for reader, _process, ready in pollers:
            if not ready.wait(POLLER_START_TIMEOUT_S):
                raise RuntimeError(f"the poller of {reader} did not start")
        write, samples = asyncio.run(_write_and_sample(cluster, rate, duration_s, id_first))
        id_last.value = max(write.acknowledged)
        seen_by_reader = _collect(pollers, results, stop)
    finally:
        stop.set()
        for _, process, _ in pollers:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
    return _lag_figures(rate, write, seen_by_reader, samples)


async def _write_and_sample(
    cluster: Cluster, rate: int | None, duration_s: float, id_first: int
) -> tuple[WriteResult, dict[str, dict[str, list[float]]]]:
    stop = asyncio.Event()
    readers = {reader: cluster.addresses[reader] for reader in READERS}
    sampler = asyncio.ensure_future(sample_metrics(readers, stop))
    try:
        write = await write_paced(
            cluster.writer, cluster.password, rate, duration_s, id_first, connections_for(rate)
        )
    finally:
        stop.set()
    return write, await sampler


def _collect(
    pollers: list[tuple[str, Any, Any]],
    results: multiprocessing.Queue[dict[str, Any]],
    stop: multiprocessing.synchronize.Event,
) -> list[dict[str, Any]]:
    """Each poller's result once it saw the last id (or DRAIN_TIMEOUT_S passed)."""
    collected: list[dict[str, Any]] = []
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while len(collected) < len(pollers):
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            stop.set()  # the stragglers report what they saw so far
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            remaining_s = DRAIN_TIMEOUT_S
        try:
            collected.append(results.get(timeout=min(remaining_s, 1.0)))
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting until the deadline
            if not any(process.is_alive() for _, process, _ in pollers) and results.empty():
                raise RuntimeError("a poller died without reporting") from None
    return collected


def _lag_figures(
    rate: int | None,
    write: WriteResult,
    seen_by_reader: list[dict[str, Any]],
    samples: dict[str, dict[str, list[float]]],
) -> dict[str, Any]:
    lags_ms: list[float] = []
    lower_ms: list[float] = []
    received_ms: list[float] = []
    missing = 0
    poll_round_ms: list[float] = []
    for result in seen_by_reader:
        seen = result["seen"]
        poll_round_ms.append(result["elapsed_s"] * 1000 / max(1, result["polls"]))
        for row_id, acknowledged in write.acknowledged.items():
            bounds = seen.get(row_id)
            if bounds is None:
                missing += 1
                continue
            lags_ms.append((bounds[1] - acknowledged) * 1000)
            lower_ms.append(max(0.0, (bounds[0] - acknowledged) * 1000))
            received_ms.append(max(0.0, (bounds[2] - acknowledged) * 1000))
    apply_delay = [v for reader in samples.values() for v in reader["replica_apply_delay_ms"]]
    lag_gauge = [v for reader in samples.values() for v in reader["replica_lag_ms"]]
    lag_lsns = [v for reader in samples.values() for v in reader["replica_lag_lsns"]]
    clamped = [max(0.0, lag) for lag in lags_ms]
    return {
        "target_per_s": rate,
        "achieved_per_s": len(write.acknowledged) / write.elapsed_s,
        "writes": len(write.acknowledged),
        "connections": write.connections,
        "commit_p50_ms": percentile(write.commit_ms, 0.5),
        "commit_p99_ms": percentile(write.commit_ms, 0.99),
        "lag_p50_ms": percentile(clamped, 0.5),
        "lag_p99_ms": percentile(clamped, 0.99),
        "lag_max_ms": max(clamped, default=math.nan),
        "lag_mean_ms": statistics.fmean(clamped) if clamped else math.nan,
        "lag_lower_p50_ms": percentile(lower_ms, 0.5),
        "lag_lower_p99_ms": percentile(lower_ms, 0.99),
        "lag_received_p99_ms": percentile(received_ms, 0.99),
        "negative_fraction": sum(lag < 0 for lag in lags_ms) / max(1, len(lags_ms)),
        "rows_never_seen": missing,
        "poll_round_ms": statistics.fmean(poll_round_ms) if poll_round_ms else math.nan,
        "apply_delay_p50_ms": percentile(apply_delay, 0.5),
        "apply_delay_p99_ms": percentile(apply_delay, 0.99),
        "lag_gauge_max_ms": max(lag_gauge, default=math.nan),
        "lag_lsns_max": max(lag_lsns, default=math.nan),
        "metric_samples": len(apply_delay),
    }


# --- select-only throughput -------------------------------------------------------------


def select_only(endpoint: Endpoint, duration_s: int) -> tuple[float, int]:
    """pgbench -S -M prepared; (tps, failed transactions)."""
    arguments = ["-S", "-M", "prepared", "-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_THREADS)]
    output = pgbench(endpoint, [*arguments, "-T", str(duration_s)], duration_s + RUN_MARGIN_S)
    result = parse_pgbench(output)
    return result.tps, result.failed


def wait_accounts_visible(cluster: Cluster, readers: tuple[str, ...], scale: int) -> None:
    """Until every reader's own endpoint sees all of pgbench's accounts."""
    expected = scale * PGBENCH_ACCOUNTS_PER_SCALE
    for reader in readers:

        def visible(url: str = cluster.instances[reader]) -> bool:
            with psycopg.connect(url, password=cluster.password, autocommit=True) as connection:
                row = connection.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
            return row is not None and row[0] == expected

        wait_until(visible, VISIBLE_TIMEOUT_S, 0.1, f"{reader} to see the pgbench tables")


def wait_router_forgets(router_address: str, instance: str) -> None:
    """Until the router no longer counts `instance` as a healthy backend."""

    def forgotten() -> bool:
        parsed = metrics.parse(asyncio.run(rpc.metrics_text(router_address, METRICS_TIMEOUT_S)))
        return not any(
            "instance_healthy" in key and f'instance="{instance}"' in key and value > 0
            for key, value in parsed.items()
        )

    wait_until(forgotten, ROUTER_TOPOLOGY_TIMEOUT_S, 0.1, f"the router to drop {instance}")


def run_throughput(local: LocalCluster, cluster: Cluster, duration_s: int) -> dict[str, float]:
    scale = 1
    started = time.monotonic()
    pgbench(cluster.endpoint(cluster.writer), ["-i", "-q", "-s", str(scale)], INIT_TIMEOUT_S)
    print(
        f"pgbench -i -s {scale} on the writer endpoint: {time.monotonic() - started:.1f}s",
        flush=True,
    )
    wait_accounts_visible(cluster, READERS, scale)
    figures: dict[str, float] = {}
    tps, failed = select_only(cluster.endpoint(cluster.reader), duration_s)
    print(f"select-only via the router, 2 readers: {tps:.0f} tps, {failed} failed", flush=True)
    figures["select_router_2_readers_tps"], figures["select_router_2_readers_failed"] = tps, failed
    local.remove_instance("r2")
    assert local.router is not None
    wait_router_forgets(local.router.address, "r2")
    # Router and direct runs alternate, so load from outside this benchmark (the
    # machine is shared) falls on both alike; each figure is the mean of its runs.
    paths = {
        "select_router_1_reader": cluster.endpoint(cluster.reader),
        "select_direct_r1": cluster.endpoint(cluster.instances["r1"]),
    }
    runs: dict[str, list[tuple[float, int]]] = {key: [] for key in paths}
    for _ in range(OVERHEAD_PAIRS):
        for key, endpoint in paths.items():
            tps, failed = select_only(endpoint, duration_s)
            print(f"{key}: {tps:.0f} tps, {failed} failed", flush=True)
            runs[key].append((tps, failed))
    for key, results in runs.items():
        figures[f"{key}_tps"] = statistics.fmean(tps for tps, _ in results)
        figures[f"{key}_failed"] = sum(failed for _, failed in results)
        figures[f"{key}_tps_spread"] = max(t for t, _ in results) - min(t for t, _ in results)
    return figures


# --- the run ----------------------------------------------------------------------------


def run(work: Path, rates: tuple[int | None, ...], lag_s: float, select_s: int) -> dict[str, Any]:
    local = LocalCluster(
        work / "cluster",
        ports=PortAllocator(),
        writer=True,
        readers=len(READERS),
        router=True,
        storage_overrides={"log_level": "warning"},
        instance_overrides={"log_level": "warning"},
        router_overrides={"log_level": "warning"},
    )
    try:
        local.start()
        cluster = cluster_of(local.data_dir)
        _create_probe_table(cluster)
        runs = []
        id_first = 1
        for rate in rates:
            figures = run_lag(cluster, rate, lag_s, id_first)
            id_first += figures["writes"] + 1
            _print_lag(figures)
            runs.append(figures)
        throughput = run_throughput(local, cluster, select_s)
    finally:
        local.stop()
    return {"lag": runs, "throughput": throughput}


def _create_probe_table(cluster: Cluster) -> None:
    with psycopg.connect(cluster.writer, password=cluster.password, autocommit=True) as writer:
        writer.execute(SCHEMA)
    for reader in READERS:

        def visible(url: str = cluster.instances[reader]) -> bool:
            with psycopg.connect(url, password=cluster.password, autocommit=True) as connection:
                connection.execute("SELECT count(*) FROM lag_probe").fetchall()
            return True

        wait_until(visible, VISIBLE_TIMEOUT_S, 0.05, f"{reader} to see lag_probe")


def _print_lag(figures: dict[str, Any]) -> None:
    target = figures["target_per_s"] or "unpaced"
    print(
        f"target {target} writes/s: achieved {figures['achieved_per_s']:.0f}/s with "
        f"{figures['connections']} connections (commit p50 {figures['commit_p50_ms']:.1f} ms); "
        f"lag p50 {figures['lag_p50_ms']:.1f} ms, p99 {figures['lag_p99_ms']:.1f} ms, "
        f"max {figures['lag_max_ms']:.1f} ms (lower bounds p50 "
        f"{figures['lag_lower_p50_ms']:.1f}, p99 {figures['lag_lower_p99_ms']:.1f}; poll round "
        f"{figures['poll_round_ms']:.2f} ms; {figures['rows_never_seen']} never seen; "
        f"{figures['negative_fraction']:.0%} seen before the ack; answer received p99 "
        f"{figures['lag_received_p99_ms']:.1f} ms); "
        f"apply_delay metric p50 {figures['apply_delay_p50_ms']:.1f} ms, p99 "
        f"{figures['apply_delay_p99_ms']:.1f} ms; lag_ms gauge max "
        f"{figures['lag_gauge_max_ms']:.1f} ms",
        flush=True,
    )


def rate_label(figures: dict[str, Any]) -> str:
    return str(figures["target_per_s"]) if figures["target_per_s"] else "max"


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for figures in result["lag"]:
        label = rate_label(figures)
        for key in (
            "achieved_per_s",
            "lag_p50_ms",
            "lag_p99_ms",
            "lag_max_ms",
            "lag_lower_p99_ms",
            "lag_received_p99_ms",
            "poll_round_ms",
            "apply_delay_p50_ms",
            "apply_delay_p99_ms",
            "commit_p50_ms",
        ):
            summary[f"w{label}_{key}"] = round(figures[key], 2)
        summary[f"w{label}_rows_never_seen"] = figures["rows_never_seen"]
    throughput = result["throughput"]
    for key, value in throughput.items():
        summary[key] = round(value, 1)
    summary["router_overhead"] = round(
        1 - throughput["select_router_1_reader_tps"] / throughput["select_direct_r1_tps"], 3
    )
    summary["reader_scaling_2_over_1"] = round(
        throughput["select_router_2_readers_tps"] / throughput["select_router_1_reader_tps"], 3
    )
    return summary


def records(result: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, object]]:
    rows = []
    for figures in result["lag"]:
        label = rate_label(figures)
        prefix = f"{NAME}_w{label}"
        rows += [
            report.record(
                f"{prefix}_achieved_per_s", summary[f"w{label}_achieved_per_s"], "writes/s", True
            ),
            report.record(f"{prefix}_lag_p50_ms", summary[f"w{label}_lag_p50_ms"], "ms", False),
            report.record(f"{prefix}_lag_p99_ms", summary[f"w{label}_lag_p99_ms"], "ms", False),
            report.record(
                f"{prefix}_apply_delay_p99_ms", summary[f"w{label}_apply_delay_p99_ms"], "ms", False
            ),
        ]
    for key in (
        "select_router_2_readers_tps",
        "select_router_1_reader_tps",
        "select_direct_r1_tps",
    ):
        rows.append(report.record(f"{NAME}_{key}", summary[key], "tps", True))
    rows.append(
        report.record(f"{NAME}_router_overhead", summary["router_overhead"], "ratio", False)
    )
    rows.append(
        report.record(f"{NAME}_reader_scaling", summary["reader_scaling_2_over_1"], "ratio", True)
    )
    return rows


def plot(result: dict[str, Any], summary: dict[str, Any]) -> None:
    """Two panels: lag p50/p99 at each achieved rate, and select-only tps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (lag_axes, tps_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{rate_label(f)}\n({f['achieved_per_s']:.0f}/s)" for f in result["lag"]]
    positions = range(len(labels))
    width = 0.38
    p50 = lag_axes.bar(
        [p - width / 2 for p in positions],
        [f["lag_p50_ms"] for f in result["lag"]],
        width,
        label="p50",
        color="#3b6ea5",
    )
    p99 = lag_axes.bar(
        [p + width / 2 for p in positions],
        [f["lag_p99_ms"] for f in result["lag"]],
        width,
        label="p99",
        color="#a5a5a5",
    )
    lag_axes.bar_label(p50, fmt="%.1f")
    lag_axes.bar_label(p99, fmt="%.1f")
    lag_axes.axhline(20, color="#b03030", linestyle="--", linewidth=1, label="p99 target")
    lag_axes.set_xticks(list(positions), labels)
    lag_axes.set_xlabel("target writes/s (achieved)")
    lag_axes.set_ylabel("commit ack to visible on reader, ms")
    lag_axes.set_title("replica lag (2 readers)")
    lag_axes.legend()
    chart = {
        "router\n2 readers": summary["select_router_2_readers_tps"],
        "router\n1 reader": summary["select_router_1_reader_tps"],
        "direct\nr1": summary["select_direct_r1_tps"],
    }
    bars = tps_axes.bar(list(chart), list(chart.values()), color=["#3b6ea5", "#3b6ea5", "#a5a5a5"])
    tps_axes.bar_label(bars, fmt="%.0f")
    tps_axes.set_ylabel("transactions/s")
    tps_axes.set_title(f"pgbench -S (router overhead {summary['router_overhead']:.0%})")
    figure.tight_layout()
    figure.savefig(report.RESULTS_DIR / f"{NAME}.png", dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="100 and 300 writes/s for 8 s, pgbench -T 5"
    )
    args = parser.parse_args()
    rates, lag_s, select_s = (RATES_QUICK, 8.0, 5) if args.quick else (RATES_FULL, 20.0, 20)
    work = Path(tempfile.mkdtemp(prefix="borealis-replica-lag-"))
    print(
        f"{NAME}: 6 storage nodes, writer, 2 readers, router, pgbench, this writer and "
        f"{len(READERS)} poller processes on {os.cpu_count()} shared CPUs; files on "
        f"{filesystem_of(work)} ({work}); rates "
        f"{', '.join(str(rate or 'unpaced') for rate in rates)} writes/s for {lag_s:.0f}s each; "
        f"pgbench -S -M prepared -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} -T {select_s}. "
        "Expect: lag p99 under 20 ms at 1000 writes/s, router overhead under 20%.",
        flush=True,
    )
    try:
        result = run(work, rates, lag_s, select_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(result)
    # report.write's single bar chart (lag p99 per rate) is replaced by the two-panel plot.
    chart = {f"p99 at {rate_label(f)}": f["lag_p99_ms"] for f in result["lag"]}
    report.write(NAME, records(result, summary), chart, "ms")
    plot(result, summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
