"""borealis snapshot ... | backtrack ... | clone ...

    borealis snapshot create NAME [--data-dir D]
    borealis snapshot list [--data-dir D] [--json]
    borealis snapshot restore NAME --data-dir NEW [--cluster-dir D | --from URL --volume V]
                                  [--endpoint-url URL] [--base-port P] [--no-start]
    borealis snapshot delete NAME [--data-dir D]
    borealis backtrack --to-time T [--yes] [--data-dir D]
    borealis clone --data-dir NEW [--from-data-dir D] [--to-time T] [--name N]
                   [--base-port P] [--no-start]

Snapshots name an LSN of the cluster's continuous backup (control_plane/snapshots.py);
backtrack rewinds the cluster in place (control_plane/backtrack.py); clone builds a
copy-on-write clone (control_plane/clone.py). Exit codes: 0 done, 1 an error (a
snapshot by that name exists, the backup does not hold the time, ...), 2 no such
snapshot or cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from borealis.errors import BorealisError, NotFound

DEFAULT_DATA_DIR = Path(".borealis")
DEFAULT_BASE_PORT = 7400
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2


def add_parsers(subparsers: Any, main: Callable[[list[str]], int]) -> None:
    """Adds `snapshot`, `backtrack` and `clone` to the `borealis` command's
    subparsers; `main` runs another borealis command (up, down)."""
    snapshot = subparsers.add_parser("snapshot", help="named points of the continuous backup")
    commands = snapshot.add_subparsers(dest="snapshot_command", required=True)
    create = commands.add_parser("create", help="name the latest durable commit (near-instant)")
    create.add_argument("name")
    create.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    create.set_defaults(run=guarded(run_create))
    listing = commands.add_parser("list", help="the cluster's snapshots")
    listing.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=guarded(run_list))
    restore = commands.add_parser("restore", help="a new cluster as of the snapshot")
    restore.add_argument("name")
    restore.add_argument("--data-dir", required=True, help="the new cluster's directory")
    restore.add_argument("--cluster-dir", default=DEFAULT_DATA_DIR, help="the snapshot's cluster")
    restore.add_argument("--from", dest="store", default="", help="the store, if no cluster")
    restore.add_argument("--volume", default="", help="CLUSTERID-VOLUMEID, with --from")
    restore.add_argument("--endpoint-url", default="", help="an S3 API endpoint, with --from")
    restore.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    restore.add_argument("--no-start", action="store_true", help="prepare the cluster only")
    restore.set_defaults(run=guarded(lambda args: run_restore(args, main)))
    delete = commands.add_parser("delete", help="forget a snapshot (retention may then drop it)")
    delete.add_argument("name")
    delete.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    delete.set_defaults(run=guarded(run_delete))

    backtrack = subparsers.add_parser(
        "backtrack", help="rewind the cluster in place to a time within its backup"
    )
    backtrack.add_argument("--to-time", required=True, help="ISO 8601 with a zone")
    backtrack.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    backtrack.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    backtrack.set_defaults(run=guarded(lambda args: run_backtrack(args, main)))

    clone = subparsers.add_parser("clone", help="a copy-on-write clone of the cluster")
    clone.add_argument("--data-dir", required=True, help="the clone's directory")
    clone.add_argument("--from-data-dir", default=DEFAULT_DATA_DIR, help="the parent cluster")
    clone.add_argument("--to-time", default="", help="ISO 8601 (default: the latest commit)")
    clone.add_argument("--name", default=None, help="the clone's name in the parent's backup")
    clone.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    clone.add_argument("--no-start", action="store_true", help="prepare the clone only")
    clone.set_defaults(run=guarded(lambda args: run_clone(args, main)))


def guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command, with a missing snapshot or cluster as exit code 2."""

    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except NotFound as error:
            print(f"borealis: {error}", file=sys.stderr)
            return EXIT_NOT_FOUND

    return command


def run_create(args: argparse.Namespace) -> int:
    from control_plane.restore import format_time
    from control_plane.snapshots import create_snapshot

    snapshot = create_snapshot(Path(args.data_dir).resolve(), args.name)
    print(
        f"snapshot {snapshot.name} of volume {snapshot.volume_name}: LSN {snapshot.lsn} "
        f"(commit {format_time(snapshot.commit_time_us)})"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from control_plane.restore import format_time
    from control_plane.snapshots import backup_location, snapshots

    found = snapshots(backup_location(Path(args.data_dir).resolve()))
    if args.json:
        print(json.dumps([snapshot.__dict__ for snapshot in found], indent=2))
        return 0
    print(f"{'NAME':<24} {'LSN':>12}  {'COMMIT TIME':<32} CREATED")
    for each in found:
        print(
            f"{each.name:<24} {each.lsn:>12}  {format_time(each.commit_time_us):<32} "
            f"{format_time(each.created_us)}"
        )
    return 0


def run_restore(args: argparse.Namespace, main: Callable[[list[str]], int]) -> int:
    from control_plane.restore import format_time
    from control_plane.snapshots import BackupLocation, backup_location, restore_snapshot
    from deploy.ports import PortAllocator

    if args.store:
        if not args.volume:
            print("borealis: --from needs --volume CLUSTERID-VOLUMEID", file=sys.stderr)
            return EXIT_ERROR
        location = BackupLocation(args.store, args.endpoint_url or None, args.volume)
    else:
        location = backup_location(Path(args.cluster_dir).resolve())
    data_dir = Path(args.data_dir).resolve()
    result = restore_snapshot(
        location, args.name, data_dir, ports=PortAllocator(start=args.base_port + 1)
    )
    print(
        f"restored snapshot {args.name} (LSN {result.plan.lsn}, commit "
        f"{format_time(result.plan.commit_time_us)}) into {data_dir} in {result.seconds:.2f} s"
    )
    if args.no_start:
        return 0
    return main(["up", "--data-dir", str(data_dir), "--base-port", str(args.base_port)])


def run_delete(args: argparse.Namespace) -> int:
    from control_plane.snapshots import backup_location, delete_snapshot

    snapshot = delete_snapshot(backup_location(Path(args.data_dir).resolve()), args.name)
    print(f"snapshot {snapshot.name} deleted")
    return 0


def run_backtrack(args: argparse.Namespace, main: Callable[[list[str]], int]) -> int:
    from control_plane.backtrack import plan_backtrack, rewind_offline
    from control_plane.restore import format_time, parse_time
    from deploy.local import pid_alive, read_cluster_file

    data_dir = Path(args.data_dir).resolve()
    document = read_cluster_file(data_dir)
    control_plane = document.get("control_plane") or {}
    if not pid_alive(control_plane.get("pid")):
        print("borealis: the cluster is not running (borealis up starts it)", file=sys.stderr)
        return EXIT_ERROR
    chosen = plan_backtrack(data_dir, parse_time(args.to_time))
    volume = chosen.location.volume_name
    print(
        f"backtrack {data_dir} to LSN {chosen.plan.lsn} (commit "
        f"{format_time(chosen.plan.commit_time_us)}): every transaction committed after it "
        "is lost, and the cluster restarts"
    )
    if not args.yes and not confirmed(volume):
        print("borealis: backtrack cancelled", file=sys.stderr)
        return EXIT_ERROR
    base_port = int(control_plane["address"].rsplit(":", 1)[1])
    if main(["down", "--data-dir", str(data_dir)]) != 0:
        return EXIT_ERROR
    try:
        result = rewind_offline(data_dir, chosen)
    except BorealisError as error:
        print(f"borealis: backtrack failed, the cluster is unchanged: {error}", file=sys.stderr)
        main(["up", "--data-dir", str(data_dir), "--base-port", str(base_port)])
        return EXIT_ERROR
    print(
        f"rewound to LSN {result.plan.lsn}: {result.pgs} PGs, {result.records} records, "
        f"{result.pages} page images in {result.seconds:.2f} s; volume epoch "
        f"{result.volume_epoch}, new backup lineage {result.backup_cluster_id}"
    )
    return main(["up", "--data-dir", str(data_dir), "--base-port", str(base_port)])


def confirmed(volume: str) -> bool:
    try:
        answer = input(f"type the volume name ({volume}) or 'yes' to go on: ")
    except EOFError:
        return False
    return answer.strip() in (volume, "yes")


def run_clone(args: argparse.Namespace, main: Callable[[list[str]], int]) -> int:
    from control_plane.clone import clone_cluster
    from control_plane.restore import format_time, parse_time
    from deploy.ports import PortAllocator

    data_dir = Path(args.data_dir).resolve()
    result = clone_cluster(
        Path(args.from_data_dir).resolve(),
        data_dir,
        parse_time(args.to_time) if args.to_time else None,
        ports=PortAllocator(start=args.base_port + 1),
        name=args.name,
    )
    print(
        f"cloned volume {result.reference.volume_name} at LSN {result.plan.lsn} (commit "
        f"{format_time(result.plan.commit_time_us)}) as {result.reference.name} into "
        f"{data_dir}: {result.pgs} PGs, {result.records} records, no page images copied, "
        f"in {result.seconds:.2f} s"
    )
    if args.no_start:
        return 0
    return main(["up", "--data-dir", str(data_dir), "--base-port", str(args.base_port)])
