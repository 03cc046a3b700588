"""gRPC plumbing shared by every service: error mapping, channels, servers, health."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from borealis import tls
from borealis.errors import BorealisError, from_grpc, grpc_status_of
from borealis.log import get_logger
from proto import admin_pb2, admin_pb2_grpc

log = get_logger("rpc")

T = TypeVar("T")

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


def message_options(message_bytes_max: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", message_bytes_max),
        ("grpc.max_receive_message_length", message_bytes_max),
    ]


def handler(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turns BorealisErrors raised by a servicer method into their gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except BorealisError as error:
            await context.abort(grpc_status_of(error), str(error))
        except (aio.AbortError, aio.UsageError):
            raise
        except Exception as error:
            log.error("handler failed", exc_info=True, method=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error!r}")
        raise AssertionError("abort returns only by raising")

    return wrapper


# A channel of its own per client: gRPC otherwise shares one connection per
# address across channels, so a new channel to a node that just restarted inherits
# an old channel's reconnect backoff and fails at once. Backoff stays short (the
# default grows to 120 s), so a writer resumes soon after a node comes back.
# gRPC takes min_reconnect_backoff_ms as the shortest time a connection attempt
# may take, not as a backoff: at 100 ms, a TLS handshake on a loaded machine
# ran out of time ("connection attempt timed out before receiving SETTINGS
# frame") and a serving node looked unreachable.
CONNECT_TIMEOUT_MIN_MS = 1000
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MIN_MS),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


# Small messages only (health, metrics, control plane calls).
SMALL_MESSAGE_BYTES_MAX = 16 * 2**20


class _Transport:
    """The process's transport security: set once by `configure_transport`, else
    read at first use from the TLS directory named by tls.TLS_DIR_ENV (how the
    launcher hands it to every process it starts), else none (plain gRPC)."""

    security: tls.TransportSecurity | None = None
    resolved = False


def configure_transport(security: tls.TransportSecurity | None) -> None:
    """Makes every later channel and server of this process use `security` (mutual
    TLS), or plain gRPC with None. Channels opened before keep what they had."""
    _Transport.security = security
    _Transport.resolved = True


def transport() -> tls.TransportSecurity | None:
    if not _Transport.resolved:
        tls_dir = os.environ.get(tls.TLS_DIR_ENV)
        configure_transport(tls.load(Path(tls_dir)) if tls_dir else None)
    return _Transport.security


def channel(address: str, message_bytes_max: int = SMALL_MESSAGE_BYTES_MAX) -> aio.Channel:
    options = _channel_options(message_bytes_max)
    security = transport()
    if security is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, security.channel_credentials(), options=options)


def sync_channel(address: str, message_bytes_max: int = SMALL_MESSAGE_BYTES_MAX) -> grpc.Channel:
    """A blocking channel (the CLI, the control plane), secured as `channel` is."""
    options = _channel_options(message_bytes_max)
    security = transport()
    if security is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, security.channel_credentials(), options=options)


def _channel_options(message_bytes_max: int) -> list[tuple[str, int]]:
    return message_options(message_bytes_max) + KEEPALIVE_OPTIONS + CHANNEL_OPTIONS


async def call(coroutine: Awaitable[T], **context: Any) -> T:
    """Awaits a client call, turning its gRPC failure into the matching BorealisError."""
    try:
        return await coroutine
    except aio.AioRpcError as error:
        raise from_grpc(error, **context) from None


def server(message_bytes_max: int) -> aio.Server:
    # Clients ping every keepalive_time_ms, also when idle; by default a server
    # accepts idle pings only every 5 minutes and answers more with GOAWAY
    # "too_many_pings", dropping every idle peer channel after about 30 s.
    ping_options = [("grpc.http2.min_ping_interval_without_data_ms", 5_000)]
    return aio.server(options=message_options(message_bytes_max) + KEEPALIVE_OPTIONS + ping_options)


def listen(server: aio.Server | grpc.Server, address: str) -> int:
    """Binds `address` (host:port, port 0 picks one) with the process's transport
    security, requiring client certificates under mutual TLS; the bound port, 0 if
    it could not bind."""
    security = transport()
    if security is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, security.server_credentials())


def add_health(server: aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def set_serving(servicer: Any, services: list[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ["", *services]:
        await servicer.set(service, status)


async def health_status(address: str, timeout_s: float) -> str:
    """The overall health of the process at `address`: SERVING, NOT_SERVING, or UNREACHABLE."""
    async with channel(address) as ch:
        try:
            response = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except aio.AioRpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def metrics_text(address: str, timeout_s: float) -> str:
    """The Prometheus text of the process at `address` (its Admin GetMetrics)."""
    async with channel(address) as ch:
        response = await admin_pb2_grpc.AdminStub(ch).GetMetrics(
            admin_pb2.GetMetricsRequest(), timeout=timeout_s
        )
    return str(response.text)
