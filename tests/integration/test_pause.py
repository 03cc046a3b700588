"""Pause and resume on real processes (issue 7, must-hold 3): a supervised cluster
(a writer, a reader, a router) with auto_pause_s 2 s.

While a client runs queries, and while it only holds its connection open, the
cluster does not pause. Once it is idle it pauses: the reader's process is gone,
the writer's is parked (alive, its PostgreSQL port closed), storage and the router
stay up, cluster.json says paused. A new psql
connection through the writer endpoint resumes it and its first query returns the
data written before the pause; the resume time is recorded (cluster.json, the
control plane's metrics) and the router logs how long it held the login. After it
pauses again, a psycopg connection resumes it the same way. `borealis status`
shows the pause and the last resume; `borealis pause` and `resume` work by hand.
The resumes reuse the parked writer's process; when that process is gone (killed
while paused), a resume starts a new one.

The pause policy (sans-IO) is checked first, with a fake clock.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from borealis.cli import main as cli
from borealis.wait import wait_until
from compute_node.config import PARKED_FILE
from control_plane.pause import Activity, PausePolicy
from control_plane.scaling import ScalingSettings
from control_plane.supervisor import Supervisor
from deploy.local import LocalCluster, pid_alive
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.support.supervised import supervised

AUTO_PAUSE_S = 2.0
# A login waits this long for the resume (a process start and recovery on a busy
# machine), far above the second or two it takes.
ROUTER = {"health_interval_ms": 100, "topology_poll_ms": 100, "login_wait_ms": 30_000}
SETTINGS = ScalingSettings(min_capacity_bcu=1.0, max_capacity_bcu=1.0, auto_pause_s=AUTO_PAUSE_S)
# From the last activity to the pause: the quiet time, a sample, the instances' stop.
PAUSE_BOUND_S = AUTO_PAUSE_S + 15.0
CLIENT_TIMEOUT_S = 40.0
QUERY_INTERVAL_S = 0.3
ROWS = 200
PSQL = "/usr/bin/psql"
EXPECTED_ERRORS = ("redo stream ended",)


def quiet(name: str, idle_for_s: float) -> Activity:
    return Activity(name, idle_for_s, connections=0)


@pytest.mark.unit
def test_policy_pauses_only_after_the_whole_cluster_is_quiet_long_enough() -> None:
    policy = PausePolicy()
    policy.reset(0.0)
    # The writer is quiet, a reader ran a statement 0.5 s ago: quiet for 0.5 s.
    decision = policy.observe(10.0, 2.0, [quiet("w1", 10.0), quiet("r1", 0.5)], 0)
    assert not decision.pause and decision.quiet_for_s == pytest.approx(0.5)
    assert not policy.observe(11.0, 2.0, [quiet("w1", 11.0), quiet("r1", 1.5)], 0).pause
    decision = policy.observe(11.5, 2.0, [quiet("w1", 11.5), quiet("r1", 2.0)], 0)
    assert decision.pause and decision.quiet_for_s == pytest.approx(2.0)


@pytest.mark.unit
def test_policy_a_connection_or_an_unanswered_instance_counts_as_activity() -> None:
    policy = PausePolicy()
    policy.reset(0.0)
    # No statement for long, but a client holds a connection (idle in psql).
    held = [Activity("w1", 60.0, connections=1)]
    assert not policy.observe(60.0, 2.0, held, 0).pause
    assert not policy.observe(61.0, 2.0, [quiet("w1", 61.0)], 0).pause
    assert policy.observe(62.0, 2.0, [quiet("w1", 62.0)], 0).pause
    # An instance that did not answer may be busy: not idle.
    assert not policy.observe(63.0, 2.0, [quiet("w1", 63.0)], 1).pause
    assert not policy.observe(64.0, 2.0, [quiet("w1", 64.0)], 0).pause


@pytest.mark.unit
def test_policy_never_pauses_when_off_and_starts_over_after_a_resume() -> None:
    policy = PausePolicy()
    policy.reset(0.0)
    assert not policy.observe(1000.0, 0.0, [quiet("w1", 1000.0)], 0).pause
    policy.reset(1000.0)
    # The quiet time counts from the resume, not from the instance's idle time.
    assert not policy.observe(1001.0, 2.0, [quiet("w1", 5.0)], 0).pause
    assert policy.observe(1002.0, 2.0, [quiet("w1", 6.0)], 0).pause


@dataclass
class Running:
    cluster: LocalCluster
    supervisor: Supervisor

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.cluster.data_dir / "cluster.json").read_text())
        return document

    def writer_url(self) -> str:
        url: str = self.document()["endpoints"]["writer"]
        return url

    def metric(self, name: str) -> float:
        return self.supervisor.scaler.metrics.value(name)


@pytest.fixture
def paused_cluster(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    cluster = LocalCluster(
        tmp_path / "cluster",
        ports=port_allocator,
        writer=True,
        readers=1,
        router=True,
        storage_overrides=FAST_STORAGE,
        router_overrides=ROUTER,
    )
    port = port_allocator.allocate()
    supervisor = Supervisor(cluster, port, scaling=SETTINGS)
    with supervised(cluster, supervisor, port, EXPECTED_ERRORS):
        yield Running(cluster, supervisor)


def wait_paused(running: Running) -> dict[str, Any]:
    """Waits for cluster.json to say paused with the readers' processes gone and the
    writer's parked: alive, marked parked, its PostgreSQL port refusing connections."""

    def settled(entry: dict[str, Any]) -> bool:
        if entry["state"] != "paused":
            return False
        if entry["role"] != "writer":
            return not pid_alive(entry["pid"])
        writer = running.cluster.writer()
        return pid_alive(entry["pid"]) and (writer.directory / PARKED_FILE).exists()

    def paused() -> dict[str, Any] | None:
        document = running.document()
        return document if document["paused"] and all(map(settled, document["instances"])) else None

    document = wait_until(paused, PAUSE_BOUND_S, interval_s=0.1, what="the cluster to pause")
    writer = running.cluster.writer()
    with pytest.raises(OSError):
        socket.create_connection((writer.pg_host, writer.pg_port), timeout=1).close()
    return document


def assert_storage_and_router_up(running: Running) -> None:
    cluster = running.cluster
    assert all(node.is_running() for node in cluster.storage_nodes)
    assert cluster.router is not None and cluster.router.is_running()


def keeps_running_for(running: Running, seconds: float, action: Any) -> None:
    """Calls `action` every QUERY_INTERVAL_S for `seconds`; the cluster must stay
    unpaused and the writer's process the same throughout."""
    writer_pid = running.cluster.writer().pid
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action()
        assert not running.document()["paused"], "the cluster paused while in use"
        time.sleep(QUERY_INTERVAL_S)
    assert running.cluster.writer().pid == writer_pid
    assert running.metric("pauses_total") == 0


def psql_first_query(running: Running) -> str:
    url = running.document()["endpoints"]["writer"]
    env = {**os.environ, "PGPASSWORD": running.cluster.password, "PGCONNECT_TIMEOUT": "40"}
    result = subprocess.run(
        [PSQL, "-X", "-A", "-t", "--no-password", url, "-c", "SELECT count(*), sum(id) FROM items"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert result.returncode == 0, f"psql failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


def router_log(running: Running) -> str:
    router = running.cluster.router
    assert router is not None
    return router.log_path.read_text(errors="replace")


def borealis(running: Running, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Runs a `borealis` command on the cluster; its output (it must succeed)."""
    status = cli.main([*argv, "--data-dir", str(running.cluster.data_dir)])
    output = capsys.readouterr().out
    assert status == 0, output
    return output


@pytest.mark.integration
def test_idle_cluster_pauses_and_a_new_connection_resumes_it(
    paused_cluster: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    running = paused_cluster
    password = running.cluster.password
    expected = f"{ROWS}|{ROWS * (ROWS + 1) // 2}"
    with psycopg.connect(
        running.writer_url(), password=password, autocommit=True, connect_timeout=40
    ) as connection:
        connection.execute("CREATE TABLE items (id integer PRIMARY KEY, note text)")
        connection.execute(
            f"INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, {ROWS}) g"
        )
        # Under load (a query every interval), then with the connection merely open,
        # for well over auto_pause_s each: no pause.
        keeps_running_for(
            running, 3 * AUTO_PAUSE_S, lambda: connection.execute("SELECT 1").fetchall()
        )
        keeps_running_for(running, 2 * AUTO_PAUSE_S, lambda: None)

    paused = wait_paused(running)
    assert paused["pause"]["paused"] is True and paused["pause"]["paused_at_unix_s"] > 0
    assert_storage_and_router_up(running)
    assert running.metric("paused") == 1
    assert "paused since" in borealis(running, capsys, "status")

    parked_pid = running.cluster.writer().pid
    began = time.monotonic()
    assert psql_first_query(running) == expected
    psql_s = time.monotonic() - began
    document = running.document()
    assert document["paused"] is False
    resume_ms = document["pause"]["resume_ms_last"]
    assert 0 < resume_ms <= psql_s * 1000, (resume_ms, psql_s)
    assert running.metric("resumes_total") == 1
    assert running.metric("resume_seconds_last") == pytest.approx(resume_ms / 1000, abs=0.01)
    wait_until(lambda: "held login served" in router_log(running), 5, what="the router's log")
    # The parked process resumed: the same pid, no longer marked parked.
    assert running.cluster.writer().pid == parked_pid
    assert not (running.cluster.writer().directory / PARKED_FILE).exists()
    # The reader came back too.
    wait_until(
        lambda: all(each["state"] == "running" for each in running.document()["instances"]),
        30,
        what="every instance to run again",
    )

    # Idle again: it pauses again, and a psycopg connection resumes it the same way.
    wait_paused(running)
    assert running.metric("pauses_total") == 2
    with psycopg.connect(
        running.writer_url(), password=password, autocommit=True, connect_timeout=40
    ) as connection:
        row = connection.execute("SELECT count(*), sum(id) FROM items").fetchone()
    assert row is not None and f"{row[0]}|{row[1]}" == expected
    assert running.metric("resumes_total") == 2
    assert running.document()["pause"]["resume_ms_last"] > 0
    assert "last resume:" in borealis(running, capsys, "status")

    # By hand: pause, pause again (nothing to do), resume.
    assert "paused in" in borealis(running, capsys, "pause")
    assert "already paused" in borealis(running, capsys, "pause")
    assert running.document()["paused"] is True
    assert "resumed: w1 serving after" in borealis(running, capsys, "resume")
    assert running.document()["paused"] is False
    assert running.metric("resumes_total") == 3

    # A parked writer killed while paused: the resume starts a new process.
    borealis(running, capsys, "pause")
    writer = running.cluster.writer()
    killed_pid = writer.pid
    writer.kill()
    assert "resumed: w1 serving after" in borealis(running, capsys, "resume")
    assert running.cluster.writer().pid != killed_pid and running.cluster.writer().is_running()
    assert psql_first_query(running) == expected
