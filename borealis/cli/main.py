"""borealis up | down | status: run a local cluster.

Until the writer instance exists, a cluster is its storage tier: six storage
nodes, two in each of three simulated AZs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from borealis import rpc
from borealis.errors import BorealisError
from deploy.local import LocalCluster
from storage_node.client import StorageClient

DEFAULT_DATA_DIR = Path(".borealis")


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if (data_dir / "cluster.json").exists():
        cluster = LocalCluster.from_cluster_file(data_dir)
    else:
        overrides = dict(item.split("=", 1) for item in args.storage_set)
        cluster = LocalCluster(
            data_dir, storage_nodes=args.storage_nodes, storage_overrides=overrides
        )
    cluster.start()
    print(f"cluster up in {cluster.data_dir}")
    print_status(cluster)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if not (data_dir / "cluster.json").exists():
        print(f"no cluster in {data_dir}")
        return 0
    cluster = LocalCluster.from_cluster_file(data_dir)
    cluster.stop()
    print(f"cluster in {cluster.data_dir} stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.from_cluster_file(Path(args.data_dir))
    return print_status(cluster)


def print_status(cluster: LocalCluster) -> int:
    async def gather() -> list[tuple[str, int]]:
        rows = []
        for node in cluster.storage_nodes:
            health = await rpc.health_status(node.address, 2.0)
            segments = -1
            if health == "SERVING":
                async with StorageClient(node.address, timeout_s=2.0) as client:
                    segments = len(await client.list_segments())
            rows.append((health, segments))
        return rows

    rows = asyncio.run(gather())
    print(f"{'node':<6} {'az':<6} {'address':<22} {'pid':>8} {'health':<12} {'segments':>8}")
    for node, (health, segments) in zip(cluster.storage_nodes, rows, strict=True):
        shown = str(segments) if segments >= 0 else "-"
        print(
            f"{node.name:<6} {node.az:<6} {node.address:<22} {node.pid or '-':>8} {health:<12} {shown:>8}"
        )
    return 0 if all(health == "SERVING" for health, _ in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="borealis", description="Borealis: an Aurora-style database."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start a local cluster (or restart its stopped processes)")
    up.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    up.add_argument("--storage-nodes", type=int, default=6)
    up.add_argument(
        "--storage-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="storage node setting",
    )
    up.set_defaults(run=cmd_up)

    down = commands.add_parser("down", help="stop the local cluster")
    down.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    down.set_defaults(run=cmd_down)

    status = commands.add_parser("status", help="show each process and its health")
    status.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    status.set_defaults(run=cmd_status)
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
