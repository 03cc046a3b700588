"""Automatic capacity scaling under a load ramp: reaction times, latency, failures, resume.

What it expects: one machine whose cores are shared by everything - the control
plane (with its scaling loop), six storage nodes, the writer, the readers the
autoscaler adds, the router, and this process's load clients (threads) and
sampler. Reaction times include starting a reader's Python process on that
loaded machine; latencies include queueing on its cores. The cluster is started
the way users start it: `borealis up --data-dir D --base-port P --min-capacity 0.5
--max-capacity 4 --min-readers 0 --max-readers 2` (with `--auto-pause-s N` when
`borealis up --help` offers it), then `borealis scaling set` shortens the
cooldowns (SCALING_SET) so a ramp of a few minutes shows scale-out and scale-in;
stopped with `borealis down`.

The load: psycopg clients (threads), each closed-loop with THINK_S between
queries, following a schedule of phases - steady, up (a linear ramp), plateau,
spike, down, and a tail at the steady level until the readers are back at their
minimum (bounded). Reader clients run a range aggregate through the router's
reader endpoint and open a new connection every RECONNECT_S (as a pool with a
maximum connection lifetime does), so readers added meanwhile get sessions;
writer clients run an UPDATE of WRITE_ROWS rows through the writer endpoint. Every query's
start, end and outcome is recorded; a client whose query or connection failed
counts it and reconnects (no retry hides a failure).

A sampler reads, every SAMPLE_INTERVAL_S: the writer's capacity
(Capacity.GetCapacity), the control plane's `readers_wanted` metric (set the
moment the reader policy decides), the router's sessions per instance, and
cluster.json (which readers run). At the end `borealis scaling history --json`
gives the applied decisions with their times.

Figures (seconds):
- writer capacity: from the moment the writer's load became sustained (the start
  of the run of samples, up to the decision, in which its CPU as GetCapacity
  reports it was above the policy's threshold for its capacity; the ramp's start
  alone says little, since the writer may take part of the ramp within its
  capacity) to the first step up in the history (recorded when
  Capacity.SetCapacity returned, so it includes applying it), and to the first
  writer query answered once GetCapacity showed the new capacity; the decision
  from the ramp's start is reported too;
- readers: from the moment the offered connections first exceed the reader
  target (the policy's trigger; the load stays above it until the down phase) to
  the decision (`readers_wanted` above the running count), and to the new reader
  serving (the router's first session on it);
- p99 query latency during the ramp (up, plateau and spike) against the steady
  phase; failed queries (must be 0);
- resume from pause: when auto-pause is offered and the idle cluster pauses
  (cluster.json says paused; no client connection is left open, and the sampler
  uses gRPC only), the time from a new connection's start through the writer
  endpoint to its first query's result (the router holds the login while the
  control plane resumes the writer); otherwise null, with the reason.

Targets: decision within 10 s, new reader serving within 15 s, resume under 1 s.
The timeline PNG shows offered load, writer capacity, reader count and p99 latency
per second. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import psycopg  # noqa: E402

from bench import report  # noqa: E402
from bench.failover import endpoint_of_url  # noqa: E402
from bench.pgbench_compare import Endpoint, endpoint_of_cluster, filesystem_of  # noqa: E402
from bench.replica_lag import percentile  # noqa: E402
from borealis import metrics, rpc  # noqa: E402
from borealis.errors import BorealisError, Unavailable  # noqa: E402
from control_plane.autoscaler import CapacitySettings  # noqa: E402
from deploy.local import configure_transport_from, pid_alive, read_cluster_file  # noqa: E402
from deploy.ports import PortAllocator  # noqa: E402
from proto import admin_pb2, admin_pb2_grpc, capacity_pb2, capacity_pb2_grpc  # noqa: E402

NAME = "autoscale"
MIN_CAPACITY_BCU = 0.5
MAX_CAPACITY_BCU = 4.0
BCU_STEP = 0.5
MIN_READERS = 0
MAX_READERS = 2
# Connections per reader the reader policy tracks (the default, stated here so the
# benchmark can tell when its load crosses it).
READER_TARGET = 4.0
# Short cooldowns, so one run of a few minutes shows scale-out and scale-in.
SCALING_SET = {
    "--reader-target": READER_TARGET,
    "--scale-out-cooldown-s": 5,
    "--scale-in-after-s": 5,
    "--scale-in-cooldown-s": 10,
    "--capacity-up-cooldown-s": 5,
    "--capacity-down-after-s": 10,
    "--capacity-down-cooldown-s": 10,
}
ACCOUNTS = 1000
READ_RANGE = 100
SCHEMA = "CREATE TABLE bench_accounts (id integer PRIMARY KEY, balance bigint NOT NULL)"
READ = "SELECT count(*), sum(balance) FROM bench_accounts WHERE id BETWEEN %s AND %s"
# Several rows a statement, so the writer's CPU (the capacity policy's main signal)
# rises with the ramp.
WRITE_ROWS = 20
WRITE = "UPDATE bench_accounts SET balance = balance + 1 WHERE id BETWEEN %s AND %s"
READ_KIND = "read"
WRITE_KIND = "write"
# Each client waits this long between queries: at most 1 / THINK_S queries a second
# per client, which also bounds the timings recorded.
THINK_S = 0.05
RECONNECT_S = 2.0
# libpq's connect_timeout is whole seconds.
CONNECT_TIMEOUT_S = 10
# A paused cluster's first connection waits for the writer to resume.
RESUME_CONNECT_TIMEOUT_S = 30
IDLE_POLL_S = 0.05
SAMPLE_INTERVAL_S = 0.25
RPC_TIMEOUT_S = 1.0
CLI_TIMEOUT_S = 180.0
JOIN_TIMEOUT_S = 15.0
# How long past auto_pause_s the benchmark waits for an idle cluster to pause.
PAUSE_MARGIN_S = 15.0
ERRORS_KEPT = 20
TARGET_DECISION_S = 10.0
TARGET_READER_SERVING_S = 15.0
TARGET_RESUME_S = 1.0
_SESSIONS = re.compile(r'^borealis_router_sessions\{.*instance="([^"]+)".*\}$')
READERS_WANTED_METRIC = "borealis_control_plane_readers_wanted"


# --- the schedule -------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """Clients of each kind, moving linearly from the first figure to the second."""

    name: str
    duration_s: float
    readers: tuple[int, int]
    writers: tuple[int, int]


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]
    # The tail (the steady level) lasts until the readers are back at the minimum,
    # at most this long.
    tail_max_s: float
    tail_readers: int
    tail_writers: int
    auto_pause_s: float

    def starts(self) -> dict[str, float]:
        """Each phase's start, in seconds from the load's start; "tail" after the last."""
        moments, at = {}, 0.0
        for phase in self.phases:
            moments[phase.name] = at
            at += phase.duration_s
        moments["tail"] = at
        return moments

    def clients(self, kind: str, at_s: float) -> int:
        """Clients of `kind` wanted `at_s` seconds after the load's start."""
        begun = 0.0
        for phase in self.phases:
            if at_s < begun + phase.duration_s:
                low, high = phase.readers if kind == READ_KIND else phase.writers
                fraction = (at_s - begun) / phase.duration_s
                return round(low + (high - low) * fraction)
            begun += phase.duration_s
        return self.tail_readers if kind == READ_KIND else self.tail_writers

    def clients_max(self, kind: str) -> int:
        index = 0 if kind == READ_KIND else 1
        figures = [n for phase in self.phases for n in (phase.readers, phase.writers)[index]]
        return max(figures)

    def target_crossed_s(self) -> float | None:
        """When the connections the reader policy counts with no reader running (the
        reader and writer clients, all on the writer) first exceed the target."""
        step_s = 0.05
        for index in range(int(self.starts()["tail"] / step_s)):
            at_s = index * step_s
            if self.clients(READ_KIND, at_s) + self.clients(WRITE_KIND, at_s) > READER_TARGET:
                return at_s
        return None


QUICK = Schedule(
    phases=(
        Phase("warmup", 5.0, (1, 1), (1, 1)),
        Phase("steady", 15.0, (1, 1), (1, 1)),
        Phase("up", 10.0, (1, 8), (1, 4)),
        Phase("plateau", 25.0, (8, 8), (4, 4)),
        Phase("spike", 10.0, (12, 12), (6, 6)),
        Phase("down", 5.0, (12, 1), (6, 1)),
    ),
    tail_max_s=35.0,
    tail_readers=1,
    tail_writers=1,
    auto_pause_s=10.0,
)
FULL = Schedule(
    phases=(
        Phase("warmup", 10.0, (1, 1), (1, 1)),
        Phase("steady", 60.0, (1, 1), (1, 1)),
        Phase("up", 30.0, (1, 8), (1, 4)),
        Phase("plateau", 90.0, (8, 8), (4, 4)),
        Phase("spike", 30.0, (16, 16), (8, 8)),
        Phase("down", 15.0, (16, 1), (8, 1)),
    ),
    tail_max_s=120.0,
    tail_readers=1,
    tail_writers=1,
    auto_pause_s=30.0,
)
RAMP_PHASES = ("up", "plateau", "spike")


# --- the load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    kind: str
    began: float
    ended: float
    ok: bool


def connect(endpoint: Endpoint, timeout_s: int = CONNECT_TIMEOUT_S) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        dbname=endpoint.database,
        sslmode="disable",
        connect_timeout=timeout_s,
        autocommit=True,
    )


@dataclass
class Load:
    """Client threads following `schedule`: reader clients on `reader`, writer clients
    on `writer`. A client beyond the count its kind wants closes its connection and
    waits (the offered load falls with the schedule)."""

    schedule: Schedule
    writer: Endpoint
    reader: Endpoint
    timings: list[Timing] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.started_at = time.monotonic()
        for kind in (READ_KIND, WRITE_KIND):
            for index in range(self.schedule.clients_max(kind)):
                thread = threading.Thread(target=self._run, args=(kind, index), daemon=True)
                thread.start()
                self.threads.append(thread)
        return self

    def at_s(self) -> float:
        return time.monotonic() - self.started_at

    def finish(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in self.threads)
        if stuck:
            print(f"  {stuck} load clients still blocked in a request at the end", flush=True)

    def _run(self, kind: str, index: int) -> None:
        endpoint = self.reader if kind == READ_KIND else self.writer
        connection: psycopg.Connection[Any] | None = None
        opened_at = 0.0
        turn = index
        while not self.stop.is_set():
            if index >= self.schedule.clients(kind, self.at_s()):
                connection = _close(connection)
                self.stop.wait(IDLE_POLL_S)
                continue
            if kind == READ_KIND and time.monotonic() - opened_at > RECONNECT_S:
                connection = _close(connection)
            began = time.monotonic()
            try:
                if connection is None:
                    connection, opened_at = connect(endpoint), time.monotonic()
                turn += 1
                query_began = time.monotonic()
                self._query(connection, kind, turn)
                self.timings.append(Timing(kind, query_began, time.monotonic(), True))
            except psycopg.Error as error:
                # A failed connection attempt fails the client's query as well.
                self.timings.append(Timing(kind, began, time.monotonic(), False))
                if len(self.errors) < ERRORS_KEPT:
                    self.errors.append(f"{self.at_s():.1f}s {kind}: {error!r}"[:300])
                connection = _close(connection)
            self.stop.wait(THINK_S)
        _close(connection)

    @staticmethod
    def _query(connection: psycopg.Connection[Any], kind: str, turn: int) -> None:
        first = turn * 37 % ACCOUNTS + 1
        if kind == READ_KIND:
            connection.execute(READ, (first, first + READ_RANGE)).fetchall()
        else:
            connection.execute(WRITE, (first, first + WRITE_ROWS - 1))


def _close(connection: psycopg.Connection[Any] | None) -> None:
    """Closes `connection` if there is one; the caller forgets it (None)."""
    if connection is not None:
        connection.close()
    return None


# --- the sampler ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float
    writer: str
    writer_running: bool
    # cluster.json says paused (control_plane/pause.py), or the writer's state does.
    paused: bool
    writer_bcu: float | None
    # The writer's CPU over its last second (1.0 = one core), as the policy sees it.
    writer_cpu_fraction: float | None
    readers: tuple[str, ...]
    readers_wanted: float | None
    router_sessions: dict[str, float]


class Sampler:
    """Every SAMPLE_INTERVAL_S: cluster.json, the writer's capacity, the control
    plane's readers_wanted and the router's sessions per instance (gRPC only: no
    SQL, so the sampler never keeps an instance busy)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(JOIN_TIMEOUT_S)
        for channel in self._channels.values():
            channel.close()

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_INTERVAL_S):
            try:
                self.samples.append(self._sample())
            except (OSError, ValueError, KeyError, BorealisError) as error:
                # cluster.json mid-rewrite, or a process between states: next time.
                print(f"  sample skipped: {error!r}"[:200], flush=True)

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = rpc.sync_channel(address)
        return channel

    def _sample(self) -> Sample:
        at = time.monotonic()
        document = read_cluster_file(self.data_dir)
        instances = document["instances"]
        writer = next((i for i in instances if i["role"] == "writer"), None)
        readers = tuple(
            i["name"] for i in instances if i["role"] == "reader" and i["state"] == "running"
        )
        writer_running = bool(
            writer and writer["state"] == "running" and pid_alive(writer.get("pid"))
        )
        paused = bool(document.get("paused")) or bool(writer and writer["state"] == "paused")
        state = self._capacity(writer["address"]) if writer and writer_running else None
        control = self._metrics(document["control_plane"]["address"])
        router = self._metrics(document["router"]["address"]) if document.get("router") else {}
        sessions = {}
        for key, value in router.items():
            match = _SESSIONS.match(key)
            if match:
                sessions[match.group(1)] = value
        return Sample(
            at,
            writer["name"] if writer else "",
            writer_running,
            paused,
            None if state is None else float(state.bcu),
            None if state is None else float(state.signals.cpu_fraction),
            readers,
            control.get(READERS_WANTED_METRIC),
            sessions,
        )

    def _capacity(self, address: str) -> capacity_pb2.CapacityState | None:
        stub = capacity_pb2_grpc.CapacityStub(self._channel(address))
        try:
            return stub.GetCapacity(capacity_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            return None

    def _metrics(self, address: str) -> dict[str, float]:
        stub = admin_pb2_grpc.AdminStub(self._channel(address))
        try:
            response = stub.GetMetrics(admin_pb2.GetMetricsRequest(), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            return {}
        return metrics.parse(response.text)


# --- the cluster through the CLI ----------------------------------------------------------


def borealis_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("borealis")
    return subprocess.run(
        [str(executable), *arguments],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def auto_pause_offered() -> bool:
    """Whether `borealis up --help` offers --auto-pause-s."""
    return "--auto-pause-s" in borealis_cli("up", "--help").stdout


@contextmanager
def borealis_cluster(data_dir: Path, auto_pause_s: float | None) -> Iterator[None]:
    """`borealis up` with the scaling bounds, then `scaling set`; `down` on the way out."""
    base_port = PortAllocator().allocate()
    arguments = ["--data-dir", str(data_dir), "--base-port", str(base_port)]
    arguments += ["--storage-set", "log_level=warning", "--instance-set", "log_level=warning"]
    arguments += ["--min-capacity", str(MIN_CAPACITY_BCU), "--max-capacity", str(MAX_CAPACITY_BCU)]
    arguments += ["--min-readers", str(MIN_READERS), "--max-readers", str(MAX_READERS)]
    if auto_pause_s is not None:
        arguments += ["--auto-pause-s", str(auto_pause_s)]
    started = time.monotonic()
    try:
        done = borealis_cli("up", *arguments)
        if done.returncode != 0:
            raise Unavailable(f"borealis up failed:\n{done.stdout}{done.stderr}")
        print(f"  borealis up: {time.monotonic() - started:.1f}s", flush=True)
        # The samples' gRPC calls go with the cluster's credentials.
        configure_transport_from(read_cluster_file(data_dir))
        settings = [item for pair in SCALING_SET.items() for item in map(str, pair)]
        done = borealis_cli("scaling", "set", "--data-dir", str(data_dir), *settings)
        if done.returncode != 0:
            raise Unavailable(f"borealis scaling set failed:\n{done.stdout}{done.stderr}")
        print(f"  {done.stdout.strip()}", flush=True)
        yield
    finally:
        down = borealis_cli("down", "--data-dir", str(data_dir))
        print(f"  {down.stdout.strip()}", flush=True)


def scaling_history(data_dir: Path) -> list[dict[str, Any]]:
    done = borealis_cli("scaling", "history", "--data-dir", str(data_dir), "--limit", "0", "--json")
    if done.returncode != 0:
        raise Unavailable(f"borealis scaling history failed:\n{done.stdout}{done.stderr}")
    history: list[dict[str, Any]] = json.loads(done.stdout)
    return history


def print_history(history: list[dict[str, Any]], clock_offset_s: float, started_at: float) -> None:
    """The applied decisions, in seconds since the load began, with their main inputs."""
    shown = ("cpu_fraction", "cpu_share_used", "connections", "metric_total", "queued_statements")
    for event in history:
        at_s = event["time_unix_s"] - clock_offset_s - started_at
        inputs = " ".join(
            f"{key}={event['inputs'][key]:g}" for key in shown if key in event["inputs"]
        )
        failed = f" FAILED: {event['error']}" if event["error"] else ""
        print(
            f"  {at_s:6.1f}s {event['kind']} {event['instance']}: {event['from']:g} -> "
            f"{event['to']:g} ({event['reason']}; {inputs}){failed}"[:300],
            flush=True,
        )


def reader_endpoint_of(data_dir: Path, writer: Endpoint) -> Endpoint:
    return endpoint_of_url(read_cluster_file(data_dir)["endpoints"]["reader"], writer.password)


def create_schema(endpoint: Endpoint) -> None:
    rows = ", ".join(f"({account}, 0)" for account in range(1, ACCOUNTS + 1))
    with connect(endpoint) as connection:
        connection.execute(SCHEMA)
        connection.execute(f"INSERT INTO bench_accounts (id, balance) VALUES {rows}")


# --- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    schedule: Schedule
    load: Load
    sampler: Sampler
    history: list[dict[str, Any]]
    # time.time() - time.monotonic() at the start: history times to monotonic ones.
    clock_offset_s: float
    tail_ended_at: float
    pause: dict[str, Any]


def run(work: Path, schedule: Schedule) -> Run:
    data_dir = work / "cluster"
    pause_offered = auto_pause_offered()
    auto_pause_s = schedule.auto_pause_s if pause_offered else None
    clock_offset_s = time.time() - time.monotonic()
    with borealis_cluster(data_dir, auto_pause_s):
        writer = endpoint_of_cluster(data_dir)
        create_schema(writer)
        sampler = Sampler(data_dir).start()
        load = Load(schedule, writer, reader_endpoint_of(data_dir, writer))
        try:
            load.start()
            tail_ended_at = _follow(schedule, load, sampler)
        finally:
            load.finish()
        try:
            if pause_offered:
                pause = measure_resume(data_dir, writer, sampler, schedule.auto_pause_s)
            else:
                pause = {"resume_s": None, "reason": "borealis up offers no --auto-pause-s"}
        finally:
            sampler.finish()
        history = scaling_history(data_dir)
    print_history(history, clock_offset_s, load.started_at)
    return Run(schedule, load, sampler, history, clock_offset_s, tail_ended_at, pause)


def _follow(schedule: Schedule, load: Load, sampler: Sampler) -> float:
    """Prints each phase as it begins; after the last, waits (bounded) for the readers
    to be back at the minimum. The moment the tail ended."""
    starts = schedule.starts()
    for name, start_s in starts.items():
        pause_s = start_s - load.at_s()
        if pause_s > 0:
            load.stop.wait(pause_s)
        latest = sampler.latest()
        state = f"writer {latest.writer_bcu} BCU, readers {list(latest.readers)}" if latest else "-"
        print(f"  {load.at_s():6.1f}s {name}: {state}", flush=True)
    deadline = time.monotonic() + schedule.tail_max_s
    while time.monotonic() < deadline:
        latest = sampler.latest()
        if latest is not None and len(latest.readers) <= MIN_READERS:
            break
        load.stop.wait(SAMPLE_INTERVAL_S)
    return time.monotonic()


def measure_resume(
    data_dir: Path, writer: Endpoint, sampler: Sampler, auto_pause_s: float
) -> dict[str, Any]:
    """With no client left: waits (bounded) for the writer to stop running, then
    times a new connection's first query through the writer endpoint."""
    began = time.monotonic()
    deadline = began + auto_pause_s + PAUSE_MARGIN_S
    paused_at = None
    while time.monotonic() < deadline:
        latest = sampler.latest()
        if latest is not None and latest.at > began and latest.paused:
            paused_at = latest.at
            break
        sampler.stop.wait(SAMPLE_INTERVAL_S)
    if paused_at is None:
        waited_s = time.monotonic() - began
        reason = (
            f"the idle cluster did not pause within {waited_s:.0f} s of the load stopping "
            f"(--auto-pause-s {auto_pause_s:g})"
        )
        print(f"  resume not measured: {reason}", flush=True)
        return {"resume_s": None, "reason": reason}
    connect_began = time.monotonic()
    try:
        with connect(writer, RESUME_CONNECT_TIMEOUT_S) as connection:
            row = connection.execute("SELECT count(*) FROM bench_accounts").fetchone()
    except psycopg.Error as error:
        reason = f"paused after {paused_at - began:.1f} s idle, but the resume failed: {error!r}"
        print(f"  {reason}", flush=True)
        return {"resume_s": None, "reason": reason[:300], "resume_failed": True}
    resume_s = time.monotonic() - connect_began
    assert row == (ACCOUNTS,), row
    # The control plane's own figure: from the router's resume request to the writer
    # serving (cluster.json, control_plane/pause.py).
    resume_ms_last = (read_cluster_file(data_dir).get("pause") or {}).get("resume_ms_last")
    print(
        f"  paused {paused_at - began:.1f}s after the load stopped; a new connection's "
        f"first query answered {resume_s:.3f}s after it began (the control plane's "
        f"resume: {resume_ms_last} ms to the writer serving)",
        flush=True,
    )
    return {
        "resume_s": resume_s,
        "paused_after_idle_s": paused_at - began,
        "resume_control_plane_ms": resume_ms_last,
        "reason": "",
    }


# --- the figures ------------------------------------------------------------------------


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def capacity_figures(result: Run, writer: str) -> dict[str, Any]:
    """The writer's first step up after the ramp began: decision and serving."""
    load, starts = result.load, result.schedule.starts()
    ramp_at = load.started_at + starts["up"]
    ups = [
        event
        for event in result.history
        if event["kind"] == "capacity"
        and event["instance"] == writer
        and event["to"] > event["from"]
        and not event["error"]
        and event["time_unix_s"] - result.clock_offset_s >= ramp_at
    ]
    figures: dict[str, Any] = {"capacity_decision_s": None, "capacity_serving_s": None}
    if ups:
        figures.update(_first_step(result, ups[0], ramp_at))
    bcus = [s.writer_bcu for s in result.sampler.samples if s.writer_bcu is not None]
    steps = [e for e in result.history if e["kind"] == "capacity" and e["instance"] == writer]
    figures["capacity_peak_bcu"] = max(bcus, default=None)
    figures["capacity_end_bcu"] = bcus[-1] if bcus else None
    figures["capacity_in_bounds"] = all(
        MIN_CAPACITY_BCU <= bcu <= MAX_CAPACITY_BCU and _on_grid(bcu) for bcu in bcus
    ) and all(_on_grid(e["to"]) for e in steps)
    figures["capacity_changes"] = len(steps)
    figures["capacity_rose_and_fell"] = bool(
        bcus and figures["capacity_peak_bcu"] > bcus[0] and bcus[-1] < figures["capacity_peak_bcu"]
    )
    return figures


def _first_step(result: Run, step: dict[str, Any], ramp_at: float) -> dict[str, Any]:
    """Decision and serving of one step up, from the load that led to it."""
    samples, timings = result.sampler.samples, result.load.timings
    decided_at = step["time_unix_s"] - result.clock_offset_s
    hot_at = hot_run_began(samples, ramp_at, decided_at, step["from"])
    figures: dict[str, Any] = {
        "capacity_first_step": f"{step['from']:g} -> {step['to']:g} BCU",
        "capacity_decision_from_ramp_s": decided_at - ramp_at,
        "capacity_hot_from_ramp_s": None if hot_at is None else hot_at - ramp_at,
    }
    if hot_at is None:
        return figures
    figures["capacity_decision_s"] = decided_at - hot_at
    seen = next(
        (s.at for s in samples if s.at >= ramp_at and (s.writer_bcu or 0) >= step["to"]), None
    )
    answered = None
    if seen is not None:
        answered = next(
            (t.ended for t in timings if t.ok and t.kind == WRITE_KIND and t.began >= seen), None
        )
    if answered is not None:
        figures["capacity_serving_s"] = answered - hot_at
    return figures


def hot_run_began(
    samples: list[Sample], after: float, decided_at: float, bcu: float
) -> float | None:
    """When the run of samples that led to a step up from `bcu` began: the writer's
    CPU above the policy's threshold for `bcu` in every sample from then until the
    decision (the load the policy reacts to, sustained). None if the samples right
    before the decision were not hot (the policy saw another signal)."""
    settings = CapacitySettings()
    threshold = settings.cpu_high_fraction * bcu * settings.cpu_cores_per_bcu
    run_began: float | None = None
    for sample in samples:
        if not after <= sample.at <= decided_at or sample.writer_cpu_fraction is None:
            continue
        if sample.writer_cpu_fraction > threshold:
            run_began = sample.at if run_began is None else run_began
        else:
            run_began = None
    return run_began


def _on_grid(bcu: float) -> bool:
    return math.isclose(bcu / BCU_STEP, round(bcu / BCU_STEP), abs_tol=1e-9)


def reader_figures(result: Run) -> dict[str, Any]:
    """Decision and serving of the readers added after the load began."""
    load, samples = result.load, result.sampler.samples
    crossed_s = result.schedule.target_crossed_s()
    figures: dict[str, Any] = {"reader_decision_s": None, "reader_serving_s": None}
    if crossed_s is None:
        return figures
    crossed_at = load.started_at + crossed_s
    initial = set(samples[0].readers) if samples else set()
    decided_at = next(
        (s.at for s in samples if s.at >= crossed_at and (s.readers_wanted or 0) > len(s.readers)),
        None,
    )
    if decided_at is not None:
        figures["reader_decision_s"] = decided_at - crossed_at
    added: list[str] = []
    for sample in samples:
        added += [name for name in sample.readers if name not in initial and name not in added]
    serving = []
    for name in added:
        first = next((s.at for s in samples if s.router_sessions.get(name, 0) > 0), None)
        if first is not None:
            serving.append((first, name))
    serving.sort()
    if serving:
        figures["reader_serving_s"] = serving[0][0] - crossed_at
        figures["readers_serving_s"] = {name: round(at - crossed_at, 3) for at, name in serving}
    figures["readers_added"] = added
    figures["readers_peak"] = max((len(s.readers) for s in samples), default=0)
    down_at = load.started_at + result.schedule.starts()["down"]
    back = next((s.at for s in samples if s.at >= down_at and len(s.readers) <= MIN_READERS), None)
    figures["readers_back_to_min_s"] = None if back is None else back - down_at
    figures["readers_wanted_from_load_s"] = round(crossed_s, 2)
    return figures


def latency_figures(result: Run) -> dict[str, Any]:
    load, starts = result.load, result.schedule.starts()
    bounds = list(starts.items()) + [("end", result.tail_ended_at - load.started_at)]
    by_phase: dict[str, list[float]] = {name: [] for name, _ in bounds[:-1]}
    for timing in load.timings:
        if not timing.ok:
            continue
        at_s = timing.began - load.started_at
        for (name, start_s), (_, end_s) in zip(bounds, bounds[1:], strict=False):
            if start_s <= at_s < end_s:
                by_phase[name].append((timing.ended - timing.began) * 1000)
                break
    ramp = [ms for name in RAMP_PHASES for ms in by_phase[name]]
    steady_p99 = percentile(by_phase["steady"], 0.99)
    ramp_p99 = percentile(ramp, 0.99)
    figures: dict[str, Any] = {
        f"latency_{name}_p99_ms": _round(percentile(values, 0.99), 1)
        for name, values in by_phase.items()
    }
    figures["latency_steady_p99_ms"] = _round(steady_p99, 1)
    figures["latency_ramp_p99_ms"] = _round(ramp_p99, 1)
    figures["latency_ramp_over_steady"] = (
        _round(ramp_p99 / steady_p99, 2) if steady_p99 and not math.isnan(steady_p99) else None
    )
    figures["latency_steady_p50_ms"] = _round(percentile(by_phase["steady"], 0.5), 1)
    figures["latency_ramp_p50_ms"] = _round(percentile(ramp, 0.5), 1)
    return figures


def summarise(result: Run, work: Path) -> dict[str, Any]:
    samples = result.sampler.samples
    writer = samples[0].writer if samples else "w1"
    capacity = capacity_figures(result, writer)
    readers = reader_figures(result)
    latency = latency_figures(result)
    timings = result.load.timings
    failed = [t for t in timings if not t.ok]
    pause = result.pause
    summary: dict[str, Any] = {
        "quick": result.schedule is QUICK,
        "cpus": os.cpu_count(),
        "filesystem": filesystem_of(work),
        "load_s": round(result.tail_ended_at - result.load.started_at, 1),
        "queries_ok": len(timings) - len(failed),
        "queries_failed": len(failed),
        "queries_failed_read": sum(t.kind == READ_KIND for t in failed),
        "queries_failed_write": sum(t.kind == WRITE_KIND for t in failed),
        "writer_capacity_decision_s": _round(capacity.pop("capacity_decision_s")),
        "writer_capacity_serving_s": _round(capacity.pop("capacity_serving_s")),
        "writer_capacity_hot_from_ramp_s": _round(capacity.pop("capacity_hot_from_ramp_s", None)),
        "writer_capacity_decision_from_ramp_s": _round(
            capacity.pop("capacity_decision_from_ramp_s", None)
        ),
        **{f"writer_{key}": value for key, value in capacity.items()},
        "reader_decision_s": _round(readers.pop("reader_decision_s")),
        "reader_serving_s": _round(readers.pop("reader_serving_s")),
        "readers_back_to_min_s": _round(readers.pop("readers_back_to_min_s"), 1),
        **readers,
        **latency,
        "resume_s": _round(pause.get("resume_s")),
        "resume_not_measured_reason": pause.get("reason") or None,
        "paused_after_idle_s": _round(pause.get("paused_after_idle_s"), 1),
        "resume_control_plane_ms": pause.get("resume_control_plane_ms"),
        "scaling_events": len(result.history),
    }
    summary["decision_target_met"] = _within(
        [summary["writer_capacity_decision_s"], summary["reader_decision_s"]], TARGET_DECISION_S
    )
    summary["reader_serving_target_met"] = _within(
        [summary["reader_serving_s"]], TARGET_READER_SERVING_S
    )
    summary["resume_target_met"] = (
        None if summary["resume_s"] is None else summary["resume_s"] < TARGET_RESUME_S
    )
    summary["no_failed_queries"] = not failed
    summary["client_errors_first"] = result.load.errors[:5]
    return summary


def _within(values: list[float | None], target_s: float) -> bool:
    """All measured and under the target (an unmeasured figure misses it)."""
    return all(value is not None and value < target_s for value in values)


def records(summary: dict[str, Any]) -> list[dict[str, object]]:
    rows = [report.record(f"{NAME}_queries_failed", summary["queries_failed"], "queries", False)]
    for key in (
        "writer_capacity_decision_s",
        "writer_capacity_serving_s",
        "reader_decision_s",
        "reader_serving_s",
        "resume_s",
    ):
        if summary[key] is not None:
            rows.append(report.record(f"{NAME}_{key}", summary[key], "s", False))
    for key in ("latency_steady_p99_ms", "latency_ramp_p99_ms"):
        if summary[key] is not None:
            rows.append(report.record(f"{NAME}_{key}", summary[key], "ms", False))
    return rows


# --- the timeline -------------------------------------------------------------------------


def per_second(result: Run) -> dict[str, list[float]]:
    """Offered clients, answered queries and p99 latency (ms) in each second of the load."""
    load = result.load
    seconds = max(1, math.ceil(result.tail_ended_at - load.started_at))
    latencies: list[list[float]] = [[] for _ in range(seconds)]
    for timing in load.timings:
        index = int(timing.ended - load.started_at)
        if timing.ok and 0 <= index < seconds:
            latencies[index].append((timing.ended - timing.began) * 1000)
    schedule = result.schedule
    return {
        "second": [float(s) for s in range(seconds)],
        "reader_clients": [float(schedule.clients(READ_KIND, s + 0.5)) for s in range(seconds)],
        "writer_clients": [float(schedule.clients(WRITE_KIND, s + 0.5)) for s in range(seconds)],
        "queries": [float(len(values)) for values in latencies],
        "p99_ms": [percentile(values, 0.99) for values in latencies],
    }


def plot(result: Run, summary: dict[str, Any]) -> None:
    """Three panels on one time axis: offered load, capacity and readers, p99 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = per_second(result)
    start = result.load.started_at
    figure, (load_axes, capacity_axes, latency_axes) = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True
    )
    load_axes.step(series["second"], series["reader_clients"], where="post", label="reader clients")
    load_axes.step(series["second"], series["writer_clients"], where="post", label="writer clients")
    load_axes.set_ylabel("offered load, clients")
    answered = load_axes.twinx()
    answered.plot(series["second"], series["queries"], color="#a5a5a5", linewidth=1)
    answered.set_ylabel("queries answered / s", color="#707070")
    load_axes.legend(loc="upper left", fontsize=8)
    figure.suptitle(
        f"{NAME}: failed queries {summary['queries_failed']}; capacity decision "
        f"{summary['writer_capacity_decision_s']} s, reader serving {summary['reader_serving_s']} s"
    )
    samples = result.sampler.samples
    moments = [s.at - start for s in samples]
    capacity_axes.step(
        moments,
        [math.nan if s.writer_bcu is None else s.writer_bcu for s in samples],
        where="post",
        color="#3b6ea5",
        label="writer capacity",
    )
    capacity_axes.set_ylabel("writer capacity, BCU", color="#3b6ea5")
    capacity_axes.set_ylim(0, MAX_CAPACITY_BCU + 0.5)
    reader_axes = capacity_axes.twinx()
    reader_axes.step(moments, [len(s.readers) for s in samples], where="post", color="#b03030")
    reader_axes.set_ylabel("readers", color="#b03030")
    reader_axes.set_ylim(-0.2, MAX_READERS + 0.5)
    latency_axes.plot(series["second"], series["p99_ms"], color="#3b6ea5")
    latency_axes.set_ylabel("p99 latency, ms")
    latency_axes.set_ylim(bottom=0)
    latency_axes.set_xlabel("seconds since the load began")
    for name, start_s in result.schedule.starts().items():
        for axes in (load_axes, capacity_axes, latency_axes):
            axes.axvline(start_s, color="#cccccc", linestyle=":", linewidth=1)
        load_axes.text(start_s, 1.01, name, fontsize=7, transform=load_axes.get_xaxis_transform())
    figure.tight_layout()
    figure.savefig(report.RESULTS_DIR / f"{NAME}.png", dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a ramp of about 2 minutes")
    args = parser.parse_args()
    schedule = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="borealis-autoscale-"))
    phases = ", ".join(f"{p.name} {p.duration_s:g}s" for p in schedule.phases)
    print(
        f"{NAME}: control plane, 6 storage nodes, writer, 0..{MAX_READERS} readers, router and "
        f"up to {schedule.clients_max(READ_KIND)} reader + {schedule.clients_max(WRITE_KIND)} "
        f"writer clients on {os.cpu_count()} shared CPUs; files on {filesystem_of(work)} "
        f"({work}); phases {phases}, then the steady level until readers are back at "
        f"{MIN_READERS} (at most {schedule.tail_max_s:g}s). Expect: decisions < "
        f"{TARGET_DECISION_S:g}s, a new reader serving < {TARGET_READER_SERVING_S:g}s, "
        f"0 failed queries, resume < {TARGET_RESUME_S:g}s.",
        flush=True,
    )
    try:
        result = run(work, schedule)
        summary = summarise(result, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    chart = {
        key: summary[key]
        for key in ("writer_capacity_decision_s", "reader_decision_s", "reader_serving_s")
        if summary[key] is not None
    }
    # report.write's bar chart is replaced by the timeline below.
    report.write(NAME, records(summary), chart, "s")
    plot(result, summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
