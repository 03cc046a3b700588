"""Automatic scaling on real processes (issue 7, must-holds 1 and 2): a supervised
cluster with a router, its scaling loop running (control_plane/scaling.py) with
short cooldowns, and client threads driving load through the router's endpoints.

1. A step in read load through the reader endpoint (1 -> 16 clients) adds readers
   within the reaction time; once the load drops back to one client, readers go
   back to the minimum, and no client query fails at any point (scale-in drains).
2. Under write load the writer's capacity rises, and falls when idle; it never
   leaves [min, max], stays on the 0.5 BCU grid, and no client connection drops
   (each client keeps one connection for the whole test).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from borealis import metrics, rpc
from borealis.wait import wait_until
from control_plane.autoscaler import on_grid
from control_plane.scaling import ScalingSettings
from control_plane.supervisor import Supervisor
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.support.supervised import supervised

pytestmark = pytest.mark.integration

ROUTER = {"health_interval_ms": 100, "topology_poll_ms": 100}
CONNECT_TIMEOUT_S = 5
# The client threads pace themselves a little, so the two cores are shared with the
# cluster's own processes (a reader starting must still get CPU).
QUERY_PAUSE_S = 0.005
# A reading client opens a new connection after this many queries, so the router
# spreads sessions over the readers as they come and go.
QUERIES_PER_CONNECTION = 25
# From the load step to a new reader serving: two samples, one process start.
SCALE_OUT_BOUND_S = 30.0
SCALE_IN_BOUND_S = 60.0
CAPACITY_BOUND_S = 40.0
READER_SETTINGS = ScalingSettings(
    # Capacity fixed: this test is about the reader count.
    min_capacity_bcu=1.0,
    max_capacity_bcu=1.0,
    min_readers=1,
    max_readers=3,
    reader_target=4.0,
    scale_out_cooldown_s=2.0,
    scale_in_after_s=3.0,
    scale_in_cooldown_s=3.0,
)
WRITER_SETTINGS = ScalingSettings(
    min_capacity_bcu=0.5,
    max_capacity_bcu=2.0,
    capacity_up_cooldown_s=1.0,
    capacity_down_after_s=3.0,
    capacity_down_cooldown_s=3.0,
)
# A removed reader's followers and the router lose it on purpose.
EXPECTED_ERRORS = ("redo stream ended",)


@dataclass
class Running:
    cluster: LocalCluster
    supervisor: Supervisor
    control_plane_address: str

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.cluster.data_dir / "cluster.json").read_text())
        return document

    def readers(self, state: str | None = "running") -> list[str]:
        """The readers cluster.json lists (in `state`; None: in any state)."""
        return [
            i["name"]
            for i in self.document()["instances"]
            if i["role"] == "reader" and state in (None, i["state"])
        ]

    def connect(self, endpoint: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.document()["endpoints"][endpoint],
            password=self.cluster.password,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
        )


@dataclass
class Client:
    """One client thread running `statement` in a loop; every failure is kept."""

    running: Running
    endpoint: str
    statement: str
    reconnect_every: int = 0
    queries: int = 0
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Client:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(CONNECT_TIMEOUT_S * 4)
        assert not self.thread.is_alive(), "a client did not stop"

    def _run(self) -> None:
        connection: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            try:
                if connection is None:
                    connection = self.running.connect(self.endpoint)
                    self.connections += 1
                connection.execute(self.statement).fetchall()
                self.queries += 1
                if self.reconnect_every and self.queries % self.reconnect_every == 0:
                    connection.close()
                    connection = None
            except psycopg.Error as error:
                self.errors.append(f"{type(error).__name__}: {error}"[:300])
                if connection is not None:
                    connection.close()
                connection = None
            self.stop.wait(QUERY_PAUSE_S)
        if connection is not None:
            connection.close()


def start_running(
    tmp_path: Path, ports: PortAllocator, readers: int, settings: ScalingSettings
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
    supervisor = Supervisor(cluster, port, scaling=settings)
    with supervised(cluster, supervisor, port, EXPECTED_ERRORS):
        yield Running(cluster, supervisor, f"127.0.0.1:{port}")


@pytest.fixture
def reader_scaling(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, 1, READER_SETTINGS)


@pytest.fixture
def writer_scaling(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, 0, WRITER_SETTINGS)


def stop_all(clients: list[Client]) -> None:
    for client in clients:
        client.stop.set()
    for client in clients:
        if client.thread is not None and client.thread.is_alive():
            client.finish()


def test_read_load_step_adds_readers_and_scale_in_returns_to_the_minimum(
    reader_scaling: Running,
) -> None:
    running = reader_scaling
    with running.connect("writer") as connection:
        connection.execute("CREATE TABLE items (id integer PRIMARY KEY, note text)")
        connection.execute(
            "INSERT INTO items SELECT g, 'note ' || g FROM generate_series(1, 500) AS g"
        )
    statement = "SELECT count(*), sum(length(note)) FROM items"
    first = Client(running, "reader", statement, QUERIES_PER_CONNECTION).start()
    clients = [first]
    try:
        wait_until(lambda: first.queries >= 20, 30, what="the first client's queries")
        assert len(running.readers()) == READER_SETTINGS.min_readers
        stepped_at = time.monotonic()
        clients += [
            Client(running, "reader", statement, QUERIES_PER_CONNECTION).start() for _ in range(15)
        ]
        wait_until(
            lambda: len(running.readers()) >= 2,
            SCALE_OUT_BOUND_S,
            interval_s=0.1,
            what="a reader to be added",
        )
        scaled_out_s = time.monotonic() - stepped_at
        wait_until(
            lambda: len(running.readers()) == READER_SETTINGS.max_readers,
            SCALE_OUT_BOUND_S,
            interval_s=0.1,
            what="readers to reach the max",
        )
        # The new readers serve: the router has sessions on each of them.
        wait_until(
            lambda: all(running.cluster.router_sessions(name) > 0 for name in running.readers()),
            SCALE_OUT_BOUND_S,
            interval_s=0.2,
            what="every reader to have sessions",
        )
        stop_all(clients[1:])
        stopped_at = time.monotonic()
        wait_until(
            lambda: len(running.readers(state=None)) == READER_SETTINGS.min_readers,
            SCALE_IN_BOUND_S,
            interval_s=0.2,
            what="readers to go back to the minimum",
        )
        scaled_in_s = time.monotonic() - stopped_at
        scaler = running.supervisor.scaler
        wait_until(
            lambda: [e.to_value for e in scaler.history() if e.kind == "readers"][-1] == 1,
            10,
            what="the last scale-in in the history",
        )
        queries_before = first.queries
        wait_until(lambda: first.queries >= queries_before + 20, 30, what="queries after scale-in")
    finally:
        stop_all(clients)
    errors = [error for client in clients for error in client.errors]
    assert errors == [], errors[:5]
    assert len(running.readers()) == READER_SETTINGS.min_readers
    events = running.supervisor.scaler.history()
    counts = [(e.from_value, e.to_value) for e in events if e.kind == "readers"]
    assert counts[0][0] == 1 and counts[0][1] > 1, counts
    # Down one reader at a time, to the minimum.
    assert counts[1:] == [(n, n - 1) for n in range(int(counts[0][1]), 1, -1)], counts
    assert all(not e.error for e in events), [e.error for e in events]
    assert all(e.reason and e.inputs for e in events)
    # The decisions are exported as metrics on the control plane.
    text = metrics.parse(_metrics(running))
    out = 'borealis_control_plane_scaling_decisions_total{direction="scale_out",kind="readers"}'
    assert text.get(out, 0) >= 1
    print(f"\nscale-out after {scaled_out_s:.1f} s, back to min after {scaled_in_s:.1f} s")
    for event in events:
        print(
            f"  {event.kind} {event.instance} {event.from_value:g}->{event.to_value:g}: {event.reason}"
        )


def test_write_load_raises_the_writer_capacity_and_idle_lowers_it(writer_scaling: Running) -> None:
    running = writer_scaling
    with running.connect("writer") as connection:
        connection.execute("CREATE TABLE ledger (id serial PRIMARY KEY, amount integer, note text)")
    statement = "INSERT INTO ledger (amount, note) VALUES (1, repeat('x', 200)) RETURNING id"
    scaler = running.supervisor.scaler
    seen: list[float] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen.extend(scaler.capacities().values())
            watching.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    clients = [Client(running, "writer", statement).start() for _ in range(16)]
    try:
        wait_until(
            lambda: scaler.capacities().get("w1", 0) > 1.0,
            CAPACITY_BOUND_S,
            interval_s=0.2,
            what="the writer's capacity to rise",
        )
        peak = max(scaler.capacities()["w1"], 1.0)
        queries_at_peak = sum(c.queries for c in clients)
        wait_until(
            lambda: sum(c.queries for c in clients) > queries_at_peak + 100,
            30,
            what="writes at the new capacity",
        )
    finally:
        stop_all(clients)
    wait_until(
        lambda: scaler.capacities().get("w1") == WRITER_SETTINGS.min_capacity_bcu,
        CAPACITY_BOUND_S,
        interval_s=0.2,
        what="the idle writer's capacity to fall to the minimum",
    )
    watching.set()
    watcher.join(5)
    assert seen, "the scaler read the writer's capacity"
    assert all(
        WRITER_SETTINGS.min_capacity_bcu <= bcu <= WRITER_SETTINGS.max_capacity_bcu for bcu in seen
    )
    assert all(on_grid(bcu) for bcu in seen)
    # No connection dropped: one connection per client, no error, for the whole test.
    assert [c.connections for c in clients] == [1] * len(clients)
    assert [e for c in clients for e in c.errors] == []
    events = [e for e in scaler.history(instance="w1") if e.kind == "capacity"]
    assert all(not e.error for e in events), [e.error for e in events]
    assert any(e.to_value > e.from_value for e in events)
    assert any(e.to_value < e.from_value for e in events)
    for event in events:
        assert on_grid(event.from_value) and on_grid(event.to_value)
        assert "cpu_fraction" in event.inputs and event.reason
    print(f"\nwriter capacity peak {peak:g} BCU; {len(events)} changes")
    for event in events:
        print(f"  {event.from_value:g}->{event.to_value:g}: {event.reason}")


def _metrics(running: Running) -> str:
    return asyncio.run(rpc.metrics_text(running.control_plane_address, 5.0))
