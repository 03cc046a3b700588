"""Point-in-time restore: a new cluster built from the object store alone.

`restore_cluster` reads a volume's backup (borealis/backup_format.py), picks the
target (the last commit at or before a time, at or below an LSN, or the latest
restorable one), configures a new local cluster (deploy/local.py) without
starting it, and writes each storage node's segments offline, through the
segment store's own writer operations (storage_node/store.py), the way a new
segment hydrates from a peer:

1. per PG, the newest page image set at or below the target, stored as
   materialised versions, with the records it carries (the chain's anchor at
   its base, and the SIZE records), then the hydration ends at that base;
2. the PG's records above the base up to the target, appended as AppendRedo
   would (the chain checks them: the segment's SCL must end at the PG's newest
   record at or below the target, or the restore fails).

The new writer then opens the volume by the normal recovery: its VDL is the
target, since the target is a CPL and nothing above it exists. The volume keeps
its id: records and images are stored as they were (and sealed under the same
data key), and a different cluster id keeps the new cluster's own backup apart.

Why offline rather than through running nodes: AppendRedo takes records, not
page images, and a restore may start from an image set (its log below was
garbage-collected or removed past retention); writing LMDB before the nodes
start also needs no RPC per record. The segments of every PG are identical on
all six nodes, as after a full write quorum.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from borealis import backup_format as layout
from borealis import config as config_module
from borealis import redo
from borealis.encryption import Sealer
from borealis.errors import Corruption, InvalidRequest, NotFound, Unavailable
from borealis.ids import Epoch, Epochs, PgIndex, VolumeId
from borealis.kms import open_sealers
from borealis.log import get_logger
from borealis.object_store import ObjectStore, object_store_from_url
from compute_node.volume.topology import Topology
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from storage_node.config import StorageNodeConfig
from storage_node.segment import Member, Segment, SegmentMeta
from storage_node.store import IncomingRecord, SegmentStore

log = get_logger("control_plane.restore")

EPOCH_FIRST = 1
SEGMENTS_DIR = "segments"
STORAGE_CONFIG = "storage_node.toml"
# PGs filled at once (each PG's segments on their six nodes).
FILL_THREADS = 8
# Objects fetched at once (an S3 endpoint answers many small GETs in parallel).
FETCH_THREADS = 8
# Records per LMDB transaction while filling a segment.
RECORDS_PER_TRANSACTION_MAX = 4096
US_PER_S = 1_000_000


@dataclass(frozen=True)
class Target:
    """Exactly one of: a time (us since the epoch), an LSN, or the latest."""

    time_us: int | None = None
    lsn: int | None = None
    latest: bool = False

    def __post_init__(self) -> None:
        given = (self.time_us is not None) + (self.lsn is not None) + self.latest
        if given != 1:
            raise InvalidRequest("name exactly one of --to-time, --to-lsn, --latest")


def parse_time(text: str) -> int:
    """An ISO 8601 time with a zone (2026-11-28T17:05:00+00:00, or ...Z) in us."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest("not an ISO 8601 time", time=text) from None
    if moment.tzinfo is None:
        raise InvalidRequest("the time needs a zone (e.g. +00:00 or Z)", time=text)
    return int(moment.timestamp() * US_PER_S)


def format_time(time_us: int) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(time_us / US_PER_S, UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RestorePlan:
    volume_name: str
    manifest: layout.Manifest
    lsn: int
    commit_time_us: int
    # Per PG: the image set base (0: from the PG's first record).
    bases: dict[int, int]
    latest_lsn: int
    latest_time_us: int


# -- reading a backup -------------------------------------------------------------------------


def volume_names(objects: ObjectStore) -> list[str]:
    names = {key.split("/")[1] for key in objects.list(layout.VOLUMES + "/")}
    return sorted(name for name in names if name)


def choose_volume(objects: ObjectStore, volume: str | None) -> str:
    """The volume named (by its name CLUSTER-ID, or by its id when one volume has it),
    else the store's only volume."""
    names = volume_names(objects)
    if not names:
        raise NotFound("the object store holds no backup", store=objects.url)
    if volume is None:
        if len(names) > 1:
            raise InvalidRequest(
                "the store holds several volumes; name one with --volume", volumes=",".join(names)
            )
        return names[0]
    matches = [name for name in names if name == volume or name.rsplit("-", 1)[-1] == volume]
    if len(matches) != 1:
        raise NotFound(
            "no single volume by that name in the store", volume=volume, volumes=",".join(names)
        )
    return matches[0]


class BackupReader:
    """One volume's backup in a store (blocking calls)."""

    def __init__(self, objects: ObjectStore, name: str) -> None:
        self.objects = objects
        self.name = name
        self._keys: list[str] | None = None

    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = self.objects.list(layout.volume_prefix(self.name) + "pgs/")
        return self._keys

    def manifest(self) -> layout.Manifest:
        return layout.Manifest.from_json(self.objects.get(layout.manifest_key(self.name)))

    def history(self) -> layout.VolumeHistory:
        history = layout.VolumeHistory()
        index_keys = [key for key in self.keys() if "/index/" in key]
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for data in pool.map(self.objects.get, index_keys):
                _, pg, entries = layout.decode_index(data)
                history.add_index(pg, entries)
        for key in self.keys():
            if key.endswith("/done.json"):
                history.add_image_set(layout.parse_pg(key), layout.parse_image_base(key))
        return history

    def records(self, sealer: Sealer, pg: int, after: int, up_to: int) -> list[bytes]:
        """The PG's records with after < lsn <= up_to, LSN ascending, each once."""
        prefix = layout.pg_prefix(self.name, pg) + "log/"
        wanted = []
        for key in self.keys():
            if key.startswith(prefix):
                first, last = layout.parse_range_key(key)
                if last > after and first <= up_to:
                    wanted.append(key)
        by_lsn: dict[int, bytes] = {}
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for data in pool.map(self.objects.get, wanted):
                _, chunk_pg, records = layout.decode_chunk(sealer, data)
                if chunk_pg != pg:
                    raise Corruption("backup chunk of another PG", pg=pg, chunk_pg=chunk_pg)
                for record in records:
                    lsn = layout.index_entry(record).lsn
                    if after < lsn <= up_to:
                        by_lsn.setdefault(lsn, record)
        return [by_lsn[lsn] for lsn in sorted(by_lsn)]

    def image_set(
        self, sealer: Sealer, pg: int, base: int
    ) -> tuple[list[tuple[int, int, bytes]], list[bytes]]:
        """(images, records at or below the base) of the PG's image set at `base`."""
        done = layout.ImageSet.from_json(
            self.objects.get(layout.image_set_done_key(self.name, pg, base))
        )
        keys = [layout.image_part_key(self.name, pg, base, part) for part in range(done.parts)]
        images: list[tuple[int, int, bytes]] = []
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for data in pool.map(self.objects.get, keys):
                images.extend(layout.decode_images(sealer, data))
        records: list[bytes] = []
        if done.has_records:
            data = self.objects.get(layout.base_records_key(self.name, pg, base))
            records = layout.decode_chunk(sealer, data, layout.KIND_BASE_RECORDS)[2]
        return images, records


def sealer_of(manifest: layout.Manifest) -> Sealer:
    """The sealer the backup's objects were sealed with (its KMS must be reachable)."""
    return open_sealers(manifest.kms_url, manifest.data_keys).of(manifest.volume_id)


# -- planning ---------------------------------------------------------------------------------


def plan(reader: BackupReader, target: Target) -> RestorePlan:
    manifest = reader.manifest()
    history = reader.history()
    latest_lsn, latest_time_us = layout.restorable_lsn(history)
    if latest_lsn == 0:
        raise Unavailable("the backup holds no restorable commit yet", volume=reader.name)
    if target.latest:
        lsn = latest_lsn
    elif target.lsn is not None:
        if target.lsn > latest_lsn:
            raise Unavailable(
                "the LSN is above the latest restorable one", lsn=target.lsn, latest=latest_lsn
            )
        lsn = max(
            (x for x, (_, e) in history.entries.items() if e.cpl and x <= target.lsn), default=0
        )
    else:
        assert target.time_us is not None
        if target.time_us > latest_time_us:
            raise Unavailable(
                "the time is after the latest restorable time; retry later",
                time=format_time(target.time_us),
                latest=format_time(latest_time_us),
            )
        lsn = layout.lsn_at_time(history, target.time_us, latest_lsn)
    if lsn == 0:
        raise NotFound("no commit in the backup at or before the target", volume=reader.name)
    if not layout.restorable(history, lsn):
        raise NotFound(
            "the target's history is not in the backup (before its retained history, or "
            "in a gap an uploader left)",
            lsn=lsn,
        )
    bases = layout.bases_for(history, lsn)
    commit_time_us = history.entries[lsn][1].commit_time_us
    return RestorePlan(
        reader.name, manifest, lsn, commit_time_us, bases, latest_lsn, latest_time_us
    )


# -- filling the new cluster's segments --------------------------------------------------------


def incoming(records: Iterable[bytes]) -> list[IncomingRecord]:
    incoming = []
    for record in records:
        header = redo.check(record)
        incoming.append((header[1], header[3], header[5], header[6], record))
    return incoming


def _run(store: SegmentStore, op: Any, **arguments: Any) -> Any:
    with store.env.begin(write=True) as txn:
        publish = op(txn, **arguments)
    return publish()


def fill_segment(
    store: SegmentStore,
    meta: SegmentMeta,
    base: int,
    images: list[tuple[int, int, bytes]],
    base_records: list[IncomingRecord],
    records: list[IncomingRecord],
) -> Segment:
    """Creates one segment holding the PG as of the restore target (module docstring);
    the records checked and split by `incoming`."""
    epochs = Epochs(Epoch(meta.volume_epoch), Epoch(meta.membership_epoch))
    meta.hydrating = base > 0
    segment: Segment = _run(store, store.op_create, meta=meta)
    if base > 0:
        for start in range(0, len(images), RECORDS_PER_TRANSACTION_MAX):
            chunk = images[start : start + RECORDS_PER_TRANSACTION_MAX]
            _run(store, store.op_put_hydrated_images, segment=segment, images=chunk, epochs=epochs)
        _run(
            store,
            store.op_put_hydrated_records,
            segment=segment,
            records=base_records,
            epochs=epochs,
        )
        _run(store, store.op_finish_hydration, segment=segment, base=base, epochs=epochs)
    for start in range(0, len(records), RECORDS_PER_TRANSACTION_MAX):
        chunk = records[start : start + RECORDS_PER_TRANSACTION_MAX]
        _run(store, store.op_append, segment=segment, records=chunk)
    newest = records[-1][0] if records else base
    if segment.scl != newest:
        raise Corruption(
            "restored segment's chain is incomplete", pg=meta.pg, scl=segment.scl, newest=newest
        )
    return segment


@dataclass
class RestoreResult:
    cluster: LocalCluster
    plan: RestorePlan
    pgs: int
    records: int
    pages: int
    bytes_restored: int
    seconds: float


def configure_cluster(
    data_dir: Path,
    manifest: layout.Manifest,
    ports: PortAllocator | None = None,
    storage_overrides: dict[str, Any] | None = None,
    instance_overrides: dict[str, Any] | None = None,
    cluster_options: dict[str, Any] | None = None,
) -> LocalCluster:
    """A new cluster (configured, not started) for the backed-up volume: the same
    volume id, PG size and data keys, its own backup store and backup cluster id (a
    restore or clone never writes into the backup it came from)."""
    storage = {
        "backup_store_url": f"file://{data_dir / 'backup'}",
        "backup_cluster_id": secrets.token_hex(4),
        **(storage_overrides or {}),
    }
    if manifest.kms_url:
        storage.setdefault("data_keys", manifest.data_keys)
    cluster = LocalCluster(
        data_dir,
        ports=ports,
        storage_overrides=storage,
        writer=True,
        router=True,
        instance_overrides={
            "volume_id": manifest.volume_id,
            "pages_per_pg": manifest.pages_per_pg,
            **(instance_overrides or {}),
        },
        kms_url=manifest.kms_url,
        **(cluster_options or {}),
    )
    return cluster.configure()


def restore_cluster(
    store_url: str,
    data_dir: Path,
    target: Target,
    volume: str | None = None,
    endpoint_url: str | None = None,
    ports: PortAllocator | None = None,
    storage_overrides: dict[str, Any] | None = None,
    instance_overrides: dict[str, Any] | None = None,
    cluster_options: dict[str, Any] | None = None,
    objects: ObjectStore | None = None,
) -> RestoreResult:
    """Configures a new cluster in `data_dir` holding the volume as of the target;
    the caller starts it (`result.cluster.start()`, or `borealis up`)."""
    started_s = time.monotonic()
    data_dir = Path(data_dir).resolve()
    if (data_dir / "cluster.json").exists() or any(data_dir.glob("s*/storage_node.toml")):
        raise InvalidRequest("the restore's data directory holds a cluster", data_dir=str(data_dir))
    objects = objects or object_store_from_url(store_url, endpoint_url)
    reader = BackupReader(objects, choose_volume(objects, volume))
    chosen = plan(reader, target)
    manifest = chosen.manifest
    sealer = sealer_of(manifest)
    cluster = configure_cluster(
        data_dir, manifest, ports, storage_overrides, instance_overrides, cluster_options
    )
    configs = {node.name: storage_config(node.directory) for node in cluster.storage_nodes}
    counts = fill_volume(configs, reader, chosen, sealer, EPOCH_FIRST)
    cluster.write_cluster_file()
    seconds = time.monotonic() - started_s
    log.info(
        "volume restored",
        volume=chosen.volume_name,
        lsn=chosen.lsn,
        commit_time=format_time(chosen.commit_time_us),
        data_dir=str(data_dir),
        seconds=round(seconds, 3),
        **counts,
    )
    return RestoreResult(cluster, chosen, seconds=seconds, **counts)


def fill_volume(
    configs: dict[str, StorageNodeConfig],
    reader: BackupReader,
    chosen: RestorePlan,
    sealer: Sealer,
    volume_epoch: int,
    placements: dict[int, list[Member]] | None = None,
    with_images: bool = True,
) -> dict[str, int]:
    """Writes every PG's segments on the nodes of `configs` as of the plan's LSN;
    each PG on its members in `placements` (the default topology's for a PG not
    there). Without images (a clone), a segment that starts from an image set
    stores its base records only: its page images are read from the set."""
    manifest = chosen.manifest
    nodes = [Member(name, f"{c.host}:{c.port}", c.az) for name, c in sorted(configs.items())]
    topology = Topology(VolumeId(manifest.volume_id), nodes, manifest.pages_per_pg)
    stores = {name: open_store(config) for name, config in configs.items()}
    counts = {"pgs": 0, "records": 0, "pages": 0, "bytes_restored": 0}
    try:
        with ThreadPoolExecutor(FILL_THREADS) as pool:
            filled = pool.map(
                lambda pg: _fill_pg(
                    stores,
                    reader,
                    chosen,
                    sealer,
                    volume_epoch,
                    topology,
                    placements,
                    pg,
                    with_images,
                ),
                sorted(chosen.bases),
            )
            for pg_counts in filled:
                for key, value in pg_counts.items():
                    counts[key] += value
    finally:
        for store in stores.values():
            store.close()
    return counts


def _fill_pg(
    stores: dict[str, SegmentStore],
    reader: BackupReader,
    chosen: RestorePlan,
    sealer: Sealer,
    volume_epoch: int,
    topology: Topology,
    placements: dict[int, list[Member]] | None,
    pg: int,
    with_images: bool,
) -> dict[str, int]:
    base = chosen.bases[pg]
    records = reader.records(sealer, pg, base, chosen.lsn)
    images: list[tuple[int, int, bytes]] = []
    base_records: list[bytes] = []
    if base > 0:
        if with_images:
            images, base_records = reader.image_set(sealer, pg, base)
        else:
            base_records = _base_records(reader, sealer, pg, base)
    if not records and base == 0:
        return {"pgs": 0, "records": 0, "pages": 0, "bytes_restored": 0}  # no record yet
    members = (placements or {}).get(pg) or list(topology.placement(PgIndex(pg)))
    checked, checked_base = incoming(records), incoming(base_records)
    for member in members:
        if member.node not in stores:
            raise Corruption("a segment's member is not a storage node here", node=member.node)
        meta = SegmentMeta(
            volume_id=chosen.manifest.volume_id,
            pg=pg,
            first_page=topology.first_page(PgIndex(pg)),
            page_count=chosen.manifest.pages_per_pg,
            volume_epoch=volume_epoch,
            membership_epoch=volume_epoch,
            members=list(members),
        )
        fill_segment(stores[member.node], meta, base, images, checked_base, checked)
    return {
        "pgs": 1,
        "records": len(records) + len(base_records),
        "pages": len(images),
        "bytes_restored": sum(map(len, records)) + sum(len(image) for _, _, image in images),
    }


def _base_records(reader: BackupReader, sealer: Sealer, pg: int, base: int) -> list[bytes]:
    done = layout.ImageSet.from_json(
        reader.objects.get(layout.image_set_done_key(reader.name, pg, base))
    )
    if not done.has_records:
        return []
    data = reader.objects.get(layout.base_records_key(reader.name, pg, base))
    return layout.decode_chunk(sealer, data, layout.KIND_BASE_RECORDS)[2]


def open_store(config: StorageNodeConfig) -> SegmentStore:
    sealers = open_sealers(config.kms_url, config.data_keys)
    return SegmentStore(config.data_dir / SEGMENTS_DIR, config.lmdb_map_size_bytes, sealers)


def storage_config(directory: Path) -> StorageNodeConfig:
    return config_module.load(StorageNodeConfig, directory / STORAGE_CONFIG, table="storage_node")


def backup_status(
    store_url: str, volume: str | None = None, endpoint_url: str | None = None
) -> dict[str, Any]:
    """What `borealis backup status` prints: the store, the volume, the latest
    restorable time and LSN, and the backup lag (now minus the latest restorable
    commit time: under writes, how far the backup trails; on an idle volume, the
    time since its last commit)."""
    objects = object_store_from_url(store_url, endpoint_url)
    reader = BackupReader(objects, choose_volume(objects, volume))
    history = reader.history()
    lsn, time_us = layout.restorable_lsn(history)
    now_us = int(time.time() * US_PER_S)
    return {
        "store_url": objects.url,
        "volume": reader.name,
        "volume_id": reader.manifest().volume_id,
        "pgs": len(history.pgs),
        "latest_restorable_lsn": lsn,
        "latest_restorable_time": format_time(time_us) if lsn else None,
        "latest_restorable_time_us": time_us if lsn else None,
        "backup_lag_s": round((now_us - time_us) / US_PER_S, 3) if lsn else None,
        "records_indexed": len(history.entries),
        "image_sets": sum(len(bases) for bases in history.image_bases.values()),
    }
