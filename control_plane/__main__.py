"""python -m control_plane --data-dir DIR [--base-port PORT] [--storage-nodes N] [--readers N]
[--heartbeat-interval-ms MS] [--writer-dead-after-ms MS] [--storage-replace-after-s S]
[--min-capacity BCU] [--max-capacity BCU] [--min-readers N] [--max-readers N] ...

Started in the background by `borealis up`. It starts and supervises the cluster's
processes (storage nodes, the writer, readers, the router), serves gRPC health and
the ControlPlane API (control_plane/service.py) on the base port, writes
DIR/cluster.json, and on SIGTERM stops everything it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from borealis import faults, log, rpc
from borealis.errors import BorealisError
from control_plane.failover import FailoverPolicy, FailoverSettings
from control_plane.metering import start_metering
from control_plane.scaling import SCALING_FLAGS, ScalingSettings
from control_plane.service import ControlPlaneAdmin, ControlPlaneService
from control_plane.storage_replacement import (
    REPLACE_AFTER_S_DEFAULT,
    ReplacementSettings,
    StorageReplacementPolicy,
)
from control_plane.supervisor import Supervisor
from deploy.local import LocalCluster
from deploy.ports import PortAllocator, port_is_free
from proto import admin_pb2_grpc, control_pb2_grpc, metering_pb2_grpc

logger = log.get_logger("control_plane")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m control_plane")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--storage-nodes", type=int, default=6)
    parser.add_argument("--storage-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--instance-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-writer", action="store_true", help="start only the storage tier")
    parser.add_argument("--readers", type=int, default=0, help="reader instances to start")
    parser.add_argument(
        "--tls", action="store_true", help="TLS on the PostgreSQL endpoints of a new cluster"
    )
    defaults = FailoverSettings()
    parser.add_argument("--heartbeat-interval-ms", type=int, default=defaults.heartbeat_interval_ms)
    parser.add_argument(
        "--writer-dead-after-ms",
        type=int,
        default=defaults.writer_dead_after_ms,
        help="a writer with no heartbeat for this long is declared dead",
    )
    parser.add_argument(
        "--storage-replace-after-s",
        type=float,
        default=REPLACE_AFTER_S_DEFAULT,
        help="a storage node down this long is replaced (0: never)",
    )
    # Scaling: unset flags keep what cluster.json has (else the defaults).
    parser.add_argument("--min-capacity", type=float, help="BCU, 0.5 steps in [0.5, 16]")
    parser.add_argument("--max-capacity", type=float, help="BCU, 0.5 steps in [0.5, 16]")
    parser.add_argument("--min-readers", type=int)
    parser.add_argument("--max-readers", type=int, help="0: reader auto-scaling off")
    parser.add_argument(
        "--auto-pause-s",
        type=float,
        help="pause an idle cluster (no statement, no connection) after this long (0: never)",
    )
    parser.add_argument(
        "--scaling-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other scaling setting (control_plane/scaling.py ScalingSettings)",
    )
    return parser.parse_args(argv)


def scaling_settings(args: argparse.Namespace, kept: dict[str, object]) -> ScalingSettings:
    """The settings kept in cluster.json (else the defaults) with the flags given."""
    settings = ScalingSettings.from_json(kept)
    changes: dict[str, object] = {
        field: getattr(args, flag)
        for flag, field in SCALING_FLAGS.items()
        if getattr(args, flag) is not None
    }
    defaults = settings.to_json()
    for item in args.scaling_set:
        key, _, text = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown scaling setting {key!r}")
        changes[key] = _typed(text, defaults[key])
    return settings.updated(changes)


def _typed(text: str, like: object) -> object:
    if isinstance(like, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(like, (int, float)):
        return type(like)(text)
    return text


def failover_policy(args: argparse.Namespace) -> FailoverPolicy:
    settings = FailoverSettings(
        heartbeat_interval_ms=args.heartbeat_interval_ms,
        writer_dead_after_ms=args.writer_dead_after_ms,
        reader_stale_after_ms=args.writer_dead_after_ms,
    )
    return FailoverPolicy(settings)


def replacement_policy(args: argparse.Namespace) -> StorageReplacementPolicy:
    replace_after_s = args.storage_replace_after_s
    # Several looks within the limit, never more than one a second.
    check_interval_s = min(1.0, replace_after_s / 4) if replace_after_s > 0 else 1.0
    settings = ReplacementSettings(
        replace_after_s=replace_after_s, check_interval_s=check_interval_s
    )
    return StorageReplacementPolicy(settings)


def build_cluster(args: argparse.Namespace) -> LocalCluster:
    """The existing cluster in the data directory (same volume, same ports), else a new one."""
    # Ports after the control plane's own, in order, each test-bound (a reopened
    # cluster takes new ones, for a new storage node, from there too).
    ports = PortAllocator(start=args.base_port + 1)
    existing = LocalCluster.reopen(args.data_dir)
    if existing.storage_nodes:
        existing.ports = ports
        return existing
    return LocalCluster(
        args.data_dir,
        ports=ports,
        storage_nodes=args.storage_nodes,
        storage_overrides=dict(item.split("=", 1) for item in args.storage_set),
        writer=not args.no_writer,
        instance_overrides=dict(item.split("=", 1) for item in args.instance_set),
        readers=args.readers,
        router=not args.no_writer,
        client_tls=args.tls,
    )


def serve(port: int, supervisor: Supervisor) -> tuple[grpc.Server, health.HealthServicer]:
    """Health and the ControlPlane API on the base port."""
    # Heartbeats keep arriving while a long request (a failover) holds a thread.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    control_pb2_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(supervisor), server)
    # Metering samples the cluster in its own thread until the supervisor stops.
    metering_pb2_grpc.add_MeteringServicer_to_server(start_metering(supervisor), server)
    admin_pb2_grpc.add_AdminServicer_to_server(ControlPlaneAdmin(supervisor), server)
    # Mutual TLS with the cluster's credentials, like every process of the cluster:
    # the control plane creates them when it creates the cluster.
    supervisor.cluster.configure_transport()
    if rpc.listen(server, f"127.0.0.1:{port}") == 0:
        raise BorealisError("cannot listen on the control plane port", port=port)
    server.start()
    return server, servicer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log.configure("info")
    faults.configure_from_env()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if not port_is_free(args.base_port):
        logger.error("control plane port is in use", port=args.base_port)
        return 2
    cluster = build_cluster(args)
    try:
        policy = failover_policy(args)
        replacement = replacement_policy(args)
        scaling = scaling_settings(args, cluster.scaling)
    except ValueError as error:
        logger.error("bad failover, storage replacement or scaling settings", error=str(error))
        return 2
    supervisor = Supervisor(
        cluster, args.base_port, failover=policy, replacement=replacement, scaling=scaling
    )
    server, servicer = serve(args.base_port, supervisor)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    try:
        supervisor.start()
    except BorealisError as error:
        logger.error("cluster failed to start", error=str(error))
        server.stop(0)
        return 1
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    logger.info("control plane serving", port=args.base_port, data_dir=str(args.data_dir))
    supervisor.run()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.stop(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
