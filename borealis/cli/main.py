"""borealis up | down | status: run a local cluster.

`up` starts the control plane in the background; the control plane starts and
supervises the storage nodes (and, once they exist, the instances) and writes
DIR/cluster.json. Until the writer instance exists, a cluster is its storage tier:
six storage nodes, two in each of three simulated AZs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from borealis import metrics, rpc
from borealis.cli import backup, cost, snapshot, sql
from borealis.errors import BorealisError, NotFound, Unavailable, from_grpc
from borealis.wait import wait_until
from control_plane.scaling import SCALING_FLAGS
from deploy.local import REPO_ROOT, configure_transport_from, pid_alive, read_cluster_file
from proto import control_pb2, control_pb2_grpc
from storage_node.client import StorageClient

DEFAULT_DATA_DIR = Path(".borealis")
# Clear of PostgreSQL's 5432 and of the ephemeral range.
DEFAULT_BASE_PORT = 7400
UP_TIMEOUT_S = 90.0
DOWN_TIMEOUT_S = 30.0
# Adding a reader waits for it to serve; removing one waits for its drain.
CONTROL_TIMEOUT_S = 120.0
# How long `replace-storage-node` waits for the new node to hydrate by default.
REPLACE_TIMEOUT_S_DEFAULT = 120.0
# Read from each instance's metrics for `status`.
CONNECTIONS_METRIC = "borealis_instance_pg_connections"
LAG_METRIC = "borealis_instance_replica_lag_ms"
SCALING_SET_FLAGS = {
    **SCALING_FLAGS,
    "reader_metric": "reader_metric",
    "reader_target": "reader_target",
    "scale_out_cooldown_s": "scale_out_cooldown_s",
    "scale_in_cooldown_s": "scale_in_cooldown_s",
    "scale_in_after_s": "scale_in_after_s",
    "capacity_down_after_s": "capacity_down_after_s",
    "capacity_up_cooldown_s": "capacity_up_cooldown_s",
    "capacity_down_cooldown_s": "capacity_down_cooldown_s",
}


def _document(data_dir: Path) -> dict[str, Any] | None:
    try:
        return read_cluster_file(data_dir)
    except NotFound:
        return None


def _control_plane_running(document: dict[str, Any] | None) -> bool:
    return bool(document) and pid_alive(document.get("control_plane", {}).get("pid"))  # type: ignore[union-attr]


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    if _control_plane_running(_document(data_dir)):
        print(f"a cluster is already running in {data_dir}; nothing changed")
        return print_status(data_dir, as_json=False)
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "control_plane",
        "--data-dir",
        str(data_dir),
        "--base-port",
        str(args.base_port),
        "--storage-nodes",
        str(args.storage_nodes),
    ]
    for item in args.storage_set:
        argv += ["--storage-set", item]
    for item in args.instance_set:
        argv += ["--instance-set", item]
    argv += backup.up_arguments(args)
    if args.no_writer:
        argv.append("--no-writer")
    # The KMS is a storage node setting; an empty one turns encryption at rest off.
    if args.no_encryption or args.kms_url:
        argv += ["--storage-set", f"kms_url={'' if args.no_encryption else args.kms_url}"]
    if args.tls:
        argv.append("--tls")
    if args.readers:
        argv += ["--readers", str(args.readers)]
    for flag in (
        "heartbeat_interval_ms",
        "writer_dead_after_ms",
        "storage_replace_after_s",
        *SCALING_FLAGS,
    ):
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    with open(data_dir / "control_plane.log", "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise Unavailable(f"the control plane exited with status {process.returncode}")
        document = _document(data_dir)
        return bool(
            document
            and document["control_plane"].get("pid") == process.pid
            and all(
                process["state"] == "running"
                for process in [
                    *document["storage_nodes"],
                    *document["instances"],
                    *([document["router"]] if document.get("router") else []),
                ]
            )
        )

    try:
        wait_until(ready, UP_TIMEOUT_S, interval_s=0.2, what="the cluster to start")
    except Unavailable as error:
        tail = (data_dir / "control_plane.log").read_text(errors="replace").splitlines()[-20:]
        print(f"borealis: {error}\n" + "\n".join(tail), file=sys.stderr)
        if process.poll() is None:
            process.terminate()
        return 1
    print(f"cluster up in {data_dir}")
    # The credentials exist now (the control plane created them with the cluster).
    configure_transport_from(read_cluster_file(data_dir))
    status = print_status(data_dir, as_json=False)
    print_connect_hint(data_dir)
    return status


def print_connect_hint(data_dir: Path) -> None:
    """How to connect, as `up` prints it: the bundled client and psql."""
    document = read_cluster_file(data_dir)
    writer = document.get("endpoints", {}).get("writer")
    if not writer:
        return
    password_file = document["password_file"]
    data_option = "" if data_dir == DEFAULT_DATA_DIR.resolve() else f" --data-dir {data_dir}"
    print()
    print(f"writer endpoint: {writer}  (password in {password_file}, mode 0600)")
    print(f"connect:  borealis sql{data_option}")
    print(f'    or:   PGPASSWORD="$(cat {password_file})" psql {shlex.quote(writer)}')


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    document = _document(data_dir)
    if document is None:
        print(f"no cluster in {data_dir}")
        return 0
    control_plane_pid = document["control_plane"].get("pid")
    if pid_alive(control_plane_pid):
        os.kill(control_plane_pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        while pid_alive(control_plane_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    # Whatever is still alive (the control plane died, or timed out) is killed.
    leftovers = [
        pid
        for pid in [
            control_plane_pid,
            *(process["pid"] for process in [*document["instances"], *document["storage_nodes"]]),
        ]
        if pid_alive(pid)
    ]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    print(f"cluster in {data_dir} stopped" + (f" ({len(leftovers)} killed)" if leftovers else ""))
    return 0


def _control_plane(data_dir: Path) -> control_pb2_grpc.ControlPlaneStub:
    document = read_cluster_file(data_dir)
    if not _control_plane_running(document):
        raise Unavailable("the cluster is not running (borealis up starts it)")
    channel = rpc.sync_channel(document["control_plane"]["address"])
    return control_pb2_grpc.ControlPlaneStub(channel)


def _call(method: Any, request: Any, timeout_s: float = CONTROL_TIMEOUT_S) -> Any:
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as error:
        raise from_grpc(error) from None


def cmd_add_reader(args: argparse.Namespace) -> int:
    stub = _control_plane(Path(args.data_dir).resolve())
    added = _call(stub.AddReader, control_pb2.AddReaderRequest(tier=args.tier))
    print(f"reader {added.name} serving at {added.endpoint}")
    return 0


def cmd_remove_reader(args: argparse.Namespace) -> int:
    stub = _control_plane(Path(args.data_dir).resolve())
    request = control_pb2.RemoveReaderRequest(
        name=args.name, drain_timeout_ms=int(args.drain_timeout_s * 1000)
    )
    removed = _call(stub.RemoveReader, request)
    print(f"reader {args.name} removed ({removed.sessions_closed} sessions were still open)")
    return 0


def cmd_endpoint_create(args: argparse.Namespace) -> int:
    stub = _control_plane(Path(args.data_dir).resolve())
    instances = [name.strip() for name in args.instances.split(",") if name.strip()]
    request = control_pb2.CreateEndpointRequest(name=args.name, instances=instances)
    created = _call(stub.CreateEndpoint, request)
    print(f"endpoint {args.name}: {created.url}")
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    """A planned switchover: the control plane stops the writer cleanly, promotes the
    target (or the best reader) and restarts the old writer as a reader."""
    stub = _control_plane(Path(args.data_dir).resolve())
    done = _call(stub.Failover, control_pb2.FailoverRequest(target=args.target or ""))
    print(
        f"failover done: {done.new_writer} is the writer, {done.old_writer} a reader "
        f"({done.switchover_ms} ms without a writer)"
    )
    return 0


def cmd_replace_storage_node(args: argparse.Namespace) -> int:
    """Replaces a storage node by a new one in its AZ while I/O goes on; on a timeout
    the change stays in progress and running the command again continues it."""
    stub = _control_plane(Path(args.data_dir).resolve())
    request = control_pb2.ReplaceStorageNodeRequest(
        name=args.name, timeout_ms=round(args.timeout_s * 1000)
    )
    # The control plane also starts the new node and waits for a replacement in
    # progress to finish first: the call's deadline leaves room for both.
    done = _call(stub.ReplaceStorageNode, request, args.timeout_s * 2 + CONTROL_TIMEOUT_S)
    pgs = ",".join(str(pg) for pg in done.pgs) or "none"
    print(
        f"storage node {done.old_node} replaced by {done.new_node}: "
        f"{len(done.pgs)} PGs moved ({pgs}) in {done.duration_ms / 1000:.1f} s"
    )
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Stops every instance cleanly; storage and the router stay up."""
    stub = _control_plane(Path(args.data_dir).resolve())
    done = _call(stub.Pause, control_pb2.PauseRequest(reason="borealis pause"))
    print(f"paused in {done.pause_ms} ms" if done.paused else "already paused")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Starts the instances of a paused cluster; returns once the writer serves."""
    stub = _control_plane(Path(args.data_dir).resolve())
    done = _call(stub.Resume, control_pb2.ResumeRequest(reason="borealis resume"))
    if done.resumed:
        print(f"resumed: {done.writer} serving after {done.resume_ms} ms")
    else:
        print("not paused")
    return 0


def cmd_scaling_set(args: argparse.Namespace) -> int:
    """Changes the automatic scaling settings (unset flags keep their value)."""
    stub = _control_plane(Path(args.data_dir).resolve())
    changes = {
        field: getattr(args, flag)
        for flag, field in SCALING_SET_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.enabled is not None:
        changes["enabled"] = args.enabled == "on"
    settings = _call(stub.SetScaling, control_pb2.ScalingSettings(**changes))
    print_scaling_settings(settings)
    return 0


def print_scaling_settings(settings: control_pb2.ScalingSettings) -> None:
    readers = (
        f"{settings.min_readers}..{settings.max_readers} readers"
        f" ({settings.reader_metric} per reader, target {settings.reader_target:g})"
        if settings.max_readers
        else "reader auto-scaling off (max readers 0)"
    )
    pause = (
        f"auto-pause after {settings.auto_pause_s:g} s"
        if settings.auto_pause_s
        else "no auto-pause"
    )
    state = "on" if settings.enabled else "off"
    print(
        f"scaling {state}: capacity {settings.min_capacity_bcu:g}..{settings.max_capacity_bcu:g}"
        f" BCU; {readers}; {pause}"
    )


def cmd_scaling_history(args: argparse.Namespace) -> int:
    """The scaling decisions that changed something, as a table (newest last)."""
    stub = _control_plane(Path(args.data_dir).resolve())
    request = control_pb2.GetScalingHistoryRequest(limit=args.limit, instance=args.instance)
    history = _call(stub.GetScalingHistory, request, timeout_s=10.0)
    if args.json:
        print(json.dumps([_event_json(event) for event in history.events], indent=2))
        return 0
    print_scaling_settings(history.settings)
    capacities = ", ".join(f"{name} {bcu:g}" for name, bcu in sorted(history.capacity_bcu.items()))
    print(f"capacity now (BCU): {capacities or '-'}")
    print()
    print(f"{'time':<19} {'instance':<10} {'kind':<9} {'from':>5} {'to':>5}  reason / inputs")
    for event in history.events:
        moment = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.time_unix_s))
        inputs = " ".join(f"{key}={value:g}" for key, value in sorted(event.inputs.items()))
        outcome = f"FAILED: {event.error}; " if event.error else ""
        print(
            f"{moment:<19} {event.instance:<10} {event.kind:<9} {event.from_value:>5g}"
            f" {event.to_value:>5g}  {outcome}{event.reason}"
        )
        if inputs:
            print(f"{'':<19} {'':<10} {'':<9} {'':>5} {'':>5}    {inputs}")
    return 0


def _event_json(event: control_pb2.ScalingEvent) -> dict[str, Any]:
    return {
        "time_unix_s": event.time_unix_s,
        "instance": event.instance,
        "kind": event.kind,
        "from": event.from_value,
        "to": event.to_value,
        "reason": event.reason,
        "inputs": dict(event.inputs),
        "error": event.error,
    }


def cmd_status(args: argparse.Namespace) -> int:
    return print_status(Path(args.data_dir).resolve(), as_json=args.json)


def print_status(data_dir: Path, as_json: bool) -> int:
    document = read_cluster_file(data_dir)

    async def storage_health(node: dict[str, Any]) -> None:
        node["health"] = await _health(node)
        node["segments"] = -1
        if node["health"] == "SERVING":
            async with StorageClient(node["address"], timeout_s=2.0) as client:
                node["segments"] = len(await client.list_segments())

    async def instance_health(instance: dict[str, Any]) -> None:
        instance["health"] = await _health(instance)
        instance["connections"] = instance["lag_ms"] = None
        if instance["health"] == "SERVING":
            samples = metrics.parse(await rpc.metrics_text(instance["address"], 2.0))
            instance["connections"] = samples.get(CONNECTIONS_METRIC)
            instance["lag_ms"] = samples.get(LAG_METRIC)

    async def gather() -> None:
        router = [document["router"]] if document.get("router") else []
        await asyncio.gather(
            *(storage_health(node) for node in document["storage_nodes"]),
            *(instance_health(instance) for instance in document["instances"]),
            *(_set_health(process) for process in router),
        )

    asyncio.run(gather())
    control_plane = document["control_plane"]
    control_plane["running"] = pid_alive(control_plane.get("pid"))
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        running = "running" if control_plane["running"] else "not running"
        pid, port = control_plane.get("pid"), control_plane.get("port")
        print(f"control plane: {running} (pid {pid}, port {port})")
        header = f"{'name':<6} {'role':<8} {'az':<6} {'address':<22} {'pid':>8} {'state':<11} {'health':<12}"
        print(f"{header} {'up':<4} {'segments':>8}")
        for node in document["storage_nodes"]:
            shown = str(node["segments"]) if node["segments"] >= 0 else "-"
            up = "up" if node["health"] == "SERVING" else "down"
            print(_row(node, "storage", node["az"]) + f" {up:<4} {shown:>8}")
        for old, new in (document.get("storage_replacements") or {}).items():
            print(
                f"replacement in progress: {old} -> {new} (replace-storage-node {old} continues it)"
            )
        print()
        print(
            f"{'name':<6} {'role':<8} {'tier':>4} {'lag_ms':>8} {'conns':>6} {'state':<11} "
            f"{'health':<12} endpoint"
        )
        for instance in document["instances"]:
            lag = "-" if instance["lag_ms"] is None else f"{instance['lag_ms']:.1f}"
            connections = "-" if instance["connections"] is None else int(instance["connections"])
            print(
                f"{instance['name']:<6} {instance['role']:<8} {instance.get('tier', 1):>4} "
                f"{lag:>8} {connections:>6} {instance['state']:<11} {instance['health']:<12} "
                f"{instance.get('endpoint', '')}"
            )
        endpoints = document.get("endpoints", {})
        if document.get("router"):
            router = document["router"]
            print(f"\nrouter: {router['health']} (pid {router['pid']}, {router['address']})")
        print_pause(document)
        for name in ("writer", "reader"):
            if name in endpoints:
                print(f"{name} endpoint: {endpoints[name]}")
        for name, url in endpoints.get("custom", {}).items():
            print(f"custom endpoint {name}: {url}")
    router = [document["router"]] if document.get("router") else []
    processes = [*document["storage_nodes"], *document["instances"], *router]
    # A paused instance is meant to be down.
    up = [process for process in processes if process.get("state") != "paused"]
    return 0 if all(process["health"] == "SERVING" for process in up) else 1


def print_pause(document: dict[str, Any]) -> None:
    """Whether the cluster is paused (since when) and how long the last resume took."""
    pause = document.get("pause") or {}
    if document.get("paused"):
        since = time.strftime("%H:%M:%S", time.localtime(pause.get("paused_at_unix_s", 0)))
        print(
            f"\npaused since {since}: a new connection resumes it ({pause.get('pause_reason', '')})"
        )
    if "resume_ms_last" in pause:
        at = time.strftime("%H:%M:%S", time.localtime(pause.get("resumed_at_unix_s", 0)))
        print(f"last resume: {pause['resume_ms_last']} ms to the writer serving, at {at}")


async def _set_health(process: dict[str, Any]) -> None:
    process["health"] = await _health(process)


async def _health(process: dict[str, Any]) -> str:
    if not pid_alive(process["pid"]):
        return "DOWN"
    return await rpc.health_status(process["address"], 2.0)


def _row(process: dict[str, Any], role: str, az: str) -> str:
    return (
        f"{process['name']:<6} {role:<8} {az:<6} {process['address']:<22} "
        f"{process['pid'] or '-':>8} {process['state']:<11} {process['health']:<12}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="borealis", description="Borealis: an Aurora-style database."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="start a local cluster (reopens an existing data directory)"
    )
    up.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    up.add_argument(
        "--base-port", type=int, default=DEFAULT_BASE_PORT, help="control plane port; nodes follow"
    )
    up.add_argument("--storage-nodes", type=int, default=6)
    up.add_argument(
        "--storage-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="storage node setting",
    )
    up.add_argument(
        "--instance-set", action="append", default=[], metavar="KEY=VALUE", help="instance setting"
    )
    up.add_argument("--no-writer", action="store_true", help="start only the storage tier")
    encryption = up.add_mutually_exclusive_group()
    encryption.add_argument(
        "--no-encryption", action="store_true", help="store data unencrypted (on by default)"
    )
    encryption.add_argument(
        "--kms-url",
        help="KMS wrapping the data keys: local:///PATH or aws-kms://KEY_ID?endpoint=URL&region=R "
        "(default: a local master key, DIR/master.key)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on the PostgreSQL endpoints (certificates from the cluster CA in DIR/tls)",
    )
    up.add_argument("--readers", type=int, default=0, help="reader instances to start")
    up.add_argument("--heartbeat-interval-ms", type=int, help="instances' heartbeat period")
    up.add_argument(
        "--writer-dead-after-ms", type=int, help="silence after which the writer fails over"
    )
    up.add_argument(
        "--storage-replace-after-s",
        type=float,
        help="a storage node down this long is replaced by a new one (default 600; 0: never)",
    )
    add_scaling_bounds(up)
    backup.add_up_arguments(up)
    up.set_defaults(run=cmd_up)

    add_reader = commands.add_parser("add-reader", help="start one more reader instance")
    add_reader.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    add_reader.add_argument("--tier", type=int, default=1, help="failover priority, 0 first")
    add_reader.set_defaults(run=cmd_add_reader)

    remove_reader = commands.add_parser(
        "remove-reader", help="drain a reader's sessions, then stop it"
    )
    remove_reader.add_argument("name")
    remove_reader.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    remove_reader.add_argument("--drain-timeout-s", type=float, default=10.0)
    remove_reader.set_defaults(run=cmd_remove_reader)

    endpoint = commands.add_parser("endpoint", help="custom endpoints")
    endpoint_commands = endpoint.add_subparsers(dest="endpoint_command", required=True)
    create = endpoint_commands.add_parser("create", help="an endpoint over chosen instances")
    create.add_argument("name")
    create.add_argument("--instances", required=True, help="comma-separated instance names")
    create.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    create.set_defaults(run=cmd_endpoint_create)

    failover = commands.add_parser(
        "failover", help="planned switchover: promote a reader, the writer becomes a reader"
    )
    failover.add_argument("--target", default="", help="the reader to promote (default: best)")
    failover.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    failover.set_defaults(run=cmd_failover)

    replace = commands.add_parser(
        "replace-storage-node",
        help="replace a storage node by a new one in its AZ, with no pause in I/O",
    )
    replace.add_argument("name", help="the storage node to replace, e.g. s2")
    replace.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    replace.add_argument(
        "--timeout-s",
        type=float,
        default=REPLACE_TIMEOUT_S_DEFAULT,
        help="how long to wait for the new node to hydrate (run again to continue)",
    )
    replace.set_defaults(run=cmd_replace_storage_node)

    add_scaling_parser(commands)

    pause = commands.add_parser("pause", help="stop the instances (storage and the router stay up)")
    pause.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    pause.set_defaults(run=cmd_pause)
    resume = commands.add_parser(
        "resume", help="start a paused cluster's instances (a new connection does too)"
    )
    resume.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    resume.set_defaults(run=cmd_resume)

    down = commands.add_parser("down", help="stop the local cluster")
    down.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    down.set_defaults(run=cmd_down)

    status = commands.add_parser("status", help="show each process, its state and health")
    status.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    status.add_argument("--json", action="store_true", help="cluster.json with live health")
    status.set_defaults(run=cmd_status)

    sql.add_parser(commands)
    cost.add_parser(commands)
    backup.add_parsers(commands, main)
    snapshot.add_parsers(commands, main)
    return parser


def add_scaling_bounds(parser: argparse.ArgumentParser) -> None:
    """The scaling flags `up` and `scaling set` share (unset: unchanged)."""
    parser.add_argument(
        "--min-capacity", type=float, help="BCU (128 MiB cache + 2 SQL readers), 0.5 steps"
    )
    parser.add_argument("--max-capacity", type=float, help="BCU, at most 16")
    parser.add_argument("--min-readers", type=int, help="readers kept at least")
    parser.add_argument(
        "--max-readers", type=int, help="readers at most (0: reader auto-scaling off)"
    )
    parser.add_argument(
        "--auto-pause-s",
        type=float,
        help="pause an idle cluster (no statement, no connection) after this long (0: never)",
    )


def add_scaling_parser(commands: Any) -> None:
    scaling = commands.add_parser("scaling", help="automatic capacity and reader scaling")
    scaling_commands = scaling.add_subparsers(dest="scaling_command", required=True)
    set_parser = scaling_commands.add_parser("set", help="change the scaling settings")
    set_parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    add_scaling_bounds(set_parser)
    set_parser.add_argument("--reader-metric", choices=("connections", "cpu"))
    set_parser.add_argument(
        "--reader-target", type=float, help="connections (or cores) per reader to track"
    )
    for flag in (
        "scale_out_cooldown_s",
        "scale_in_cooldown_s",
        "scale_in_after_s",
        "capacity_down_after_s",
        "capacity_up_cooldown_s",
        "capacity_down_cooldown_s",
    ):
        set_parser.add_argument("--" + flag.replace("_", "-"), type=float)
    set_parser.add_argument("--enabled", choices=("on", "off"), help="turn the scaling loop on/off")
    set_parser.set_defaults(run=cmd_scaling_set)
    history = scaling_commands.add_parser("history", help="the scaling decisions, as a table")
    history.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    history.add_argument("--limit", type=int, default=50, help="the newest N (0: all kept)")
    history.add_argument("--instance", default="", help="only this instance's decisions")
    history.add_argument("--json", action="store_true")
    history.set_defaults(run=cmd_scaling_history)


def _configure_transport(args: argparse.Namespace) -> None:
    """gRPC to the cluster with its credentials (mutual TLS), which cluster.json
    names; `up` has no cluster.json to read yet and needs none."""
    data_dir = getattr(args, "data_dir", None)
    document = _document(Path(data_dir)) if data_dir is not None else None
    if document is not None:
        configure_transport_from(document)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _configure_transport(args)
        return int(args.run(args))
    except BorealisError as error:
        print(f"borealis: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
