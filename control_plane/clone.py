"""Copy-on-write clones: a new cluster sharing its parent's history up to the clone
point and diverging after it (DESIGN.md section 11).

A clone is configured like a point-in-time restore (control_plane/restore.py) of
the parent's continuous backup to the clone point, with one difference: the page
images, the bulk of a volume, are not copied. Each of the clone's segments
starting from an image set gets only the records above the set's base (and the
set's base records); its storage nodes read the images from the parent's set in
the object store, which is immutable (storage_node/base_images.py, named in each
node's DATA_DIR/base_images.json). The clone gets its own cluster id, so its
backup and its writes never touch the parent's; the parent's writes after the
clone point go to the parent's own segments and backup lineage, which the clone
does not read. A clone reference object beside the parent's backup
(borealis/backup_pins.py) keeps backup retention from removing the image sets
and the log the clone reads.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from borealis.backup_pins import CloneRef, check_name, clone_key
from borealis.errors import InvalidRequest
from borealis.log import get_logger
from control_plane.restore import (
    EPOCH_FIRST,
    BackupReader,
    RestorePlan,
    configure_cluster,
    fill_volume,
    format_time,
    sealer_of,
    storage_config,
)
from control_plane.snapshots import BackupLocation, plan_point
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from storage_node.base_images import BaseImageRef, write_ref

log = get_logger("control_plane.clone")


@dataclass
class CloneResult:
    cluster: LocalCluster
    plan: RestorePlan
    reference: CloneRef
    pgs: int
    records: int
    pages: int
    # Redo and page image bytes written into the segments (each PG once).
    bytes_restored: int
    seconds: float


def clone_cluster(
    parent_data_dir: Path,
    data_dir: Path,
    time_us: int | None = None,
    ports: PortAllocator | None = None,
    storage_overrides: dict[str, Any] | None = None,
    name: str | None = None,
    copy_images: bool = False,
) -> CloneResult:
    """Configures a clone of the running cluster in `parent_data_dir` in `data_dir`,
    as of the last commit at or before `time_us` (None: the latest durable one);
    the caller starts it (`result.cluster.start()`, or `borealis up`).

    `copy_images`: a full copy instead, which writes what a point-in-time restore
    writes (every page image) and shares nothing: the yardstick a clone's time and
    bytes are measured against."""
    started_s = time.monotonic()
    data_dir = Path(data_dir).resolve()
    if (data_dir / "cluster.json").exists() or any(data_dir.glob("s*/storage_node.toml")):
        raise InvalidRequest("the clone's data directory holds a cluster", data_dir=str(data_dir))
    clone_name = check_name(name or f"clone-{secrets.token_hex(4)}", "clone")
    location, chosen = plan_point(Path(parent_data_dir).resolve(), time_us)
    planned_s = time.monotonic() - started_s
    cluster = configure_cluster(data_dir, chosen.manifest, ports, storage_overrides)
    configs = {node.name: storage_config(node.directory) for node in cluster.storage_nodes}
    reader = BackupReader(location.objects(), location.volume_name)
    counts = fill_volume(
        configs, reader, chosen, sealer_of(chosen.manifest), EPOCH_FIRST, with_images=copy_images
    )
    reference = _reference(location, chosen, clone_name, configs["s1"].backup_cluster_id)
    if not copy_images:
        location.objects().put(clone_key(location.volume_name, clone_name), reference.to_json())
        ref = BaseImageRef(
            location.store_url,
            location.endpoint_url or "",
            location.volume_name,
            chosen.manifest.volume_id,
            {pg: base for pg, base in chosen.bases.items() if base > 0},
        )
        for node in cluster.storage_nodes:
            write_ref(node.directory, ref)
    cluster.write_cluster_file()
    seconds = time.monotonic() - started_s
    log.info(
        "volume cloned",
        parent=location.volume_name,
        lsn=chosen.lsn,
        commit_time=format_time(chosen.commit_time_us),
        data_dir=str(data_dir),
        seconds=round(seconds, 3),
        plan_seconds=round(planned_s, 3),
        **counts,
    )
    return CloneResult(cluster, chosen, reference, seconds=seconds, **counts)


def _reference(
    location: BackupLocation, chosen: RestorePlan, clone_name: str, clone_cluster_id: str
) -> CloneRef:
    """What pins the clone in the parent's backup (borealis/backup_pins.py)."""
    return CloneRef(
        name=clone_name,
        volume_name=location.volume_name,
        clone_volume_name=f"{clone_cluster_id}-{chosen.manifest.volume_id}",
        lsn=chosen.lsn,
        commit_time_us=chosen.commit_time_us,
        created_us=int(time.time() * 1_000_000),
        bases=dict(chosen.bases),
    )
