"""Failover on real processes: the control plane (its Supervisor and gRPC API, run in
this process as `python -m control_plane` runs them) supervises a LocalCluster with a
router, while a client writes through the writer endpoint and records every
acknowledged commit.

1. kill -9 the writer with one reader: the reader is promoted within a bound, writes
   succeed again through the writer endpoint, every acknowledged row is present, and
   the old writer comes back as a reader (and fails over back again: several rounds,
   each measured as time to the first successful write after the kill).
2. A writer that stops heartbeating (SIGSTOP) is declared dead after
   writer_dead_after_ms and fenced; a reader is promoted.
3. `borealis failover --target r1` (the CLI, through the gRPC API) with two readers:
   no acknowledged commit lost, r1 is the writer, the old writer a reader, and the
   other reader follows the new writer.
4. Without readers, a killed writer is restarted in place.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from borealis.wait import wait_until
from control_plane.failover import FailoverPolicy, FailoverSettings
from control_plane.supervisor import RestartPolicy, Supervisor
from deploy.local import LocalCluster, pid_alive
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.support.supervised import supervised

pytestmark = pytest.mark.integration

SETTINGS = FailoverSettings(heartbeat_interval_ms=100, writer_dead_after_ms=1000)
# The router notices health changes within one health interval; the default (500 ms)
# would add up to that much to every failover measured here.
ROUTER = {"health_interval_ms": 100, "topology_poll_ms": 100}
# A promoted reader starts a Python process and runs recovery; well inside this.
FAILOVER_BOUND_S = 30.0
REJOIN_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 2
# A small write load: one insert at a time, paced, so the two cores are not saturated.
LOAD_PAUSE_S = 0.01
LOAD_RETRY_PAUSE_S = 0.05
CLI_TIMEOUT_S = 120.0
# More rounds for a measurement: BOREALIS_FAILOVER_KILL_ROUNDS=10.
KILL_ROUNDS = int(os.environ.get("BOREALIS_FAILOVER_KILL_ROUNDS", "3"))
# Errors the failovers here cause on purpose (a killed writer's readers and router
# lose it; a fenced writer's shipping fails).
EXPECTED_ERRORS = ("redo stream ended", "heartbeat failed", "StaleEpoch", "fenced")


@dataclass
class Running:
    cluster: LocalCluster
    supervisor: Supervisor
    control_plane_port: int

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.cluster.data_dir / "cluster.json").read_text())
        return document

    def roles(self) -> dict[str, tuple[str, str]]:
        """name -> (role, state) as cluster.json says."""
        return {i["name"]: (i["role"], i["state"]) for i in self.document()["instances"]}

    def writer_url(self) -> str:
        return str(self.document()["endpoints"]["writer"])

    def connect(self, url: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            url,
            password=self.cluster.password,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
        )

    def writer_pid(self) -> int:
        pid = self.cluster.writer().pid
        assert pid is not None
        return pid


@dataclass
class WriteLoad:
    """One client inserting rows through the writer endpoint, reconnecting on any
    error; records each acknowledged id with the times its attempt began and was
    acknowledged (an attempt begun before a kill may be acknowledged after it)."""

    running: Running
    table: str
    # (id, attempt began, acknowledged), monotonic seconds.
    acknowledged: list[tuple[int, float, float]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> WriteLoad:
        with self.running.connect(self.running.writer_url()) as connection:
            connection.execute(f"CREATE TABLE {self.table} (id integer PRIMARY KEY, note text)")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(CONNECT_TIMEOUT_S * 5)
        assert not self.thread.is_alive(), "the load did not stop"

    def _run(self) -> None:
        url = self.running.writer_url()
        connection: psycopg.Connection[Any] | None = None
        next_id = 0
        while not self.stop.is_set():
            # A fresh id per attempt: an attempt that failed may still have committed.
            next_id += 1
            began = time.monotonic()
            try:
                if connection is None:
                    connection = self.running.connect(url)
                connection.execute(
                    f"INSERT INTO {self.table} (id, note) VALUES (%s, 'x')", (next_id,)
                )
                self.acknowledged.append((next_id, began, time.monotonic()))
                self.stop.wait(LOAD_PAUSE_S)
            except psycopg.Error:
                self.errors += 1
                if connection is not None:
                    connection.close()
                connection = None
                self.stop.wait(LOAD_RETRY_PAUSE_S)
        if connection is not None:
            connection.close()

    def acknowledged_after(self, moment: float) -> int:
        """Acknowledged writes whose attempt began after `moment`."""
        return sum(1 for _, began, _ in self.acknowledged if began > moment)

    def first_after(self, moment: float) -> float | None:
        """When the first write begun after `moment` was acknowledged."""
        later = [acked for _, began, acked in self.acknowledged if began > moment]
        return min(later) if later else None

    def check_all_present(self) -> None:
        ids = {each for each, _, _ in self.acknowledged}
        with self.running.connect(self.running.writer_url()) as connection:
            rows = connection.execute(f"SELECT id FROM {self.table}").fetchall()
        missing = ids - {row[0] for row in rows}
        assert not missing, f"{len(missing)} acknowledged rows lost: {sorted(missing)[:10]}"


def start_running(
    tmp_path: Path, ports: PortAllocator, readers: int, settings: FailoverSettings = SETTINGS
) -> Iterator[Running]:
    cluster = LocalCluster(
        tmp_path / "cluster",
        ports=ports,
        writer=True,
        readers=readers,
        router=True,
        storage_overrides=FAST_STORAGE,
        router_overrides=ROUTER,
    )
    port = ports.allocate()
    # Restarts quickly after a kill, and no give-up within a test's few kills.
    restarts = RestartPolicy(backoff_initial_s=0.2, restarts_max=20)
    supervisor = Supervisor(cluster, port, policy=restarts, failover=FailoverPolicy(settings))
    with supervised(cluster, supervisor, port, EXPECTED_ERRORS):
        yield Running(cluster, supervisor, port)


@pytest.fixture
def one_reader(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, readers=1)


@pytest.fixture
def two_readers(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, readers=2)


@pytest.fixture
def no_reader(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, readers=0)


def wait_for_acks(load: WriteLoad, after: float, count: int, timeout_s: float) -> float:
    """Waits for `count` acknowledgements after `after`; the time of the first."""
    wait_until(
        lambda: load.acknowledged_after(after) >= count,
        timeout_s,
        what=f"{count} acknowledged writes",
    )
    first = load.first_after(after)
    assert first is not None
    return first


def wait_rejoined_as_reader(running: Running, name: str) -> None:
    """`name` runs as a reader again, and follows the writer (heartbeats as a reader)."""

    def rejoined() -> bool:
        beat = running.supervisor.failover.last_heartbeat(name)
        return (
            running.roles()[name] == ("reader", "running")
            and beat is not None
            and (beat.role == "reader")
        )

    wait_until(rejoined, REJOIN_TIMEOUT_S, interval_s=0.1, what=f"{name} to rejoin as a reader")


def kill_writer_and_measure(running: Running, load: WriteLoad) -> tuple[str, str, float]:
    """kill -9 the writer; (old writer, new writer, seconds to the first acknowledged write)."""
    old = running.cluster.writer().name
    wait_for_acks(load, time.monotonic(), 5, FAILOVER_BOUND_S)
    killed_at = time.monotonic()
    os.kill(running.writer_pid(), signal.SIGKILL)
    first = wait_for_acks(load, killed_at, 1, FAILOVER_BOUND_S)
    new = running.cluster.writer().name
    return old, new, first - killed_at


def test_kill_writer_promotes_the_reader_and_old_writer_rejoins(one_reader: Running) -> None:
    running = one_reader
    times_s: list[float] = []
    with WriteLoad(running, "kill_load") as load:
        for _ in range(KILL_ROUNDS):
            old, new, seconds = kill_writer_and_measure(running, load)
            times_s.append(seconds)
            assert new != old, "a reader was promoted, not the writer restarted"
            assert running.roles()[new] == ("writer", "running")
            wait_rejoined_as_reader(running, old)
        wait_for_acks(load, time.monotonic(), 5, FAILOVER_BOUND_S)
    load.check_all_present()
    assert running.supervisor.failovers_total == KILL_ROUNDS
    # The rejoined reader serves every acknowledged row too.
    reader = next(name for name, (role, _) in running.roles().items() if role == "reader")
    url = running.document()["endpoints"]["instances"][reader]
    expected = len(load.acknowledged)

    def reader_has_all() -> bool:
        with running.connect(url) as connection:
            row = connection.execute("SELECT count(*) FROM kill_load").fetchone()
        return row is not None and row[0] >= expected

    wait_until(reader_has_all, REJOIN_TIMEOUT_S, interval_s=0.2, what="the reader to catch up")
    print(
        f"\ntime to first successful write after kill -9 (s): {[round(t, 3) for t in times_s]}"
        f" p50={statistics.median(times_s):.3f} max={max(times_s):.3f}"
        f" acknowledged={len(load.acknowledged)} client_errors={load.errors}"
    )


def test_silent_writer_is_declared_dead_and_fenced(one_reader: Running) -> None:
    running = one_reader
    with WriteLoad(running, "hang_load") as load:
        wait_for_acks(load, time.monotonic(), 5, FAILOVER_BOUND_S)
        old = running.cluster.writer()
        stopped_pid = running.writer_pid()
        stopped_at = time.monotonic()
        os.kill(stopped_pid, signal.SIGSTOP)
        try:
            first = wait_for_acks(load, stopped_at, 3, FAILOVER_BOUND_S)
        finally:
            # Never leave a stopped process behind, even when the test fails.
            if old.pid == stopped_pid and old.is_running():
                os.kill(stopped_pid, signal.SIGCONT)
        assert first - stopped_at >= SETTINGS.writer_dead_after_ms / 1000
        assert running.cluster.writer().name == "r1"
        assert not pid_alive(stopped_pid), "the hung writer was killed (fenced)"
        wait_rejoined_as_reader(running, old.name)
        assert old.pid != stopped_pid
    load.check_all_present()


def borealis_cli(*args: str) -> subprocess.CompletedProcess[str]:
    borealis = Path(sys.executable).with_name("borealis")
    return subprocess.run(
        [str(borealis), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )


def test_planned_failover_through_the_cli_loses_nothing(two_readers: Running) -> None:
    running = two_readers
    data_dir = str(running.cluster.data_dir)
    with WriteLoad(running, "planned_load") as load:
        wait_for_acks(load, time.monotonic(), 20, FAILOVER_BOUND_S)
        began = time.monotonic()
        done = borealis_cli("failover", "--target", "r1", "--data-dir", data_dir)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "r1 is the writer, w1 a reader" in done.stdout
        print(f"\n{done.stdout.strip()}")
        assert running.roles() == {
            "w1": ("reader", "running"),
            "r1": ("writer", "running"),
            "r2": ("reader", "running"),
        }
        wait_for_acks(load, began, 20, FAILOVER_BOUND_S)
        wait_rejoined_as_reader(running, "w1")
        # A target that is not a reader is refused, and nothing changes.
        refused = borealis_cli("failover", "--target", "r1", "--data-dir", data_dir)
        assert refused.returncode == 1 and "no reader can be promoted" in refused.stderr
        assert running.cluster.writer().name == "r1"
    load.check_all_present()
    # The other reader follows the new writer: the last acknowledged row shows on it.
    last = load.acknowledged[-1][0]
    url = running.document()["endpoints"]["instances"]["r2"]

    def r2_has_last() -> bool:
        with running.connect(url) as connection:
            query = "SELECT count(*) FROM planned_load WHERE id = %s"
            row = connection.execute(query, (last,)).fetchone()
        return row == (1,)

    wait_until(r2_has_last, REJOIN_TIMEOUT_S, interval_s=0.2, what="r2 to follow the new writer")
    # The roles are in the config files: a reopened cluster keeps them.
    reopened = LocalCluster.reopen(running.cluster.data_dir)
    assert {i.name: i.role for i in reopened.instances} == {
        "r1": "writer",
        "r2": "reader",
        "w1": "reader",
    }


def test_without_readers_the_writer_is_restarted(no_reader: Running) -> None:
    running = no_reader
    with WriteLoad(running, "restart_load") as load:
        old, new, seconds = kill_writer_and_measure(running, load)
        assert old == new == "w1"
        wait_for_acks(load, time.monotonic(), 5, FAILOVER_BOUND_S)
    load.check_all_present()
    assert running.supervisor.failovers_total == 0
    print(f"\nwriter restarted in place: first write {seconds:.3f} s after kill -9")
