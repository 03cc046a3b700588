"""Backtrack: rewind a cluster in place to a time within its backup (Aurora MySQL's
backtrack; DESIGN.md section 11).

The cluster keeps its data directory, its processes' names, ports and endpoints:

1. while it runs, the writer's VDL is read and the backup waited for (bounded)
   until it holds it, so that every commit up to now is restorable; the target
   is the last commit at or before T (`plan_backtrack`);
2. the whole cluster is stopped (`borealis down`: the control plane would restart
   a storage node stopped under it, and LMDB is rewritten offline);
3. each storage node's segments of the volume are rewritten from the backup the
   way a point-in-time restore fills a new cluster's (control_plane/restore.py
   fill_segment), with the same members per PG, and a volume epoch above every
   epoch the volume used, so that a writer of before the rewind stays fenced
   (`rewind_offline`); the old segments are kept aside until the new ones are
   complete, and put back if the rewrite fails;
4. the storage nodes get a new backup lineage (a new backup_cluster_id): LSNs
   after the rewind reuse the rewound range, so the old lineage must not be
   appended to; it stays restorable (and snapshot-able) for times before;
5. the cluster is started (`borealis up`): the writer's recovery ends at the
   target, since nothing above it exists.

Why offline and not through a ControlPlane RPC: the rewrite needs every storage
node and instance stopped, which is what `down` does already, and `up` restarts
exactly the configured processes; an RPC would add a second stop/start path.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from borealis import config as config_module
from borealis.errors import InvalidRequest, Unavailable
from borealis.log import get_logger
from control_plane.restore import (
    EPOCH_FIRST,
    SEGMENTS_DIR,
    STORAGE_CONFIG,
    BackupReader,
    RestorePlan,
    fill_volume,
    format_time,
    open_store,
    sealer_of,
    storage_config,
)
from control_plane.snapshots import BackupLocation, plan_point
from deploy.local import LocalCluster, pid_alive, read_cluster_file
from storage_node.config import StorageNodeConfig
from storage_node.segment import Member

log = get_logger("control_plane.backtrack")

US_PER_S = 1_000_000
OLD_SEGMENTS_DIR = "segments.before-backtrack"
# The first volume epoch of a volume written offline (a restore's).


@dataclass(frozen=True)
class BacktrackPlan:
    location: BackupLocation
    plan: RestorePlan


@dataclass(frozen=True)
class BacktrackResult:
    plan: RestorePlan
    volume_epoch: int
    backup_cluster_id: str
    pgs: int
    records: int
    pages: int
    # Redo and page image bytes written into the segments (each PG once).
    bytes_restored: int
    seconds: float


def plan_backtrack(data_dir: Path, time_us: int) -> BacktrackPlan:
    """The commit a backtrack to `time_us` rewinds to (the cluster must be running)."""
    location, chosen = plan_point(data_dir, time_us)
    return BacktrackPlan(location, chosen)


def rewind_offline(data_dir: Path, chosen: BacktrackPlan) -> BacktrackResult:
    """Rewrites the stopped cluster's segments as of the plan (module docstring)."""
    started_s = time.monotonic()
    data_dir = Path(data_dir).resolve()
    _check_stopped(data_dir)
    cluster = LocalCluster.reopen(data_dir)
    configs = {node.name: storage_config(node.directory) for node in cluster.storage_nodes}
    manifest = chosen.plan.manifest
    placements, epoch_max = _current_segments(configs, manifest.volume_id)
    volume_epoch = epoch_max + 1
    for config in configs.values():
        _set_aside(config.data_dir)
    try:
        counts = fill_volume(
            configs,
            BackupReader(chosen.location.objects(), chosen.location.volume_name),
            chosen.plan,
            sealer_of(manifest),
            volume_epoch,
            placements,
        )
    except BaseException:
        for config in configs.values():
            _put_back(config.data_dir)
        raise
    cluster_id = secrets.token_hex(4)
    for node in cluster.storage_nodes:
        _write_storage_config(node.directory, configs[node.name], cluster_id)
        shutil.rmtree(node.directory / OLD_SEGMENTS_DIR)
    seconds = time.monotonic() - started_s
    log.info(
        "cluster backtracked",
        data_dir=str(data_dir),
        lsn=chosen.plan.lsn,
        commit_time=format_time(chosen.plan.commit_time_us),
        volume_epoch=volume_epoch,
        backup_cluster_id=cluster_id,
        seconds=round(seconds, 3),
    )
    return BacktrackResult(chosen.plan, volume_epoch, cluster_id, seconds=seconds, **counts)


def _check_stopped(data_dir: Path) -> None:
    document = read_cluster_file(data_dir)
    entries = [
        document.get("control_plane") or {},
        *document["storage_nodes"],
        *document["instances"],
        *([document["router"]] if document.get("router") else []),
    ]
    running = [
        entry.get("name", "control plane") for entry in entries if pid_alive(entry.get("pid"))
    ]
    if running:
        raise Unavailable("stop the cluster before rewinding it", running=",".join(running))


def _write_storage_config(directory: Path, config: StorageNodeConfig, cluster_id: str) -> None:
    changed = dataclasses.replace(config, backup_cluster_id=cluster_id)
    path = directory / STORAGE_CONFIG
    path.with_suffix(".tmp").write_text("[storage_node]\n" + config_module.to_toml(changed))
    path.with_suffix(".tmp").replace(path)


def _current_segments(
    configs: dict[str, StorageNodeConfig], volume_id: int
) -> tuple[dict[int, list[Member]], int]:
    """(per PG, its members now; the highest volume or membership epoch used)."""
    placements: dict[int, list[Member]] = {}
    epoch_max = EPOCH_FIRST
    for config in configs.values():
        store = open_store(config)
        try:
            store.load()
            for segment in store.segments.values():
                meta = segment.meta
                if meta.volume_id != volume_id:
                    continue
                epoch_max = max(epoch_max, meta.volume_epoch, meta.membership_epoch)
                placements.setdefault(meta.pg, list(meta.members))
        finally:
            store.close()
    return placements, epoch_max


def _set_aside(directory: Path) -> None:
    old = directory / OLD_SEGMENTS_DIR
    if old.exists():
        raise InvalidRequest(
            "an earlier backtrack did not finish: its old segments are still aside",
            path=str(old),
        )
    (directory / SEGMENTS_DIR).rename(old)


def _put_back(directory: Path) -> None:
    old = directory / OLD_SEGMENTS_DIR
    if old.exists():
        shutil.rmtree(directory / SEGMENTS_DIR, ignore_errors=True)
        old.rename(directory / SEGMENTS_DIR)


# -- filling a volume's segments (shared with clones) -------------------------------------------
