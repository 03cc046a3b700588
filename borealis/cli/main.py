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
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from borealis import rpc
from borealis.cli import sql
from borealis.errors import BorealisError, NotFound, Unavailable
from borealis.wait import wait_until
from deploy.local import REPO_ROOT, pid_alive, read_cluster_file
from storage_node.client import StorageClient

DEFAULT_DATA_DIR = Path(".borealis")
# Clear of PostgreSQL's 5432 and of the ephemeral range.
DEFAULT_BASE_PORT = 7400
UP_TIMEOUT_S = 90.0
DOWN_TIMEOUT_S = 30.0


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
    if args.no_writer:
        argv.append("--no-writer")
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
                for process in [*document["storage_nodes"], *document["instances"]]
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
    print(f'    or:   PGPASSWORD="$(cat {password_file})" psql {writer}')


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

    async def gather() -> None:
        await asyncio.gather(
            *(storage_health(node) for node in document["storage_nodes"]),
            *(instance_health(instance) for instance in document["instances"]),
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
        print(f"{header} {'segments':>8}")
        for node in document["storage_nodes"]:
            shown = str(node["segments"]) if node["segments"] >= 0 else "-"
            print(_row(node, "storage", node["az"]) + f" {shown:>8}")
        for instance in document["instances"]:
            print(_row(instance, instance["role"], "-") + f"  {instance.get('endpoint', '')}")
    processes = [*document["storage_nodes"], *document["instances"]]
    return 0 if all(process["health"] == "SERVING" for process in processes) else 1


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
    up.set_defaults(run=cmd_up)

    down = commands.add_parser("down", help="stop the local cluster")
    down.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    down.set_defaults(run=cmd_down)

    status = commands.add_parser("status", help="show each process, its state and health")
    status.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    status.add_argument("--json", action="store_true", help="cluster.json with live health")
    status.set_defaults(run=cmd_status)

    sql.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except BorealisError as error:
        print(f"borealis: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
