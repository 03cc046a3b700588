"""Heartbeats from an instance (compute_node/replication/heartbeat.py) to the control
plane's Heartbeat RPC (control_plane/service.py), over a real local gRPC server."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from borealis import rpc
from borealis.wait import wait_until_async
from compute_node.replication.heartbeat import Heartbeats, Status, control_plane_address
from control_plane.failover import Heartbeat
from control_plane.service import ControlPlaneService
from proto import control_pb2, control_pb2_grpc

pytestmark = pytest.mark.integration

INTERVAL_MS = 30
TIMEOUT_S = 10.0


class Recorder:
    """The part of the Supervisor the Heartbeat RPC calls."""

    def __init__(self) -> None:
        self.beats: list[tuple[str, Heartbeat]] = []
        self.lock = threading.Lock()

    def heartbeat(self, name: str, beat: Heartbeat) -> int:
        with self.lock:
            self.beats.append((name, beat))
        return INTERVAL_MS


def start_server(recorder: Recorder) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service = ControlPlaneService(recorder)  # type: ignore[arg-type]
    control_pb2_grpc.add_ControlPlaneServicer_to_server(service, server)
    # Secured as this process's channels are (mutual TLS when a cluster started
    # earlier in this process configured it).
    port = rpc.listen(server, "127.0.0.1:0")
    server.start()
    return server, port


def test_control_plane_address_from_cluster_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    assert control_plane_address(path) is None, "no file"
    path.write_text(json.dumps({"control_plane": {}}))
    assert control_plane_address(path) is None, "no control plane"
    path.write_text(json.dumps({"control_plane": {"address": "127.0.0.1:9"}}))
    assert control_plane_address(path) == "127.0.0.1:9"
    path.write_text("{not json")
    assert control_plane_address(path) is None


def test_heartbeats_reach_the_control_plane_at_its_interval(tmp_path: Path) -> None:
    recorder = Recorder()
    server, port = start_server(recorder)
    cluster_file = tmp_path / "cluster.json"
    cluster_file.write_text(json.dumps({"control_plane": {"address": f"127.0.0.1:{port}"}}))
    lsn = iter(range(1000, 2000))
    sender = Heartbeats("r1", "reader", cluster_file, lambda: Status(next(lsn), 7, 1.5))

    async def run() -> None:
        task = asyncio.ensure_future(sender.run())
        try:
            await wait_until_async(
                lambda: _count(recorder, 5), TIMEOUT_S, interval_s=0.01, what="heartbeats"
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    try:
        asyncio.run(run())
    finally:
        server.stop(0)
    names = {name for name, _ in recorder.beats}
    assert names == {"r1"}
    first, second = recorder.beats[0][1], recorder.beats[1][1]
    assert (first.role, first.lag_lsns, first.lag_ms) == ("reader", 7, 1.5)
    assert second.lsn > first.lsn
    assert sender.sent_total >= 5 and sender.failed_total == 0
    assert sender.interval_ms == INTERVAL_MS, "the control plane's interval is kept"


def test_heartbeat_without_a_role_is_refused() -> None:
    recorder = Recorder()
    server, port = start_server(recorder)
    try:
        with rpc.sync_channel(f"127.0.0.1:{port}") as channel:
            stub = control_pb2_grpc.ControlPlaneStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Heartbeat(control_pb2.HeartbeatRequest(name="r1"), timeout=TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert recorder.beats == []
    finally:
        server.stop(0)


async def _count(recorder: Recorder, count: int) -> bool:
    with recorder.lock:
        return len(recorder.beats) >= count
