"""Snapshots: a name for an LSN of a volume's continuous backup (DESIGN.md section 11).

Creating one copies nothing, so it is near-instant: it reads the writer's VDL
(the latest commit the volume has made durable when asked), waits (bounded) for
the continuous backup to hold the volume's history up to it, and stores the
newest commit at or below it as a small object beside the backup
(borealis/backup_pins.py), where it outlives the cluster. Restoring a snapshot
is a point-in-time restore to its LSN (control_plane/restore.py). Backup
retention keeps what a snapshot needs (backup_pins.keep_pinned).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from borealis import backup_format as layout
from borealis import metrics, rpc
from borealis.backup_pins import Snapshot, list_snapshots, snapshot_key
from borealis.errors import AlreadyExists, InvalidRequest, NotFound, Unavailable
from borealis.log import get_logger
from borealis.object_store import ObjectStore, object_store_from_url
from borealis.wait import wait_until
from control_plane.restore import (
    BackupReader,
    RestorePlan,
    RestoreResult,
    Target,
    format_time,
    restore_cluster,
)
from deploy.local import configure_transport_from, read_cluster_file
from deploy.ports import PortAllocator

log = get_logger("control_plane.snapshots")

US_PER_S = 1_000_000
VDL_METRIC = "borealis_instance_volume_vdl"
METRICS_TIMEOUT_S = 5.0
# How long a snapshot (or a backtrack, or a clone) waits for the backup to hold
# the writer's VDL: the uploaders run every backup_interval_ms (1 s by default).
BACKUP_CATCH_UP_TIMEOUT_S = 60.0
BACKUP_POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class BackupLocation:
    """Where a cluster's continuous backup is (cluster.json's "backup")."""

    store_url: str
    endpoint_url: str | None
    volume_name: str

    def objects(self) -> ObjectStore:
        return object_store_from_url(self.store_url, self.endpoint_url)


def backup_location(data_dir: Path) -> BackupLocation:
    entry = read_cluster_file(data_dir).get("backup")
    if not entry:
        raise InvalidRequest("this cluster has no backup configured", data_dir=str(data_dir))
    return BackupLocation(
        entry["store_url"], entry.get("endpoint_url") or None, entry["volume_name"]
    )


def writer_vdl(data_dir: Path) -> int:
    """The writer instance's VDL now (Unavailable when no writer answers)."""
    document = read_cluster_file(data_dir)
    configure_transport_from(document)
    writers = [entry for entry in document["instances"] if entry["role"] == "writer"]
    if not writers:
        raise Unavailable("the cluster has no writer instance", data_dir=str(data_dir))
    text = asyncio.run(rpc.metrics_text(writers[0]["address"], METRICS_TIMEOUT_S))
    samples = metrics.parse(text)
    if VDL_METRIC not in samples:
        raise Unavailable("the writer does not report its VDL yet", data_dir=str(data_dir))
    return int(samples[VDL_METRIC])


def holds(history: layout.VolumeHistory, lsn: int) -> bool:
    """Whether the backup holds the volume's whole history up to the record `lsn`:
    every PG's base at or below it and the backlink chain unbroken from there up.
    (backup_format.restorable asks for the floor strictly below the LSN, which
    refuses a commit that is exactly an image set's base: the newest commit of an
    idle volume, once its next image set is uploaded.)"""
    floor = layout.floor_at(history, lsn)
    return floor is not None and floor <= lsn and layout.chain_end(history, floor) >= lsn


def newest_commit_at_or_below(history: layout.VolumeHistory, lsn: int) -> int:
    return max(
        (each for each, (_, entry) in history.entries.items() if entry.cpl and each <= lsn),
        default=0,
    )


def wait_backup_covers(
    reader_of: Callable[[], BackupReader],
    lsn: int,
    timeout_s: float = BACKUP_CATCH_UP_TIMEOUT_S,
) -> layout.VolumeHistory:
    """Waits until the backup holds the volume's history up to `lsn`; `reader_of()`
    gives a fresh BackupReader (its key listing is cached)."""

    def covered() -> layout.VolumeHistory | None:
        history = reader_of().history()
        return history if holds(history, lsn) else None

    return wait_until(covered, timeout_s, BACKUP_POLL_INTERVAL_S, f"the backup to hold LSN {lsn}")


def plan_point(data_dir: Path, time_us: int | None) -> tuple[BackupLocation, RestorePlan]:
    """The commit a snapshot, a backtrack or a clone of the running cluster in
    `data_dir` goes to: the last one at or before `time_us` (None: the newest
    durable one), once the backup holds every commit the writer had made durable
    when asked (so a time up to now is within the backup)."""
    if time_us is not None and time_us > _now_us():
        raise InvalidRequest("the time is in the future", time=format_time(time_us))
    location = backup_location(data_dir)
    vdl = writer_vdl(data_dir)
    reader = BackupReader(location.objects(), location.volume_name)
    history = wait_backup_covers(lambda: BackupReader(reader.objects, location.volume_name), vdl)
    newest = newest_commit_at_or_below(history, vdl)
    lsn = newest if time_us is None else layout.lsn_at_time(history, time_us, newest)
    if lsn == 0:
        raise NotFound(
            "no commit in the backup at or before the time",
            time=format_time(time_us or 0),
            volume=location.volume_name,
        )
    if not holds(history, lsn):
        raise NotFound(
            "the time is before the backup's retained history",
            lsn=lsn,
            volume=location.volume_name,
        )
    latest_time_us = history.entries[newest][1].commit_time_us
    chosen = RestorePlan(
        location.volume_name,
        reader.manifest(),
        lsn,
        history.entries[lsn][1].commit_time_us,
        layout.bases_for(history, lsn),
        newest,
        latest_time_us,
    )
    return location, chosen


def create_snapshot(data_dir: Path, name: str) -> Snapshot:
    location = backup_location(data_dir)
    objects = location.objects()
    key = snapshot_key(location.volume_name, name)
    if objects.list(key) == [key]:
        raise AlreadyExists("a snapshot by that name exists", snapshot=name)
    _, chosen = plan_point(data_dir, None)
    snapshot = Snapshot(name, location.volume_name, chosen.lsn, chosen.commit_time_us, _now_us())
    objects.put(key, snapshot.to_json())
    log.info("snapshot created", snapshot=name, volume=location.volume_name, lsn=chosen.lsn)
    return snapshot


def get_snapshot(objects: ObjectStore, volume_name: str, name: str) -> Snapshot:
    try:
        return Snapshot.from_json(objects.get(snapshot_key(volume_name, name)))
    except NotFound:
        raise NotFound("no snapshot by that name", snapshot=name, volume=volume_name) from None


def snapshots(location: BackupLocation) -> list[Snapshot]:
    return list_snapshots(location.objects(), location.volume_name)


def delete_snapshot(location: BackupLocation, name: str) -> Snapshot:
    objects = location.objects()
    snapshot = get_snapshot(objects, location.volume_name, name)
    objects.delete([snapshot_key(location.volume_name, name)])
    log.info("snapshot deleted", snapshot=name, volume=location.volume_name)
    return snapshot


def restore_snapshot(
    location: BackupLocation,
    name: str,
    new_data_dir: Path,
    ports: PortAllocator | None = None,
    storage_overrides: dict[str, Any] | None = None,
) -> RestoreResult:
    """A new cluster in `new_data_dir` holding the volume as of the snapshot (not
    started: `result.cluster.start()` or `borealis up`)."""
    objects = location.objects()
    snapshot = get_snapshot(objects, location.volume_name, name)
    return restore_cluster(
        location.store_url,
        new_data_dir,
        Target(lsn=snapshot.lsn),
        volume=location.volume_name,
        endpoint_url=location.endpoint_url,
        ports=ports,
        storage_overrides=storage_overrides,
        objects=objects,
    )


def _now_us() -> int:
    return int(time.time() * US_PER_S)
