"""In-place capacity on real processes (issue 7): Capacity.SetCapacity resizes a
writer's buffer cache and reader connections 1.0 -> 4.0 -> 0.5 -> 2.0 BCU while
clients run queries and hold transactions and idle sessions open; no connection
drops, every query succeeds, GetCapacity and /metrics report the new capacity, and
the load signals move. A reader instance serves the same service."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from borealis import metrics as metrics_module
from borealis import rpc
from borealis.wait import wait_until
from compute_node.capacity import cache_bytes_of, reader_connections_of
from deploy.local import InstanceProcess, LocalCluster
from deploy.ports import PortAllocator
from proto import capacity_pb2, capacity_pb2_grpc
from tests.conftest import FAST_STORAGE

pytestmark = pytest.mark.integration

RPC_TIMEOUT_S = 10.0
SIGNAL_TIMEOUT_S = 15.0
ROWS = 2000
READ_CLIENTS = 3
SCALE_STEPS = (4.0, 0.5, 2.0)
# Statements each step must see finish under load before the next step.
STATEMENTS_PER_STEP = 50


@pytest.fixture
def cluster(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path / "cluster",
        ports=port_allocator,
        writer=True,
        readers=1,
        storage_overrides=FAST_STORAGE,
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(immediate=True)
    errors = [f"{each.name}: {line}" for each in cluster.processes() for line in each.error_lines()]
    assert not errors, "logged errors:\n" + "\n".join(errors)


class CapacityClient:
    def __init__(self, instance: InstanceProcess) -> None:
        self._channel = rpc.sync_channel(instance.address)
        self._stub = capacity_pb2_grpc.CapacityStub(self._channel)

    def get(self) -> capacity_pb2.CapacityState:
        return self._stub.GetCapacity(capacity_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT_S)

    def set(self, bcu: float) -> capacity_pb2.CapacityState:
        return self._stub.SetCapacity(
            capacity_pb2.SetCapacityRequest(bcu=bcu), timeout=RPC_TIMEOUT_S
        )

    def close(self) -> None:
        self._channel.close()


def connect(
    cluster: LocalCluster, instance: InstanceProcess, **options: object
) -> psycopg.Connection:
    return psycopg.connect(instance.url(), password=cluster.password, **options)  # type: ignore[arg-type]


@dataclass
class Load:
    """Client threads running queries until stopped, counting successes and errors."""

    cluster: LocalCluster
    instance: InstanceProcess
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, readers: int, writers: int) -> None:
        for index in range(readers + writers):
            self.done.append(0)
            thread = threading.Thread(target=self._client, args=(index, index >= readers))
            thread.start()
            self.threads.append(thread)

    def _client(self, index: int, writes: bool) -> None:
        try:
            with connect(self.cluster, self.instance, autocommit=True) as connection:
                while not self.stop.is_set():
                    if writes:
                        connection.execute("INSERT INTO load_log (client) VALUES (%s)", (index,))
                    else:
                        row = connection.execute("SELECT count(*), sum(v) FROM items").fetchone()
                        assert row == (ROWS, ROWS * (ROWS - 1) // 2), row
                    self.done[index] += 1
        except Exception as error:  # noqa: BLE001 - reported by the test
            with self.lock:
                self.errors.append(f"client {index}: {error!r}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive()


def metric_values(instance: InstanceProcess) -> dict[str, float]:
    with urllib.request.urlopen(instance.metrics_url, timeout=RPC_TIMEOUT_S) as response:
        return metrics_module.parse(response.read().decode())


def assert_state(state: capacity_pb2.CapacityState, bcu: float, role: str) -> None:
    assert state.bcu == bcu
    assert state.cache_bytes == cache_bytes_of(bcu)
    assert state.sql_workers == reader_connections_of(bcu)
    assert state.role == role


@pytest.mark.slow
def test_capacity_changes_in_place_under_load_with_no_dropped_connection(
    cluster: LocalCluster,
) -> None:
    writer = cluster.writer()
    capacity = CapacityClient(writer)
    assert_state(capacity.get(), 1.0, "writer")
    with connect(cluster, writer, autocommit=True) as setup:
        setup.execute("CREATE TABLE items (id integer PRIMARY KEY, v integer)")
        with setup.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO items VALUES (%s, %s)", [(index, index) for index in range(ROWS)]
            )
        setup.execute("CREATE TABLE load_log (id integer PRIMARY KEY, client integer)")

    idle = [connect(cluster, writer, autocommit=True) for _ in range(3)]
    idle_pids = [connection.info.backend_pid for connection in idle]
    # Read transactions that hold reader connections across the changes (1 BCU has
    # two readers; a third is opened once there are more).
    held = [connect(cluster, writer) for _ in range(3)]
    for connection in held[:2]:
        assert connection.execute("SELECT count(*) FROM items").fetchone() == (ROWS,)
    load = Load(cluster, writer)
    load.start(readers=READ_CLIENTS, writers=1)
    try:
        statements_before = capacity.get().signals.statements_total
        for bcu in SCALE_STEPS:
            assert_state(capacity.set(bcu), bcu, "writer")
            assert_state(capacity.get(), bcu, "writer")
            if bcu == 4.0:
                assert held[2].execute("SELECT count(*) FROM items").fetchone() == (ROWS,)
            if bcu == 0.5:
                # Three held readers and one reader left: two or more drain, held.
                draining = metric_values(writer)["borealis_instance_capacity_sql_workers_draining"]
                assert draining >= 2
            # Work goes on at the new capacity, the held transactions too.
            statements_at_change = capacity.get().signals.statements_total
            wait_until(
                lambda at=statements_at_change: (
                    capacity.get().signals.statements_total >= at + STATEMENTS_PER_STEP
                ),
                SIGNAL_TIMEOUT_S,
                what=f"statements finishing at {bcu} BCU",
            )
            for connection in held:
                if connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                    row = connection.execute("SELECT count(*) FROM items").fetchone()
                    assert row == (ROWS,)
        signals = wait_until(
            lambda: (state := capacity.get()).signals.cpu_fraction > 0 and state.signals,
            SIGNAL_TIMEOUT_S,
            what="cpu_fraction above 0 under load",
        )
        assert signals.statements_total > statements_before
        assert signals.connections >= len(idle) + len(held) + READ_CLIENTS + 1
        assert 0.0 <= signals.cache_hit_ratio <= 1.0
    finally:
        load.finish()
    assert not load.errors, load.errors
    assert all(count > 0 for count in load.done), load.done

    # No connection dropped: the held transactions commit, idle sessions answer.
    for connection in held:
        assert connection.execute("SELECT count(*) FROM items").fetchone() == (ROWS,)
        connection.commit()
    # Given back, the drained readers close.
    wait_until(
        lambda: metric_values(writer)["borealis_instance_capacity_sql_workers_draining"] == 0,
        SIGNAL_TIMEOUT_S,
        what="drained readers closing",
    )
    for connection, pid in zip(idle, idle_pids, strict=True):
        assert connection.execute("SELECT 1").fetchone() == (1,)
        assert connection.info.backend_pid == pid
    for connection in [*idle, *held]:
        connection.close()

    values = metric_values(writer)
    assert values["borealis_instance_capacity_bcu"] == 2.0
    assert values["borealis_instance_capacity_sql_workers"] == reader_connections_of(2.0)
    assert values["borealis_instance_buffer_cache_capacity_bytes"] == cache_bytes_of(2.0)
    assert values["borealis_instance_capacity_changes_total"] == len(SCALE_STEPS)
    assert values["borealis_instance_sql_statements_total"] > 0
    capacity.close()


@pytest.mark.parametrize("bcu", [0.0, 0.75, 16.5])
def test_capacity_off_the_grid_is_invalid_argument_on_writer_and_reader(
    cluster: LocalCluster, bcu: float
) -> None:
    for instance in cluster.instances:
        capacity = CapacityClient(instance)
        with pytest.raises(grpc.RpcError) as raised:
            capacity.set(bcu)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert capacity.get().bcu == 1.0
        capacity.close()


def test_a_reader_instance_scales_in_place_too(cluster: LocalCluster) -> None:
    reader = next(each for each in cluster.instances if each.role == "reader")
    capacity = CapacityClient(reader)
    assert_state(capacity.get(), 1.0, "reader")
    with connect(cluster, cluster.writer(), autocommit=True) as setup:
        setup.execute("CREATE TABLE items (id integer PRIMARY KEY, v integer)")
        setup.execute("INSERT INTO items VALUES (1, 1)")
    with connect(cluster, reader) as connection:
        wait_until(
            lambda: connection.execute("SELECT count(*) FROM items").fetchone() == (1,),
            SIGNAL_TIMEOUT_S,
            what="the row on the reader",
        )
        # The session's read transaction stays open across both changes.
        for bcu in (3.0, 0.5):
            assert_state(capacity.set(bcu), bcu, "reader")
            assert connection.execute("SELECT v FROM items").fetchone() == (1,)
        connection.commit()
    assert capacity.get().signals.statements_total > 0
    assert metric_values(reader)["borealis_instance_capacity_bcu"] == 0.5
    capacity.close()
