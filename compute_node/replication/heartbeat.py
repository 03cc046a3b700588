"""An instance's heartbeats to the control plane, which decide failover.

Heartbeats go from the instance to the control plane (rather than the control plane
polling each instance), as DESIGN.md section 8 has it: the control plane's view of
an instance is what the instance last said, with its role, read point and lag, and
silence is the signal. The control plane's address is read from cluster.json
(`control_plane.address`) before each heartbeat, so a restarted control plane is
found again; a cluster without one (a test's bare LocalCluster) sends none. Each
response says when to send the next, so the interval is the control plane's setting.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from borealis import rpc
from borealis.log import get_logger
from proto import control_pb2, control_pb2_grpc

log = get_logger("compute_node.heartbeat")

INTERVAL_MS_DEFAULT = 200
# Whatever the control plane answers, stay in this range.
INTERVAL_MS_MIN = 20
INTERVAL_MS_MAX = 5_000
# Without a control plane in cluster.json, look again this often.
ABSENT_RETRY_MS = 1_000
# A heartbeat later than this is no use: the next one replaces it.
RPC_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Status:
    """What a heartbeat reports: a writer's VDL, or a reader's read point and lag."""

    lsn: int
    lag_lsns: int = 0
    lag_ms: float = 0.0


def control_plane_address(cluster_file: Path) -> str | None:
    """The control plane's gRPC address named in cluster.json, if any."""
    try:
        document = json.loads(cluster_file.read_text())
    except (OSError, ValueError):
        return None
    address = (document.get("control_plane") or {}).get("address")
    return str(address) if address else None


class Heartbeats:
    def __init__(
        self, name: str, role: str, cluster_file: Path, status: Callable[[], Status]
    ) -> None:
        self._name = name
        self._role = role
        self._cluster_file = cluster_file
        self._status = status
        self._channel: aio.Channel | None = None
        self._address: str | None = None
        self.sent_total = 0
        self.failed_total = 0
        # The interval kept now: the control plane's last answer.
        self.interval_ms = INTERVAL_MS_DEFAULT

    async def run(self) -> None:
        """Sends heartbeats until cancelled."""
        try:
            while True:
                address = control_plane_address(self._cluster_file)
                if address is None:
                    await asyncio.sleep(ABSENT_RETRY_MS / 1000)
                    continue
                self.interval_ms = await self._send(address, self.interval_ms)
                await asyncio.sleep(self.interval_ms / 1000)
        finally:
            if self._channel is not None:
                await self._channel.close()

    async def _send(self, address: str, interval_ms: int) -> int:
        """One heartbeat; the interval to keep (the control plane's, or the last one)."""
        stub = control_pb2_grpc.ControlPlaneStub(self._channel_to(address))
        status = self._status()
        request = control_pb2.HeartbeatRequest(
            name=self._name,
            role=self._role,
            pid=os.getpid(),
            lsn=status.lsn,
            lag_lsns=status.lag_lsns,
            lag_ms=status.lag_ms,
        )
        try:
            response = await stub.Heartbeat(request, timeout=RPC_TIMEOUT_S)
        except aio.AioRpcError as error:
            self.failed_total += 1
            # Logged once per run of failures: a control plane restart is not news per beat.
            if self.failed_total == 1:
                log.warning("heartbeat failed", control_plane=address, code=str(error.code()))
            return interval_ms
        self.sent_total += 1
        self.failed_total = 0
        return min(INTERVAL_MS_MAX, max(INTERVAL_MS_MIN, response.interval_ms or interval_ms))

    def _channel_to(self, address: str) -> aio.Channel:
        if self._channel is None or address != self._address:
            if self._channel is not None:
                # The old one is closed in the background: a heartbeat never waits on it.
                asyncio.ensure_future(self._channel.close())
            self._channel = rpc.channel(address)
            self._address = address
        return self._channel
