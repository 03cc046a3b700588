"""A clone's shared page images: its parent's backup image sets, read copy-on-write.

A copy-on-write clone (control_plane/clone.py) gets segments that hold only the
records above their PG's clone base: the page images as of that base stay in
the parent's backup, an immutable image set (borealis/backup_format.py). The
clone's storage nodes name it in DATA_DIR/base_images.json; a page that has no
image of its own in the segment store is materialised from the set's image (when
the set has one) with the segment's own records above it applied.

A PG's set is fetched whole on its first read (all its parts, sealed as the
backup seals them) and cached, least recently used first out, within a byte
bound. Calls block (an object store GET): callers on an event loop use a thread.

SegmentStore._read_page (storage_node/store.py) does the fallback for the store
`open_segment_store` gives a clone's node.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from borealis import backup_format as layout
from borealis.encryption import Sealer, VolumeSealers
from borealis.errors import Corruption
from borealis.log import get_logger
from borealis.object_store import ObjectStore, object_store_from_url
from storage_node.store import SegmentStore

log = get_logger("storage_node.base_images")

BASE_IMAGES_FILE = "base_images.json"
CACHE_BYTES_MAX = 256 * 2**20


@dataclass(frozen=True)
class BaseImageRef:
    """Which image sets a clone's segments read: the parent's backup volume and,
    per PG, the base LSN of the set (0 or absent: the PG has none)."""

    store_url: str
    endpoint_url: str
    volume_name: str
    volume_id: int
    bases: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        values = {**self.__dict__, "bases": {str(pg): b for pg, b in self.bases.items()}}
        return json.dumps(values, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BaseImageRef:
        values = layout.parse_json(data, "base image reference")
        values["bases"] = {int(pg): int(base) for pg, base in values.get("bases", {}).items()}
        return cls(**values)


def write_ref(directory: Path, ref: BaseImageRef) -> None:
    path = Path(directory) / BASE_IMAGES_FILE
    path.with_suffix(".tmp").write_bytes(ref.to_json())
    path.with_suffix(".tmp").replace(path)


def read_ref(directory: Path) -> BaseImageRef | None:
    path = Path(directory) / BASE_IMAGES_FILE
    return BaseImageRef.from_json(path.read_bytes()) if path.exists() else None


class BaseImages:
    """The page images of a clone's parent image sets, fetched on demand and cached."""

    def __init__(
        self,
        ref: BaseImageRef,
        objects: ObjectStore | None = None,
        cache_bytes_max: int = CACHE_BYTES_MAX,
    ) -> None:
        self.ref = ref
        self._objects = objects or object_store_from_url(ref.store_url, ref.endpoint_url or None)
        self._cache_bytes_max = cache_bytes_max
        self._cache: OrderedDict[int, dict[int, tuple[int, bytes]]] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()
        self.sets_fetched = 0

    def base_lsn(self, volume_id: int, pg: int) -> int:
        return self.ref.bases.get(pg, 0) if volume_id == self.ref.volume_id else 0

    def image(self, sealer: Sealer, volume_id: int, pg: int, page: int) -> tuple[int, bytes] | None:
        """(page_lsn, image) of the page in the PG's base set; None when it has none."""
        if self.base_lsn(volume_id, pg) == 0:
            return None
        with self._lock:
            images = self._cache.get(pg)
            if images is not None:
                self._cache.move_to_end(pg)
                return images.get(page)
        images = self._fetch(sealer, pg)
        with self._lock:
            if pg not in self._cache:
                self._cache[pg] = images
                self._cache_bytes += sum(len(image) for _, image in images.values())
                while self._cache_bytes > self._cache_bytes_max and len(self._cache) > 1:
                    _, evicted = self._cache.popitem(last=False)
                    self._cache_bytes -= sum(len(image) for _, image in evicted.values())
        return images.get(page)

    def _fetch(self, sealer: Sealer, pg: int) -> dict[int, tuple[int, bytes]]:
        name, base = self.ref.volume_name, self.ref.bases[pg]
        done = layout.ImageSet.from_json(
            self._objects.get(layout.image_set_done_key(name, pg, base))
        )
        images: dict[int, tuple[int, bytes]] = {}
        for part in range(done.parts):
            data = self._objects.get(layout.image_part_key(name, pg, base, part))
            for page, page_lsn, image in layout.decode_images(sealer, data):
                images[page] = (page_lsn, image)
        if len(images) != done.pages:
            raise Corruption("base image set is incomplete", pg=pg, base=base, pages=len(images))
        self.sets_fetched += 1
        log.info("base image set fetched", volume=name, pg=pg, base=base, pages=len(images))
        return images


def open_segment_store(
    data_dir: Path, path: Path, map_size_bytes: int, sealers: VolumeSealers
) -> SegmentStore:
    """The node's segment store: a clone's (reading base images) when `data_dir`
    names a parent's image sets, else the plain one."""
    ref = read_ref(data_dir)
    if ref is None:
        return SegmentStore(path, map_size_bytes, sealers)
    log.info("clone storage node: base images", volume=ref.volume_name, pgs=len(ref.bases))
    return SegmentStore(path, map_size_bytes, sealers, BaseImages(ref))
