"""borealis restore ... and borealis backup status ...

    borealis restore --from STORE_URL [--endpoint-url URL] [--volume NAME]
                     (--to-time T | --to-lsn L | --latest) --data-dir NEW [--base-port P]
    borealis backup status [--data-dir D] [--json]

`restore` builds a new cluster in NEW from the object store alone
(control_plane/restore.py) and starts it as `borealis up` does. `backup status`
reads the store named in DIR/cluster.json and prints the store URL, the volume,
the latest restorable time and the backup lag.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from borealis.errors import BorealisError
from deploy.local import read_cluster_file

DEFAULT_DATA_DIR = Path(".borealis")
DEFAULT_BASE_PORT = 7400


def add_parsers(subparsers: Any, up: Callable[[list[str]], int]) -> None:
    """Adds `restore` and `backup` to the `borealis` command's subparsers; `up` runs
    `borealis up` with the given arguments (to start a restored cluster)."""
    restore = subparsers.add_parser(
        "restore", help="build and start a new cluster from a backup, as of a point in time"
    )
    restore.add_argument("--from", dest="store", required=True, help="file:///DIR or s3://B/P")
    restore.add_argument("--endpoint-url", default="", help="an S3 API endpoint other than AWS")
    restore.add_argument("--volume", default=None, help="CLUSTERID-VOLUMEID (default: the only)")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-time", help="ISO 8601 with a zone: the last commit at or before")
    target.add_argument("--to-lsn", type=int, help="the last commit at or below this LSN")
    target.add_argument("--latest", action="store_true", help="the latest restorable commit")
    restore.add_argument("--data-dir", required=True, help="the new cluster's directory")
    restore.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    restore.add_argument("--no-start", action="store_true", help="prepare the cluster only")
    restore.set_defaults(run=lambda args: run_restore(args, up))

    backup = subparsers.add_parser("backup", help="continuous backup")
    commands = backup.add_subparsers(dest="backup_command", required=True)
    status = commands.add_parser("status", help="latest restorable time and backup lag")
    status.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=run_status)


def up_arguments(args: argparse.Namespace) -> list[str]:
    """What `borealis up` adds to the control plane's arguments for backups: a new
    cluster's store (default file://DATA_DIR/backup) and its random cluster id. A
    reopened cluster keeps what its storage nodes' config files say."""
    data_dir = Path(args.data_dir).resolve()
    if any(data_dir.glob("s*/storage_node.toml")):
        return []
    store = args.backup_store or f"file://{data_dir / 'backup'}"
    argv = [
        "--storage-set",
        f"backup_store_url={store}",
        "--storage-set",
        f"backup_cluster_id={secrets.token_hex(4)}",
    ]
    if args.backup_endpoint_url:
        argv += ["--storage-set", f"backup_endpoint_url={args.backup_endpoint_url}"]
    if args.backup_retention_days is not None:
        argv += ["--storage-set", f"backup_retention_days={args.backup_retention_days}"]
    return argv


def add_up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument("--backup-store", default="", help="file:///DIR or s3://BUCKET/PREFIX")
    up.add_argument("--backup-endpoint-url", default="", help="an S3 API endpoint")
    up.add_argument("--backup-retention-days", type=float, help="default 7 (0: keep all)")


def run_restore(args: argparse.Namespace, up: Callable[[list[str]], int]) -> int:
    from control_plane.restore import Target, format_time, parse_time, restore_cluster
    from deploy.ports import PortAllocator

    target = Target(
        time_us=parse_time(args.to_time) if args.to_time else None,
        lsn=args.to_lsn,
        latest=args.latest,
    )
    data_dir = Path(args.data_dir).resolve()
    result = restore_cluster(
        args.store,
        data_dir,
        target,
        volume=args.volume,
        endpoint_url=args.endpoint_url or None,
        ports=PortAllocator(start=args.base_port + 1),
    )
    plan = result.plan
    print(
        f"restored volume {plan.volume_name} to LSN {plan.lsn} "
        f"(commit {format_time(plan.commit_time_us)}): {result.pgs} PGs, "
        f"{result.records} records, {result.pages} page images, "
        f"{result.bytes_restored / 2**20:.1f} MiB in {result.seconds:.2f} s, into {data_dir}"
    )
    if args.no_start:
        return 0
    return up(["up", "--data-dir", str(data_dir), "--base-port", str(args.base_port)])


def run_status(args: argparse.Namespace) -> int:
    from control_plane.restore import backup_status

    document = read_cluster_file(Path(args.data_dir).resolve())
    entry = document.get("backup")
    if not entry:
        print("borealis: this cluster has no backup configured", file=sys.stderr)
        return 1
    try:
        status = backup_status(
            entry["store_url"], entry["volume_name"], entry.get("endpoint_url") or None
        )
    except BorealisError as error:
        print(f"borealis backup status: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for key, value in status.items():
        print(f"{key:<26} {value if value is not None else '-'}")
    return 0
