"""What every Borealis service process does around its own work: serve gRPC with the
health service, write its bound address, serve /metrics, and stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from grpc import aio

from borealis import rpc
from borealis.metrics import Metrics, serve_http


class Serving:
    """A started gRPC server (services already added) and its metrics endpoint."""

    def __init__(self, server: aio.Server, health: object, services: list[str], port: int) -> None:
        self._server = server
        self._health = health
        self._services = services
        self.port = port
        self._metrics_server: asyncio.Server | None = None

    @classmethod
    async def start(
        cls,
        server: aio.Server,
        services: list[str],
        host: str,
        port: int,
        data_dir: Path,
        metrics: Metrics,
        metrics_port: int | None,
    ) -> Serving:
        """Adds health, listens (port 0 picks one, written to data_dir/address) with the
        process's transport security, serves /metrics when a metrics port is set, and
        reports SERVING."""
        health = rpc.add_health(server)
        bound = rpc.listen(server, f"{host}:{port}")
        await server.start()
        serving = cls(server, health, services, bound)
        if metrics_port is not None:
            serving._metrics_server = await serve_http(metrics, host, metrics_port)
        (data_dir / "address").write_text(f"{host}:{bound}\n")
        await rpc.set_serving(health, services, True)
        return serving

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING first (clients move away), then stop taking calls."""
        await rpc.set_serving(self._health, self._services, False)
        if self._metrics_server is not None:
            self._metrics_server.close()
        await self._server.stop(grace_s)


async def until_stopped() -> None:
    """Returns when the process gets SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
