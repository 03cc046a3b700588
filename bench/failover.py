"""Failover and crash recovery under load: Borealis against PostgreSQL 15, in the same run.

What it expects: one machine whose cores are shared by everything - the control
plane, six storage nodes, the writer (and its reader), the router, the load
clients of this process, and later the PostgreSQL postmaster and its backends.
The two systems run one after the other, never together. A local disk under the
temporary directory (its filesystem is printed; on tmpfs an fsync costs nothing).
Borealis clusters are started the way users start them: `borealis up --data-dir D
--base-port P` (the control plane as its own process, with its default failover
and restart settings) and stopped with `borealis down`. On one machine the control
plane sees a killed process exit at once; across machines it would only see the
heartbeats stop (writer_dead_after_ms, 3 s by default, would be added).

The load, the same on both: LOAD_CLIENTS psycopg clients (threads) through the
writer endpoint, each running small pgbench-like transactions without pause
(UPDATE one of ACCOUNTS balances, INSERT a history row with a unique id, COMMIT),
reconnecting after any error. Each client records every acknowledged id with the
moments its attempt began and was acknowledged. At the end every acknowledged id
must be present (`lost` must be 0) and the balances must equal the sum of the
history deltas (no half-applied transaction).

1. Failover: `borealis up --readers 1`; under the load, kill -9 the writer N times
   (quick 3, full 6). Per kill: time to the first acknowledged write among attempts
   begun after the kill (and when cluster.json named the promoted writer running).
   Between kills the cluster settles: the promoted instance serves, the old writer
   is back as a reader and has caught up, and the load runs DWELL_S more.
2. Restart in place: `borealis up` with no reader (a fresh cluster per load level,
   so the supervisor's restart backoff is the same for each); kill -9 the writer
   after 10 s and 60 s of load (quick: 5 s and 15 s); time from the kill to the
   first acknowledged write, and from the new writer process's start (read from
   /proc) to that write: without the supervisor's detection and backoff, but with
   the Python interpreter's start and imports (over a second on a loaded 2-core
   machine; a promotion in place avoids them). Expected flat in load: recovery
   reads SCLs and truncates, it does not replay redo.
3. PostgreSQL 15 (deploy/postgres.py, fsync and synchronous_commit on, default
   checkpoint settings: one CHECKPOINT before the load, none during it): the same
   load levels on one server; kill -9 the postmaster and start it again at once
   (retrying while its orphaned backends still hold shared memory); time from the
   kill to the first acknowledged write on a connection opened after the kill (an
   orphaned backend may still commit on its old connection for a moment; those
   commits are counted apart). Its crash recovery replays the WAL since the last
   checkpoint, so it is expected to grow with load; its log's redo figures (WAL
   bytes, seconds) are reported.

Targets: failover p50 under 2 s, max under 5 s; recovery time flat in load.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench import report  # noqa: E402
from bench.pgbench_compare import Endpoint, endpoint_of_cluster, filesystem_of  # noqa: E402
from borealis.errors import Unavailable  # noqa: E402
from borealis.wait import wait_until  # noqa: E402
from deploy.local import pid_alive, read_cluster_file  # noqa: E402
from deploy.ports import PortAllocator  # noqa: E402
from deploy.postgres import LocalPostgres  # noqa: E402

NAME = "failover"
LOAD_CLIENTS = 4
ACCOUNTS = 100
DELTA_MAX = 5000
# libpq's connect_timeout is whole seconds; a dead endpoint costs at most this.
CONNECT_TIMEOUT_S = 2
RETRY_PAUSE_S = 0.02
LOAD_JOIN_TIMEOUT_S = 15.0
# A kill is measured only while the load flows: this many acknowledgements first.
FLOWING_ACKS = 5
FLOWING_TIMEOUT_S = 60.0
FIRST_WRITE_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.01
SETTLE_POLL_INTERVAL_S = 0.1
CLI_TIMEOUT_S = 180.0
POSTGRES_RESTART_TIMEOUT_S = 60.0
POSTGRES_RESTART_PAUSE_S = 0.05
TARGET_P50_S = 2.0
TARGET_MAX_S = 5.0
# Recovery counts as flat when the longer load's time is within this factor of the
# shorter's (process start times on a shared machine jitter by some tenths).
FLAT_RATIO_MAX = 1.5
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password"
BENCH_DATABASE = "bench"

SCHEMA = (
    "CREATE TABLE bench_accounts (id integer PRIMARY KEY, balance bigint NOT NULL)",
    "CREATE TABLE bench_history (id bigint PRIMARY KEY, client integer NOT NULL, "
    "account integer NOT NULL, delta integer NOT NULL)",
)
UPDATE = "UPDATE bench_accounts SET balance = balance + %s WHERE id = %s"
INSERT = "INSERT INTO bench_history (id, client, account, delta) VALUES (%s, %s, %s, %s)"
_REDO_START = re.compile(r"redo starts at ([0-9A-F]+)/([0-9A-F]+)")
_REDO_DONE = re.compile(
    r"redo done at ([0-9A-F]+)/([0-9A-F]+) system usage: .*?elapsed: ([0-9.]+) s"
)


# --- connections -----------------------------------------------------------------------


def connect(endpoint: Endpoint) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        dbname=endpoint.database,
        sslmode="disable",
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
    )


def endpoint_of_url(url: str, password: str) -> Endpoint:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"bad endpoint {url}"
    return Endpoint(
        parts.hostname,
        parts.port,
        unquote(parts.username or ""),
        password,
        unquote(parts.path.lstrip("/")),
    )


def create_schema(endpoint: Endpoint) -> None:
    rows = ", ".join(f"({account}, 0)" for account in range(1, ACCOUNTS + 1))
    with connect(endpoint) as connection:
        for statement in SCHEMA:
            connection.execute(statement)
        connection.execute(f"INSERT INTO bench_accounts (id, balance) VALUES {rows}")


# --- the load ---------------------------------------------------------------------------


@dataclass
class Load:
    """LOAD_CLIENTS threads running small write transactions through `endpoint`.

    Ids come from one counter, a fresh one per attempt: an attempt that failed may
    still have committed, and must not be confused with a later one."""

    endpoint: Endpoint
    ids: Iterator[int]
    seed: int
    # (id, attempt began, acknowledged, its connection opened), monotonic seconds.
    acknowledged: list[tuple[int, float, float, float]] = field(default_factory=list)
    errors: int = 0
    started_at: float = 0.0
    stopped_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    id_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self.started_at = time.monotonic()
        for client in range(LOAD_CLIENTS):
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def finish(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + LOAD_JOIN_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stopped_at = time.monotonic()
        stuck = sum(thread.is_alive() for thread in self.threads)
        if stuck:
            print(f"  {stuck} load clients still blocked in a request at the end", flush=True)

    def _next_id(self) -> int:
        with self.id_lock:
            return next(self.ids)

    def _run(self, client: int) -> None:
        chooser = random.Random(self.seed * 1000 + client)
        connection: psycopg.Connection[Any] | None = None
        connected_at = 0.0
        while not self.stop.is_set():
            row_id = self._next_id()
            account = chooser.randint(1, ACCOUNTS)
            delta = chooser.randint(-DELTA_MAX, DELTA_MAX)
            began = time.monotonic()
            try:
                if connection is None:
                    connected_at = time.monotonic()
                    connection = connect(self.endpoint)
                with connection.transaction():
                    connection.execute(UPDATE, (delta, account))
                    connection.execute(INSERT, (row_id, client, account, delta))
                self.acknowledged.append((row_id, began, time.monotonic(), connected_at))
            except psycopg.Error:
                self.errors += 1
                if connection is not None:
                    connection.close()
                connection = None
                self.stop.wait(RETRY_PAUSE_S)
        if connection is not None:
            connection.close()

    def acknowledged_after(self, moment: float) -> int:
        return sum(1 for _, began, _, _ in list(self.acknowledged) if began > moment)

    def acknowledged_on_old_connections(self, moment: float) -> int:
        """Writes begun after `moment` on connections opened before it."""
        return sum(
            1
            for _, began, _, connected_at in list(self.acknowledged)
            if began > moment and connected_at <= moment
        )

    def first_after(self, moment: float, new_connections: bool = False) -> float | None:
        """When the first write begun after `moment` (on a connection opened after it,
        with `new_connections`) was acknowledged."""
        later = [
            acked
            for _, began, acked, connected_at in list(self.acknowledged)
            if began > moment and (connected_at > moment or not new_connections)
        ]
        return min(later) if later else None

    def wait_flowing(self, what: str) -> None:
        now = time.monotonic()
        wait_until(
            lambda: self.acknowledged_after(now) >= FLOWING_ACKS,
            FLOWING_TIMEOUT_S,
            POLL_INTERVAL_S,
            f"the load to flow ({what})",
        )

    def wait_first_write(self, killed_at: float, new_connections: bool = False) -> float:
        """Seconds from `killed_at` to the first acknowledged write begun after it (on a
        connection opened after it, with `new_connections`)."""
        wait_until(
            lambda: self.first_after(killed_at, new_connections) is not None,
            FIRST_WRITE_TIMEOUT_S,
            POLL_INTERVAL_S,
            "the first write after the kill",
        )
        first = self.first_after(killed_at, new_connections)
        assert first is not None
        return first - killed_at

    def rate_per_s(self) -> float:
        elapsed_s = (self.stopped_at or time.monotonic()) - self.started_at
        return len(self.acknowledged) / elapsed_s if elapsed_s > 0 else math.nan


@dataclass(frozen=True)
class Check:
    acknowledged: int
    lost: int
    balance_mismatch: int


def check_acknowledged(endpoint: Endpoint, loads: list[Load]) -> Check:
    """Every acknowledged id present; balances equal to the history's deltas."""
    acknowledged = {row_id for load in loads for row_id, *_ in load.acknowledged}
    with connect(endpoint) as connection:
        present = {row[0] for row in connection.execute("SELECT id FROM bench_history")}
        balances = connection.execute("SELECT sum(balance) FROM bench_accounts").fetchone()
        deltas = connection.execute("SELECT sum(delta) FROM bench_history").fetchone()
    assert balances is not None and deltas is not None
    lost = len(acknowledged - present)
    mismatch = int(balances[0] or 0) - int(deltas[0] or 0)
    return Check(len(acknowledged), lost, mismatch)


# --- a Borealis cluster through the CLI -------------------------------------------------


def borealis_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("borealis")
    return subprocess.run(
        [str(executable), *arguments],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@dataclass
class Cluster:
    data_dir: Path

    def document(self) -> dict[str, Any]:
        return read_cluster_file(self.data_dir)

    def instance(self, name: str) -> dict[str, Any]:
        return next(i for i in self.document()["instances"] if i["name"] == name)

    def writer(self) -> dict[str, Any]:
        return next(i for i in self.document()["instances"] if i["role"] == "writer")

    def writer_endpoint(self) -> Endpoint:
        return endpoint_of_cluster(self.data_dir)

    def instance_endpoint(self, name: str) -> Endpoint:
        url = self.document()["endpoints"]["instances"][name]
        return endpoint_of_url(url, self.writer_endpoint().password)


@contextmanager
def borealis_cluster(data_dir: Path, readers: int) -> Iterator[Cluster]:
    """`borealis up` on a block of free ports; `borealis down` on the way out."""
    base_port = PortAllocator().allocate()
    arguments = ["--data-dir", str(data_dir), "--base-port", str(base_port)]
    arguments += ["--storage-set", "log_level=warning", "--instance-set", "log_level=warning"]
    if readers:
        arguments += ["--readers", str(readers)]
    started = time.monotonic()
    try:
        done = borealis_cli("up", *arguments)
        if done.returncode != 0:
            raise Unavailable(f"borealis up failed:\n{done.stdout}{done.stderr}")
        print(f"  borealis up ({readers} readers): {time.monotonic() - started:.1f}s", flush=True)
        yield Cluster(data_dir)
    finally:
        down = borealis_cli("down", "--data-dir", str(data_dir))
        print(f"  {down.stdout.strip()}", flush=True)


def process_started_at(pid: int) -> float:
    """The monotonic moment `pid` started (CLOCK_BOOTTIME ticks from /proc, 10 ms grain)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces), from field 3 on.
    fields = stat.rsplit(")", 1)[1].split()
    started_since_boot_s = int(fields[19]) / CLOCK_TICKS_PER_S
    offset_s = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return started_since_boot_s - offset_s


def kill_process(pid: int) -> float:
    """kill -9 `pid`; the monotonic moment of the kill."""
    assert pid_alive(pid), f"process {pid} is not running"
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return killed_at


# --- 1. failover ------------------------------------------------------------------------


def wait_promoted(cluster: Cluster, old: str) -> tuple[str, float]:
    """Until cluster.json names another writer, running; (its name, the moment)."""

    def promoted() -> str | None:
        writer = cluster.writer()
        return writer["name"] if writer["name"] != old and writer["state"] == "running" else None

    name = wait_until(promoted, FIRST_WRITE_TIMEOUT_S, POLL_INTERVAL_S, "a promoted writer")
    return name, time.monotonic()


def wait_settled(cluster: Cluster, load: Load, old: str, new: str) -> None:
    """The promoted writer serves, and `old` runs as a reader that has caught up."""

    def old_is_reader() -> bool:
        entry = cluster.instance(old)
        writer = cluster.writer()
        return (
            entry["role"] == "reader"
            and entry["state"] == "running"
            and writer["name"] == new
            and writer["state"] == "running"
        )

    wait_until(old_is_reader, SETTLE_TIMEOUT_S, SETTLE_POLL_INTERVAL_S, f"{old} back as a reader")
    load.wait_flowing(f"after {old} rejoined")
    last_id = max(row_id for row_id, *_ in list(load.acknowledged))
    endpoint = cluster.instance_endpoint(old)

    def caught_up() -> bool:
        with connect(endpoint) as connection:
            row = connection.execute(
                "SELECT count(*) FROM bench_history WHERE id = %s", (last_id,)
            ).fetchone()
        return row == (1,)

    wait_until(caught_up, SETTLE_TIMEOUT_S, SETTLE_POLL_INTERVAL_S, f"{old} to catch up")


def run_failover(work: Path, kills: int, dwell_s: float) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    with borealis_cluster(work / "failover", readers=1) as cluster:
        endpoint = cluster.writer_endpoint()
        create_schema(endpoint)
        load = Load(endpoint, itertools.count(1), seed=1).start()
        try:
            time.sleep(dwell_s)  # The load runs steadily before the first kill.
            for number in range(1, kills + 1):
                rounds.append(_kill_writer_once(cluster, load, number))
                time.sleep(dwell_s)
        finally:
            load.finish()
        check = check_acknowledged(endpoint, [load])
    first_writes = [entry["first_write_s"] for entry in rounds]
    return {
        "rounds": rounds,
        "kills": kills,
        "first_write_p50_s": statistics.median(first_writes),
        "first_write_max_s": max(first_writes),
        "promoted_p50_s": statistics.median(entry["promoted_s"] for entry in rounds),
        "acknowledged": check.acknowledged,
        "lost": check.lost,
        "balance_mismatch": check.balance_mismatch,
        "client_errors": load.errors,
        "rate_per_s": load.rate_per_s(),
    }


def _kill_writer_once(cluster: Cluster, load: Load, number: int) -> dict[str, Any]:
    load.wait_flowing(f"before kill {number}")
    writer = cluster.writer()
    killed_at = kill_process(int(writer["pid"]))
    new, promoted_at = wait_promoted(cluster, writer["name"])
    first_write_s = load.wait_first_write(killed_at)
    settle_began = time.monotonic()
    wait_settled(cluster, load, writer["name"], new)
    entry = {
        "killed": writer["name"],
        "promoted": new,
        "first_write_s": first_write_s,
        "promoted_s": promoted_at - killed_at,
        "settle_s": time.monotonic() - settle_began,
    }
    print(
        f"  kill {number}: {writer['name']} -> {new}; cluster.json names it after "
        f"{entry['promoted_s']:.3f}s, first write after {first_write_s:.3f}s; settled (old "
        f"writer a reader, caught up) {entry['settle_s']:.1f}s later",
        flush=True,
    )
    return entry


# --- 2. restart in place ------------------------------------------------------------------


def run_restart_in_place(work: Path, load_s: float) -> dict[str, Any]:
    """A fresh cluster with no reader: `load_s` of load, kill -9 the writer, measure."""
    with borealis_cluster(work / f"restart-{load_s:.0f}s", readers=0) as cluster:
        endpoint = cluster.writer_endpoint()
        create_schema(endpoint)
        load = Load(endpoint, itertools.count(1), seed=2).start()
        try:
            time.sleep(load_s)
            load.wait_flowing("before the kill")
            writer = cluster.writer()
            old_pid = int(writer["pid"])
            written_before = len(load.acknowledged)
            killed_at = kill_process(old_pid)
            first_write_s = load.wait_first_write(killed_at)

            def restarted() -> int | None:
                entry = cluster.instance(writer["name"])
                pid = int(entry["pid"] or 0)
                return pid if pid != old_pid and entry["state"] == "running" else None

            new_pid = wait_until(restarted, SETTLE_TIMEOUT_S, POLL_INTERVAL_S, "the restart")
            spawn_s = process_started_at(new_pid) - killed_at
            load.wait_flowing("after the restart")
        finally:
            load.finish()
        check = check_acknowledged(endpoint, [load])
    figures = {
        "load_s": load_s,
        "writes_before_kill": written_before,
        "first_write_s": first_write_s,
        "spawn_s": spawn_s,
        "spawn_to_write_s": first_write_s - spawn_s,
        "acknowledged": check.acknowledged,
        "lost": check.lost,
        "balance_mismatch": check.balance_mismatch,
    }
    print(
        f"  restart in place after {load_s:.0f}s of load ({written_before} commits): first "
        f"write {first_write_s:.3f}s after the kill; new process started at "
        f"{spawn_s:.2f}s (detection and backoff), recovery to first write "
        f"{figures['spawn_to_write_s']:.3f}s; lost {check.lost}",
        flush=True,
    )
    return figures


# --- 3. PostgreSQL ------------------------------------------------------------------------


def restart_postgres(server: LocalPostgres) -> int:
    """Starts the killed server again, retrying while its orphaned backends still hold
    the old shared memory; the attempts it took."""
    deadline = time.monotonic() + POSTGRES_RESTART_TIMEOUT_S
    for attempt in itertools.count(1):
        try:
            server.start()
            return attempt
        except Unavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POSTGRES_RESTART_PAUSE_S)
    raise AssertionError("unreachable")


def redo_figures(log_text: str) -> tuple[int, float]:
    """(WAL bytes replayed, redo seconds) of the last crash recovery in the log."""
    starts, dones = _REDO_START.findall(log_text), _REDO_DONE.findall(log_text)
    if not starts or not dones:
        return 0, 0.0
    start_high, start_low = starts[-1]
    done_high, done_low, elapsed = dones[-1]
    start = (int(start_high, 16) << 32) + int(start_low, 16)
    done = (int(done_high, 16) << 32) + int(done_low, 16)
    return done - start, float(elapsed)


def run_postgres(work: Path, load_levels_s: tuple[float, ...]) -> list[dict[str, Any]]:
    server = LocalPostgres(
        work / "postgres",
        user=BENCH_USER,
        password=BENCH_PASSWORD,
        dbname=BENCH_DATABASE,
        ports=PortAllocator(),
        settings={"fsync": "on", "synchronous_commit": "on", "max_connections": "50"},
    )
    runs: list[dict[str, Any]] = []
    ids = itertools.count(1)
    try:
        server.start()
        endpoint = Endpoint(server.host, server.port, server.user, server.password, server.dbname)
        create_schema(endpoint)
        # PostgreSQL 15's CREATE DATABASE writes the template into the WAL; a checkpoint
        # here leaves only the load's WAL for the first crash recovery to replay (each
        # later one follows the previous recovery's end-of-recovery checkpoint).
        server.execute("CHECKPOINT")
        loads: list[Load] = []
        for load_s in load_levels_s:
            runs.append(_postgres_level(server, endpoint, ids, load_s, loads))
        check = check_acknowledged(endpoint, loads)
    finally:
        server.stop()
    for entry in runs:
        entry.update(lost=check.lost, balance_mismatch=check.balance_mismatch)
    return runs


def _postgres_level(
    server: LocalPostgres, endpoint: Endpoint, ids: Iterator[int], load_s: float, loads: list[Load]
) -> dict[str, Any]:
    load = Load(endpoint, ids, seed=3 + len(loads)).start()
    loads.append(load)
    try:
        time.sleep(load_s)
        load.wait_flowing("before the kill")
        assert server.process is not None
        written_before = len(load.acknowledged)
        killed_at = kill_process(server.process.pid)
        server.process.wait()
        attempts = restart_postgres(server)
        # A backend orphaned by the kill keeps serving the connection it has until it
        # notices the postmaster is gone; only a new connection reaches the restarted
        # server. (Through Borealis's router an old connection may reach the new
        # writer: the router keeps client sessions across the change.)
        first_write_s = load.wait_first_write(killed_at, new_connections=True)
        orphaned = load.acknowledged_on_old_connections(killed_at)
        load.wait_flowing("after the restart")
    finally:
        load.finish()
    wal_bytes, redo_s = redo_figures(server.log_path.read_text(errors="replace"))
    figures = {
        "load_s": load_s,
        "writes_before_kill": written_before,
        "first_write_s": first_write_s,
        "start_attempts": attempts,
        "orphan_acknowledged": orphaned,
        "redo_wal_bytes": wal_bytes,
        "redo_s": redo_s,
    }
    print(
        f"  PostgreSQL after {load_s:.0f}s of load ({written_before} commits): first write "
        f"{first_write_s:.3f}s after kill -9 of the postmaster ({attempts} start attempts; {orphaned} commits acknowledged after "
        f"the kill by orphaned backends); redo replayed {wal_bytes / 2**20:.1f} MiB in {redo_s:.3f}s",
        flush=True,
    )
    return figures


# --- the report ---------------------------------------------------------------------------


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    failover = result["failover"]
    summary: dict[str, Any] = {
        "failover_kills": failover["kills"],
        "failover_first_write_p50_s": round(failover["first_write_p50_s"], 3),
        "failover_first_write_max_s": round(failover["first_write_max_s"], 3),
        "failover_promoted_p50_s": round(failover["promoted_p50_s"], 3),
        "failover_first_write_s": [round(r["first_write_s"], 3) for r in failover["rounds"]],
        "failover_acknowledged": failover["acknowledged"],
        "failover_lost": failover["lost"],
        "failover_balance_mismatch": failover["balance_mismatch"],
        "failover_client_errors": failover["client_errors"],
        "failover_load_per_s": round(failover["rate_per_s"], 1),
        "failover_p50_target_met": failover["first_write_p50_s"] < TARGET_P50_S,
        "failover_max_target_met": failover["first_write_max_s"] < TARGET_MAX_S,
    }
    for entry in result["restart"]:
        label = f"after_{entry['load_s']:.0f}s"
        summary[f"restart_first_write_s_{label}"] = round(entry["first_write_s"], 3)
        summary[f"restart_spawn_to_write_s_{label}"] = round(entry["spawn_to_write_s"], 3)
        summary[f"restart_writes_before_kill_{label}"] = entry["writes_before_kill"]
        summary[f"restart_lost_{label}"] = entry["lost"]
    for entry in result["postgres"]:
        label = f"after_{entry['load_s']:.0f}s"
        summary[f"postgres_first_write_s_{label}"] = round(entry["first_write_s"], 3)
        summary[f"postgres_redo_s_{label}"] = round(entry["redo_s"], 3)
        summary[f"postgres_redo_wal_mib_{label}"] = round(entry["redo_wal_bytes"] / 2**20, 2)
        summary[f"postgres_writes_before_kill_{label}"] = entry["writes_before_kill"]
        summary[f"postgres_orphan_acknowledged_{label}"] = entry["orphan_acknowledged"]
    summary["postgres_lost"] = result["postgres"][-1]["lost"]
    short, long = result["restart"][0], result["restart"][-1]
    summary["restart_growth_ratio"] = round(long["first_write_s"] / short["first_write_s"], 3)
    summary["restart_recovery_growth_ratio"] = round(
        long["spawn_to_write_s"] / short["spawn_to_write_s"], 3
    )
    summary["restart_flat_in_load"] = summary["restart_recovery_growth_ratio"] < FLAT_RATIO_MAX
    first, last = result["postgres"][0], result["postgres"][-1]
    summary["postgres_growth_ratio"] = round(last["first_write_s"] / first["first_write_s"], 3)
    return summary


def records(summary: dict[str, Any], result: dict[str, Any]) -> list[dict[str, object]]:
    rows = [
        report.record(
            f"{NAME}_first_write_p50_s", summary["failover_first_write_p50_s"], "s", False
        ),
        report.record(
            f"{NAME}_first_write_max_s", summary["failover_first_write_max_s"], "s", False
        ),
        report.record(f"{NAME}_acknowledged_lost", summary["failover_lost"], "commits", False),
    ]
    for entry in result["restart"]:
        label = f"after_{entry['load_s']:.0f}s"
        rows.append(
            report.record(
                f"{NAME}_restart_first_write_s_{label}",
                summary[f"restart_first_write_s_{label}"],
                "s",
                False,
            )
        )
        rows.append(
            report.record(
                f"{NAME}_restart_spawn_to_write_s_{label}",
                summary[f"restart_spawn_to_write_s_{label}"],
                "s",
                False,
            )
        )
    for entry in result["postgres"]:
        label = f"after_{entry['load_s']:.0f}s"
        rows.append(
            report.record(
                f"{NAME}_postgres_first_write_s_{label}",
                summary[f"postgres_first_write_s_{label}"],
                "s",
                False,
            )
        )
    rows.append(
        report.record(
            f"{NAME}_restart_growth_ratio", summary["restart_recovery_growth_ratio"], "ratio", False
        )
    )
    rows.append(
        report.record(
            f"{NAME}_postgres_growth_ratio", summary["postgres_growth_ratio"], "ratio", False
        )
    )
    return rows


def plot(result: dict[str, Any]) -> None:
    """Two panels: time to first write per kill (with the targets), and crash recovery
    time against load for Borealis (kill to write, process start to write) and PostgreSQL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (kill_axes, recovery_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    rounds = result["failover"]["rounds"]
    bars = kill_axes.bar(
        [str(n) for n in range(1, len(rounds) + 1)],
        [entry["first_write_s"] for entry in rounds],
        color="#3b6ea5",
    )
    kill_axes.bar_label(bars, fmt="%.2f")
    kill_axes.axhline(
        TARGET_P50_S, color="#b03030", linestyle="--", linewidth=1, label="p50 target"
    )
    kill_axes.axhline(TARGET_MAX_S, color="#b03030", linestyle=":", linewidth=1, label="max target")
    kill_axes.set_xlabel("kill -9 of the writer, round")
    kill_axes.set_ylabel("kill to first acknowledged write, s")
    kill_axes.set_title(f"failover (lost commits: {result['failover']['lost']})")
    kill_axes.legend()
    series = {
        "Borealis, kill to write": [(e["load_s"], e["first_write_s"]) for e in result["restart"]],
        "Borealis, process start to write": [
            (e["load_s"], e["spawn_to_write_s"]) for e in result["restart"]
        ],
        "PostgreSQL 15, kill to write": [
            (e["load_s"], e["first_write_s"]) for e in result["postgres"]
        ],
        "PostgreSQL 15, WAL redo alone": [(e["load_s"], e["redo_s"]) for e in result["postgres"]],
    }
    for (label, points), marker in zip(series.items(), ("o", "s", "^", "v"), strict=True):
        recovery_axes.plot(
            [x for x, _ in points], [y for _, y in points], marker=marker, label=label
        )
    recovery_axes.set_xlabel("seconds of load before kill -9")
    recovery_axes.set_ylabel("seconds to first acknowledged write")
    recovery_axes.set_title("crash recovery in place")
    recovery_axes.set_ylim(bottom=0)
    recovery_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(report.RESULTS_DIR / f"{NAME}.png", dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 kills; restarts after 5 s and 15 s of load"
    )
    args = parser.parse_args()
    kills, dwell_s, levels_s = (3, 2.0, (5.0, 15.0)) if args.quick else (6, 5.0, (10.0, 60.0))
    work = Path(tempfile.mkdtemp(prefix="borealis-failover-"))
    print(
        f"{NAME}: control plane, 6 storage nodes, writer (+1 reader), router and "
        f"{LOAD_CLIENTS} load clients on {os.cpu_count()} shared CPUs; files on "
        f"{filesystem_of(work)} ({work}); {kills} kills of the writer, restarts in place "
        f"after {' and '.join(f'{s:.0f}s' for s in levels_s)} of load, PostgreSQL 15 the same. "
        f"Expect: failover p50 < {TARGET_P50_S:.0f}s, max < {TARGET_MAX_S:.0f}s, 0 lost; "
        "Borealis recovery flat in load, PostgreSQL's growing with it.",
        flush=True,
    )
    result: dict[str, Any] = {}
    try:
        print("1. failover under load", flush=True)
        result["failover"] = run_failover(work, kills, dwell_s)
        print("2. writer restarted in place", flush=True)
        result["restart"] = [run_restart_in_place(work, load_s) for load_s in levels_s]
        print("3. PostgreSQL 15 crash recovery", flush=True)
        result["postgres"] = run_postgres(work, levels_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(result)
    # report.write's bar chart is replaced by the two-panel plot below.
    chart = {
        "failover p50": summary["failover_first_write_p50_s"],
        "failover max": summary["failover_first_write_max_s"],
    }
    report.write(NAME, records(summary, result), chart, "s")
    plot(result)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
