"""The cost report on real processes: a cluster under the control plane (its Supervisor,
gRPC server and metering sampler, run in this process as `python -m control_plane`
runs them), a write workload through the writer, then the report (Metering.GetCost,
and `borealis cost` on it) against figures this test measures on its own:

- storage I/O requests equal the storage nodes' own counters (read from each node's
  Admin.GetMetrics), and grow with the workload; storage bytes grow;
- the writer's capacity-unit-seconds are the elapsed time times its capacity (the
  test polls the writer's capacity itself and integrates it);
- both options are priced, with a recommendation and its reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from borealis import metrics, rpc
from borealis.cli import cost as cost_cli
from borealis.wait import wait_until
from control_plane.metering import (
    INTERVAL_S_DEFAULT,
    READS_COUNTER,
    configured_bcu,
)
from control_plane.supervisor import Supervisor
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from proto import capacity_pb2, capacity_pb2_grpc, metering_pb2, metering_pb2_grpc
from tests.conftest import FAST_STORAGE
from tests.support.supervised import supervised

pytestmark = pytest.mark.integration

RPC_TIMEOUT_S = 10.0
CAPACITY_POLL_S = 0.25
LOAD_S = 6.0
ROW_BYTES = 2000
SETTLE_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5


@dataclass
class Running:
    cluster: LocalCluster
    port: int

    def report(self, since_unix_s: float = 0.0) -> metering_pb2.CostReport:
        with rpc.sync_channel(f"127.0.0.1:{self.port}") as channel:
            stub = metering_pb2_grpc.MeteringStub(channel)
            request = metering_pb2.GetCostRequest(since_unix_s=int(since_unix_s))
            return stub.GetCost(request, timeout=RPC_TIMEOUT_S)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.cluster.writer().url(),
            password=self.cluster.password,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
        )


@pytest.fixture
def running(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    cluster = LocalCluster(
        tmp_path / "cluster", ports=port_allocator, writer=True, storage_overrides=FAST_STORAGE
    )
    port = port_allocator.allocate()
    supervisor = Supervisor(cluster, port)
    with supervised(cluster, supervisor, port, expected_errors=()):
        yield Running(cluster, port)


def storage_counters(cluster: LocalCluster, write_counter: str) -> tuple[float, float]:
    """(reads, writes) summed over the storage nodes, from their own metrics."""

    async def read_all() -> list[str]:
        return await asyncio.gather(
            *(rpc.metrics_text(node.address, RPC_TIMEOUT_S) for node in cluster.storage_nodes)
        )

    parsed = [metrics.parse(text) for text in asyncio.run(read_all())]
    reads = sum(each.get(READS_COUNTER, 0.0) for each in parsed)
    writes = sum(each.get(write_counter, 0.0) for each in parsed)
    return reads, writes


@dataclass
class CapacityClock:
    """Integrates the writer's capacity over time, polled by this test: its
    Capacity.GetCapacity, or its configured capacity if it does not serve that."""

    address: str
    configured_bcu: float
    # (monotonic seconds, BCU) per poll.
    polls: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with rpc.sync_channel(self.address) as channel:
            stub = capacity_pb2_grpc.CapacityStub(channel)
            while not self.stop.wait(CAPACITY_POLL_S):
                try:
                    state = stub.GetCapacity(capacity_pb2.GetCapacityRequest(), timeout=1.0)
                    bcu = float(state.bcu)
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                        continue
                    bcu = self.configured_bcu
                self.polls.append((time.monotonic(), bcu))

    def unit_seconds(self, began: float, seconds: float) -> float:
        """BCU-seconds over [began, began + seconds] (monotonic), step-wise from polls."""
        total, end = 0.0, began + seconds
        for (at, bcu), (after, _) in zip(self.polls, self.polls[1:], strict=False):
            overlap = min(after, end) - max(at, began)
            total += bcu * max(0.0, overlap)
        return total

    def bcu_max(self) -> float:
        return max(bcu for _, bcu in self.polls)


def write_load(running: Running, seconds: float) -> int:
    """Inserts rows (and reads them back) for `seconds`; the rows inserted."""
    rows = 0
    deadline = time.monotonic() + seconds
    with running.connect() as connection:
        connection.execute("CREATE TABLE bill (id integer PRIMARY KEY, note text)")
        while time.monotonic() < deadline:
            connection.execute(
                "INSERT INTO bill (id, note) VALUES (%s, %s)", (rows, "x" * ROW_BYTES)
            )
            rows += 1
        (count,) = connection.execute("SELECT count(*) FROM bill").fetchone() or (0,)
    assert count == rows
    return rows


def test_the_cost_report_matches_independent_counts(running: Running, capsys: Any) -> None:
    writer = running.cluster.writer()
    config_text = (writer.directory / "compute_node.toml").read_text()
    clock = CapacityClock(writer.address, configured_bcu(config_text))
    poller = threading.Thread(target=clock.run, daemon=True)
    poller.start()
    # Metering has sampled the running cluster (the baseline of every counter).
    wait_until(
        lambda: running.report().usage.write_counter != "", SETTLE_TIMEOUT_S, what="a sample"
    )
    # Whole seconds: the request's since_unix_s is an integer (a float would be cut,
    # and the report would count up to a second before the test began).
    time.sleep(math.ceil(time.time()) - time.time())
    began_unix_s, began = float(math.floor(time.time())), time.monotonic()
    before = running.report()

    rows = write_load(running, LOAD_S)
    assert rows > 50

    write_counter = before.usage.write_counter

    def metered_equals_measured() -> bool:
        usage = running.report().usage
        return (usage.io_reads, usage.io_writes) == storage_counters(running.cluster, write_counter)

    wait_until(metered_equals_measured, SETTLE_TIMEOUT_S, what="metering to catch up")
    after = running.report()
    since = running.report(since_unix_s=began_unix_s)
    clock.stop.set()
    poller.join(5)

    # I/O and storage grew with the workload.
    assert after.usage.io_writes >= before.usage.io_writes + rows
    assert after.usage.storage_bytes_last > before.usage.storage_bytes_last
    assert after.usage.storage_byte_seconds > before.usage.storage_byte_seconds
    assert since.usage.io_writes > 0

    # Capacity-unit-seconds: the metered period times the capacity the test saw.
    seconds = since.usage.seconds
    elapsed_s = time.monotonic() - began
    assert elapsed_s - 2 * INTERVAL_S_DEFAULT - 1 <= seconds <= elapsed_s + 0.5
    measured = clock.unit_seconds(began, seconds)
    metered = since.usage.capacity_unit_seconds[writer.name]
    assert metered == pytest.approx(measured, abs=clock.bcu_max() * (INTERVAL_S_DEFAULT + 1))
    assert since.usage.capacity_sources[writer.name] in ("reported", "configured")

    # Both options priced, with a recommendation and its figures.
    names = [option.name for option in since.options]
    assert names == ["standard", "io_optimized"]
    for option in since.options:
        assert option.total > 0
        assert {line.item for line in option.lines} == {"capacity", "storage", "io", "backup"}
    standard = since.options[0]
    io_line = next(line for line in standard.lines if line.item == "io")
    assert io_line.quantity == pytest.approx((since.usage.io_reads + since.usage.io_writes) / 1e6)
    assert since.cheaper in names and "I/O is" in since.reason
    assert any("backup" in note for note in since.notes)

    # `borealis cost` shows the same report.
    parser = argparse.ArgumentParser()
    cost_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["cost", "--data-dir", str(running.cluster.data_dir), "--since=-1h", "--json"]
    )
    capsys.readouterr()
    assert cost_cli.run(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [option["name"] for option in shown["options"]] == names
    assert float(shown["usage"]["io_writes"]) >= after.usage.io_writes
    args = parser.parse_args(["cost", "--data-dir", str(running.cluster.data_dir)])
    assert cost_cli.run(args) == 0
    text = capsys.readouterr().out
    assert "I/O-Optimized" in text and "cheaper:" in text
