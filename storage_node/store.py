"""The segment store: every segment of this node in one LMDB environment.

Four named databases, keys big-endian so LMDB's order is numeric order:

    meta      (volume u64, pg u32)                   -> SegmentMeta as JSON
    log       (volume u64, pg u32, lsn u64)          -> sealed(encoded redo record)
    versions  (volume u64, pg u32, page u64, lsn u64) -> b"D" delta in the log,
                                                         b"F" full image in the log,
                                                         b"M" sealed(crc u32 + image)
    keys      (volume u64)                           -> b"P" stored in the clear, or
                                                         b"E" sealed(KEY_CHECK)

Sealing (borealis/encryption.py) is AES-256-GCM under the volume's data key when
encryption is on, the identity when off (the layout is then the unsealed one). The
associated data binds each value to its key: a record to (volume, pg, lsn; page 0,
since the page is inside the sealed header, which the tag covers), an image to
(volume, pg, lsn, page). Records keep their own CRC32C and images theirs inside the
seal, so a value is checked the same way whether encryption is on or off. The keys
database lets a node with the wrong key, or none, refuse to start (`verify_keys`)
instead of serving data it cannot open.

`versions` is the per-page index GetPage walks backwards: from the newest version
at or below the read point down to the first image. The coalescer turns a "D" into
an "M" so that walk stays short; GC drops versions below the newest image at or
below the PGMRPL.

Reads run in any thread with their own read transaction. Writes are functions
`op(txn) -> publish` that only the writer thread runs (storage_node/writer.py):
they change the segment's working state inside the transaction and return what
to publish once the transaction is durable.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
from crc32c import crc32c

from borealis import redo
from borealis.encryption import (
    PLAIN_VOLUMES,
    WHAT_IMAGE,
    WHAT_KEY_CHECK,
    WHAT_RECORD,
    Sealer,
    VolumeSealers,
    associated_data,
)
from borealis.errors import Corruption, InvalidRequest, KeyUnavailable, NotFound
from borealis.ids import Epochs, Lsn, SegmentId
from borealis.log import get_logger
from storage_node.chain import SegmentChain
from storage_node.segment import Segment, SegmentMeta

if TYPE_CHECKING:
    from storage_node.base_images import BaseImages

SEGMENT_KEY = struct.Struct(">QI")
LOG_KEY = struct.Struct(">QIQ")
PAGE_PREFIX = LOG_KEY  # (volume, pg, page) has the log key's shape
VERSION_KEY = struct.Struct(">QIQQ")
SEGMENT_KEY_BYTES = SEGMENT_KEY.size
PAGE_PREFIX_BYTES = PAGE_PREFIX.size
U64 = struct.Struct(">Q")
IMAGE_CRC = struct.Struct("<I")

KIND_DELTA = redo.KIND_DELTA
KIND_IMAGE = redo.KIND_IMAGE

TAG_DELTA = b"D"
TAG_FULL = b"F"
TAG_MATERIALISED = b"M"

# The keys database: what a volume's data on this node is sealed with.
KEY_CHECK = b"borealis key check"
KEY_STORED_PLAIN = b"P"
KEY_STORED_SEALED = b"E"

log = get_logger("storage_node.store")

Publish = Callable[[], object]


# A checked record with the header fields the store needs:
# (lsn, prev_lsn_pg, page, kind, data). A plain tuple: one is built per record.
IncomingRecord = tuple[int, int, int, int, bytes]


@dataclass(frozen=True, slots=True)
class PageVersions:
    """The versions of one page, newest first, as the coalescer and GC see them."""

    page: int
    lsns: list[int]
    tags: list[bytes]


def image_value(sealer: Sealer, segment_id: SegmentId, page: int, lsn: int, image: bytes) -> bytes:
    volume, pg = segment_id.volume_id, segment_id.pg
    crc = crc32c(VERSION_KEY.pack(volume, pg, page, lsn) + image)
    associated = associated_data(volume, pg, lsn, page, WHAT_IMAGE)
    return TAG_MATERIALISED + sealer.seal(IMAGE_CRC.pack(crc) + image, associated)


def check_image_value(sealer: Sealer, key: bytes, value: bytes) -> bytes:
    """The image of a materialised version, or Corruption."""
    volume, pg, page, lsn = VERSION_KEY.unpack(key)
    try:
        body = sealer.open(value[1:], associated_data(volume, pg, lsn, page, WHAT_IMAGE))
    except Corruption:
        raise Corruption(
            "materialised page image failed authentication",
            segment=f"{volume}/{pg}",
            page=page,
            lsn=lsn,
        ) from None
    image = body[IMAGE_CRC.size :]
    if (
        len(image) != redo.PAGE_SIZE_BYTES
        or crc32c(bytes(key) + image) != IMAGE_CRC.unpack_from(body)[0]
    ):
        raise Corruption(
            "materialised page image CRC32C mismatch", segment=f"{volume}/{pg}", page=page, lsn=lsn
        )
    return image


def seal_record(sealer: Sealer, volume: int, pg: int, lsn: int, data: bytes) -> bytes:
    if not sealer.encrypted:
        return data  # the append path: no associated data to build for nothing
    return sealer.seal(data, associated_data(volume, pg, lsn, 0, WHAT_RECORD))


def open_record(sealer: Sealer, volume: int, pg: int, lsn: int, stored: bytes) -> bytes:
    """The checked record stored at (volume, pg, lsn), or Corruption."""
    try:
        data = sealer.open(stored, associated_data(volume, pg, lsn, 0, WHAT_RECORD))
    except Corruption:
        raise Corruption(
            "redo record failed authentication", segment=f"{volume}/{pg}", lsn=lsn
        ) from None
    if redo.check(data, Corruption)[1] != lsn:
        raise Corruption("redo record stored under another LSN", segment=f"{volume}/{pg}", lsn=lsn)
    return data


def outside_truncation(meta: SegmentMeta, records: list[IncomingRecord]) -> list[IncomingRecord]:
    """The records outside the segment's last truncation range.

    A truncated range stays empty: a peer that has the new epoch but has not
    truncated yet must not gossip those records back.
    """
    above, up_to = meta.truncated_above_lsn, meta.truncated_up_to_lsn
    if not up_to:
        return records
    return [record for record in records if not above < record[0] <= up_to]


class SegmentStore:
    def __init__(
        self,
        path: Path,
        map_size_bytes: int,
        sealers: VolumeSealers = PLAIN_VOLUMES,
        base_images: BaseImages | None = None,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # sync/metasync: a commit returns only after fsync, so an ack means durable.
        self.env = lmdb.open(
            str(path),
            map_size=map_size_bytes,
            max_dbs=4,
            sync=True,
            metasync=True,
            readahead=False,
            max_readers=256,
        )
        self.meta_db = self.env.open_db(b"meta")
        self.log_db = self.env.open_db(b"log")
        self.versions_db = self.env.open_db(b"versions")
        self.keys_db = self.env.open_db(b"keys")
        self.sealers = sealers
        # A copy-on-write clone's node: its parent's page images (base_images.py).
        self.base_images = base_images
        self.segments: dict[SegmentId, Segment] = {}

    def sealer_of(self, volume_id: int) -> Sealer:
        """The sealer of a volume's data (PLAIN when encryption is off); what backups
        upload is sealed with it too. InvalidRequest if this node has no key for it."""
        return self.sealers.of(volume_id)

    def close(self) -> None:
        self.env.close()

    # -- loading ---------------------------------------------------------------

    def load(self) -> None:
        """Reads every segment's meta and rebuilds its chain from the records above its SCL.

        Segments already loaded keep their identity (tasks hold references to them)
        and get their state replaced by what is on disk.
        """
        segments = {}
        with self.env.begin() as txn:
            for _key, value in txn.cursor(self.meta_db):
                meta = SegmentMeta.from_json(value)
                chain = SegmentChain(Lsn(meta.scl), self._records_above(txn, meta, meta.scl))
                loaded = Segment(meta, chain)
                segment = self.segments.get(loaded.id)
                if segment is None:
                    segment = loaded
                else:
                    segment.reset(meta, chain)
                segments[segment.id] = segment
        self.segments = segments

    def _records_above(
        self, txn: lmdb.Transaction, meta: SegmentMeta, lsn: int
    ) -> Iterator[tuple[Lsn, Lsn]]:
        """(lsn, prev_lsn_pg) of the records above `lsn`. A corrupt one is left out: the
        chain then has a hole there, which gossip fills with a peer's copy (an append
        overwrites the corrupt value)."""
        for header in self._headers_above(txn, meta.volume_id, meta.pg, lsn):
            yield Lsn(header[1]), Lsn(header[3])

    def _headers_above(
        self, txn: lmdb.Transaction, volume: int, pg: int, lsn: int
    ) -> Iterator[tuple]:
        """The header tuples of the good records above `lsn`, LSN ascending."""
        sealer = self.sealer_of(volume)
        for key, stored in self._log_range(txn, volume, pg, lsn):
            (record_lsn,) = U64.unpack_from(key, SEGMENT_KEY_BYTES)
            try:
                data = open_record(sealer, volume, pg, record_lsn, stored)
            except Corruption as error:
                log.warning("corrupt log record skipped", error=error)
                continue
            yield redo.HEADER.unpack_from(data)

    def segment(self, segment_id: SegmentId) -> Segment:
        segment = self.segments.get(segment_id)
        if segment is None:
            raise NotFound("no such segment on this node", segment=segment_id)
        return segment

    # -- reads -----------------------------------------------------------------

    def _log_range(
        self, txn: lmdb.Transaction, volume: int, pg: int, after: int
    ) -> Iterator[tuple[bytes, bytes]]:
        cursor = txn.cursor(self.log_db)
        prefix = SEGMENT_KEY.pack(volume, pg)
        if not cursor.set_range(LOG_KEY.pack(volume, pg, after + 1)):
            return
        for key, value in cursor:
            if key[:SEGMENT_KEY_BYTES] != prefix:
                return
            yield key, value

    def read_page(self, segment: Segment, page: int, lsn: int) -> tuple[bytes, int]:
        """(image, page_lsn) of `page` as of `lsn`; Corruption if a needed version is bad."""
        with self.env.begin() as txn:
            return self._read_page(txn, segment.meta.volume_id, segment.meta.pg, page, lsn)

    def _read_page(
        self, txn: lmdb.Transaction, volume: int, pg: int, page: int, lsn: int
    ) -> tuple[bytes, int]:
        prefix = PAGE_PREFIX.pack(volume, pg, page)
        records: list[bytes] = []
        base: bytes | None = None
        page_lsn = 0
        # A clone's page reads its parent's image below the clone's own versions.
        shared = self._shared_image(volume, pg, page, lsn)
        shared_lsn = shared[0] if shared is not None else -1
        whole = False
        cursor = txn.cursor(self.versions_db)
        if cursor.set_range(VERSION_KEY.pack(volume, pg, page, lsn + 1)):
            found = cursor.prev()
        else:
            found = cursor.last()
        while found:
            key = cursor.key()
            if key[:PAGE_PREFIX_BYTES] != prefix:
                break
            (version_lsn,) = U64.unpack_from(key, PAGE_PREFIX_BYTES)
            if version_lsn <= shared_lsn:
                break  # the shared image holds this version and every older one
            page_lsn = page_lsn or version_lsn
            value = cursor.value()
            if value[:1] == TAG_MATERIALISED:
                base = check_image_value(self.sealer_of(volume), key, value)
                whole = True
                break
            records.append(self._log_record(txn, volume, pg, version_lsn))
            if value[:1] == TAG_FULL:
                whole = True
                break
            found = cursor.prev()
        records.reverse()
        if shared is not None and not whole:
            base, page_lsn = shared[1], page_lsn or shared[0]
        return redo.materialise(base, records), page_lsn

    def _shared_image(self, volume: int, pg: int, page: int, lsn: int) -> tuple[int, bytes] | None:
        """(page_lsn, image) of the page in a clone's parent image set, when this node
        is a clone's and the set has the page at or below `lsn`."""
        if self.base_images is None:
            return None
        found = self.base_images.image(self.sealer_of(volume), volume, pg, page)
        return found if found is not None and found[0] <= lsn else None

    def page_images(
        self, segment: Segment, lsn: int, start_page: int, bytes_max: int
    ) -> tuple[list[tuple[int, int, bytes]], bool, int]:
        """Full images as of `lsn` of the pages from `start_page` on that have a version at
        or below it, page ascending: ([(page, page_lsn, image)], more, next_page).

        At least one image if any, then no more than `bytes_max` of images in all; when
        that stops the read, `more` is True and the next call starts at `next_page`
        (else `next_page` is the end of the segment's range).
        """
        volume, pg = segment.meta.volume_id, segment.meta.pg
        page = max(start_page, segment.meta.first_page)
        end_page = segment.meta.first_page + segment.meta.page_count
        if self.base_images is not None and self.base_images.base_lsn(volume, pg) > 0:
            return self._page_images_shared(segment, lsn, page, end_page, bytes_max)
        images: list[tuple[int, int, bytes]] = []
        total_bytes = 0
        with self.env.begin() as txn:
            cursor = txn.cursor(self.versions_db)
            prefix = SEGMENT_KEY.pack(volume, pg)
            while page < end_page and cursor.set_range(VERSION_KEY.pack(volume, pg, page, 0)):
                key = cursor.key()
                if key[:SEGMENT_KEY_BYTES] != prefix:
                    break
                page, oldest_lsn = struct.unpack_from(">QQ", key, SEGMENT_KEY_BYTES)
                if page >= end_page:
                    break
                if oldest_lsn <= lsn:
                    if images and total_bytes + redo.PAGE_SIZE_BYTES > bytes_max:
                        return images, True, page
                    image, page_lsn = self._read_page(txn, volume, pg, page, lsn)
                    images.append((page, page_lsn, image))
                    total_bytes += len(image)
                page += 1
        return images, False, end_page

    def _page_images_shared(
        self, segment: Segment, lsn: int, page: int, end_page: int, bytes_max: int
    ) -> tuple[list[tuple[int, int, bytes]], bool, int]:
        """page_images of a clone's segment: its pages in the parent's image set count
        as versions too, so a backup image set or a new peer gets them all."""
        volume, pg = segment.meta.volume_id, segment.meta.pg
        images: list[tuple[int, int, bytes]] = []
        total_bytes = 0
        with self.env.begin() as txn:
            for candidate in range(page, end_page):
                image, page_lsn = self._read_page(txn, volume, pg, candidate, lsn)
                if page_lsn == 0:
                    continue  # no version at or below `lsn`, here or in the parent's set
                if images and total_bytes + redo.PAGE_SIZE_BYTES > bytes_max:
                    return images, True, candidate
                images.append((candidate, page_lsn, image))
                total_bytes += len(image)
        return images, False, end_page

    def _log_record(self, txn: lmdb.Transaction, volume: int, pg: int, lsn: int) -> bytes:
        stored = txn.get(LOG_KEY.pack(volume, pg, lsn), db=self.log_db)
        if stored is None:
            raise Corruption(
                "page version without its log record", segment=f"{volume}/{pg}", lsn=lsn
            )
        return open_record(self.sealer_of(volume), volume, pg, lsn, stored)

    def read_records(
        self, segment: Segment, after: int, up_to: int, bytes_max: int
    ) -> tuple[list[bytes], bool]:
        """Records with after < lsn <= up_to, at least one if any, about `bytes_max` in all."""
        records: list[bytes] = []
        total = 0
        volume, pg = segment.meta.volume_id, segment.meta.pg
        sealer = self.sealer_of(volume)
        with self.env.begin() as txn:
            for key, stored in self._log_range(txn, volume, pg, after):
                (lsn,) = U64.unpack_from(key, SEGMENT_KEY_BYTES)
                if lsn > up_to:
                    return records, False
                size = len(stored) - sealer.overhead_bytes
                if records and total + size > bytes_max:
                    return records, True
                records.append(open_record(sealer, volume, pg, lsn, stored))
                total += size
        return records, False

    def page_versions(
        self, segment: Segment, pages: set[int] | None = None
    ) -> Iterator[PageVersions]:
        """Every version of the given pages (all pages if None), newest first per page."""
        volume, pg = segment.meta.volume_id, segment.meta.pg
        with self.env.begin() as txn:
            cursor = txn.cursor(self.versions_db)
            targets = sorted(pages) if pages is not None else [None]
            for target in targets:
                start = (
                    PAGE_PREFIX.pack(volume, pg, target)
                    if target is not None
                    else SEGMENT_KEY.pack(volume, pg)
                )
                stop = start
                current: PageVersions | None = None
                if not cursor.set_range(start):
                    continue
                for key, value in cursor:
                    if key[: len(stop)] != stop:
                        break
                    page, lsn = struct.unpack_from(">QQ", key, SEGMENT_KEY_BYTES)
                    if current is None or current.page != page:
                        if current is not None:
                            current.lsns.reverse()
                            current.tags.reverse()
                            yield current
                        current = PageVersions(page, [], [])
                    current.lsns.append(lsn)
                    current.tags.append(bytes(value[:1]))
                if current is not None:
                    current.lsns.reverse()
                    current.tags.reverse()
                    yield current

    def scan(
        self, segment: Segment, after_key: bytes, items_max: int
    ) -> tuple[list[tuple[str, bytes]], bytes | None]:
        """Checks up to `items_max` log records and images after `after_key`.

        Returns the bad ones as ("log" | "image", key) and where to resume (None at the end).
        """
        bad: list[tuple[str, bytes]] = []
        volume, pg = segment.meta.volume_id, segment.meta.pg
        prefix = SEGMENT_KEY.pack(volume, pg)
        sealer = self.sealer_of(volume)
        checked = 0
        with self.env.begin() as txn:
            for name, db in (("log", self.log_db), ("image", self.versions_db)):
                if after_key and after_key[:1] != name[:1].encode():
                    continue
                cursor = txn.cursor(db)
                position = after_key[1:] if after_key else b""
                found = cursor.set_range(position if position else prefix)
                if found and position and cursor.key() == position:
                    found = cursor.next()
                while found:
                    key, value = cursor.key(), cursor.value()
                    if key[:SEGMENT_KEY_BYTES] != prefix:
                        break
                    if checked >= items_max:
                        return bad, name[:1].encode() + bytes(key)
                    checked += 1
                    try:
                        if name == "log":
                            (lsn,) = U64.unpack_from(key, SEGMENT_KEY_BYTES)
                            open_record(sealer, volume, pg, lsn, value)
                        elif value[:1] == TAG_MATERIALISED:
                            check_image_value(sealer, key, value)
                    except Corruption:
                        bad.append((name, bytes(key)))
                    found = cursor.next()
                after_key = b""
        return bad, None

    # -- writer-thread operations ------------------------------------------------

    def op_create(self, txn: lmdb.Transaction, meta: SegmentMeta) -> Publish:
        segment = Segment(meta, SegmentChain(Lsn(meta.scl)))
        self._put_key_check(txn, meta.volume_id)
        txn.put(SEGMENT_KEY.pack(meta.volume_id, meta.pg), meta.to_json(), db=self.meta_db)

        def publish() -> Segment:
            self.segments[segment.id] = segment
            return segment

        return publish

    def op_reset_for_hydration(
        self, txn: lmdb.Transaction, segment: Segment, change: Callable[[SegmentMeta], None]
    ) -> Publish:
        """Drops every record and page version of the segment, applies `change` to its
        meta and marks it hydrating: a segment that rejoins its PG after a while out
        of it (a replacement retried after a rollback) may hold records that were
        truncated meanwhile, so it starts over from its peers."""
        meta = segment.meta
        prefix = SEGMENT_KEY.pack(meta.volume_id, meta.pg)
        for db in (self.log_db, self.versions_db):
            with txn.cursor(db=db) as cursor:
                found = cursor.set_range(prefix)
                while found and bytes(cursor.key()[:SEGMENT_KEY_BYTES]) == prefix:
                    found = cursor.delete()
        change(meta)
        meta.scl = meta.highest_lsn = meta.records = meta.record_bytes = 0
        meta.hydrating = True
        txn.put(prefix, meta.to_json(), db=self.meta_db)
        chain = SegmentChain()

        def publish() -> Segment:
            segment.chain = chain
            segment.scl = Lsn(0)
            return segment

        return publish

    def op_update_meta(
        self, txn: lmdb.Transaction, segment: Segment, change: Callable[[SegmentMeta], None]
    ) -> Publish:
        """Applies `change` to the segment's meta (in the writer thread) and persists it."""
        change(segment.meta)
        txn.put(
            SEGMENT_KEY.pack(segment.meta.volume_id, segment.meta.pg),
            segment.meta.to_json(),
            db=self.meta_db,
        )
        pgmrpl = segment.meta.pgmrpl

        def publish() -> Segment:
            segment.pgmrpl = Lsn(pgmrpl)
            return segment

        return publish

    def op_append(
        self,
        txn: lmdb.Transaction,
        segment: Segment,
        records: list[IncomingRecord],
        epochs: Epochs | None = None,
    ) -> Publish:
        """Adds the records the segment does not hold yet; publishes (scl, highest, new, new bytes)."""
        if epochs is not None:
            # Checked again here, in the writer thread that also changes the epochs: the
            # request may have waited since its first check while recovery raised the
            # epoch and truncated, and a fenced writer's records must not land after that.
            segment.check_epochs(epochs)
        records = outside_truncation(segment.meta, records)
        volume, pg = segment.meta.volume_id, segment.meta.pg
        sealer = self.sealer_of(volume)
        chain = segment.chain
        log_items = []
        version_items = []
        touched = set()
        new_bytes = 0
        is_new = chain.extend([(record[0], record[1]) for record in records])
        for (lsn, _prev, page, kind, data), new in zip(records, is_new, strict=True):
            if not new:
                continue
            log_items.append(
                (LOG_KEY.pack(volume, pg, lsn), seal_record(sealer, volume, pg, lsn, data))
            )
            new_bytes += len(data)
            if kind == KIND_DELTA:
                version_items.append((VERSION_KEY.pack(volume, pg, page, lsn), TAG_DELTA))
                touched.add(page)
            elif kind == KIND_IMAGE:
                version_items.append((VERSION_KEY.pack(volume, pg, page, lsn), TAG_FULL))
        meta = segment.meta
        if log_items:
            txn.cursor(self.log_db).putmulti(log_items)
            if version_items:
                txn.cursor(self.versions_db).putmulti(version_items)
            meta.scl = chain.scl
            meta.highest_lsn = chain.highest_lsn
            meta.records += len(log_items)
            meta.record_bytes += new_bytes
            txn.put(SEGMENT_KEY.pack(volume, pg), meta.to_json(), db=self.meta_db)
        scl, highest, new = chain.scl, chain.highest_lsn, len(log_items)

        def publish() -> tuple[int, int, int, int]:
            segment.scl = Lsn(scl)
            segment.touch(touched)
            return scl, highest, new, new_bytes

        return publish

    def op_put_image(
        self, txn: lmdb.Transaction, segment: Segment, page: int, lsn: int, image: bytes
    ) -> Publish:
        """Stores a materialised image as the version of `page` at `lsn` (which must exist)."""
        key = VERSION_KEY.pack(segment.meta.volume_id, segment.meta.pg, page, lsn)
        existing = txn.get(key, db=self.versions_db)
        if existing is not None and existing[:1] != TAG_FULL:
            value = image_value(self.sealer_of(segment.id.volume_id), segment.id, page, lsn, image)
            txn.put(key, value, db=self.versions_db)
        return lambda: existing is not None

    def op_put_hydrated_images(
        self,
        txn: lmdb.Transaction,
        segment: Segment,
        images: list[tuple[int, int, bytes]],
        epochs: Epochs,
    ) -> Publish:
        """Stores a peer's page images (page, page_lsn, image) as materialised versions of a
        hydrating segment; publishes how many were stored."""
        assert segment.meta.hydrating
        # Checked in the writer thread, which also changes epochs (see op_append).
        segment.check_epochs(epochs)
        sealer = self.sealer_of(segment.id.volume_id)
        for page, page_lsn, image in images:
            assert len(image) == redo.PAGE_SIZE_BYTES and segment.contains_page(page)
            key = VERSION_KEY.pack(segment.meta.volume_id, segment.meta.pg, page, page_lsn)
            value = image_value(sealer, segment.id, page, page_lsn, image)
            txn.put(key, value, db=self.versions_db)
        return lambda: len(images)

    def op_put_hydrated_records(
        self, txn: lmdb.Transaction, segment: Segment, records: list[IncomingRecord], epochs: Epochs
    ) -> Publish:
        """Stores a peer's records at or below a hydrating segment's base, with their page
        versions as AppendRedo would (GC later drops those older than the base images),
        without touching the chain: finishing hydration sets it. Publishes how many
        were new."""
        assert segment.meta.hydrating
        segment.check_epochs(epochs)
        volume, pg = segment.meta.volume_id, segment.meta.pg
        meta = segment.meta
        sealer = self.sealer_of(volume)
        new = 0
        for lsn, _prev, page, kind, data in outside_truncation(meta, records):
            stored = seal_record(sealer, volume, pg, lsn, data)
            if not txn.put(LOG_KEY.pack(volume, pg, lsn), stored, db=self.log_db, overwrite=False):
                continue
            new += 1
            meta.records += 1
            meta.record_bytes += len(data)
            tag = {KIND_DELTA: TAG_DELTA, KIND_IMAGE: TAG_FULL}.get(kind)
            if tag is not None:
                # An image copied at this version stays: it is the page's base.
                key = VERSION_KEY.pack(volume, pg, page, lsn)
                txn.put(key, tag, db=self.versions_db, overwrite=False)
        txn.put(SEGMENT_KEY.pack(volume, pg), meta.to_json(), db=self.meta_db)
        return lambda: new

    def op_finish_hydration(
        self, txn: lmdb.Transaction, segment: Segment, base: int, epochs: Epochs
    ) -> Publish:
        """Ends a hydration whose images and records at or below `base` are stored: the
        chain restarts at the PG's newest record at or below `base`, joined by the
        records already held above it (sent by the writer meanwhile), and reads at or
        above `base` become possible.

        The chain must restart at a record: the next record of the PG links to it.
        The newest one held at or below `base` is the PG's newest there, because the
        copy holds every record the source kept, and GC keeps each page's newest
        version at or below its PGMRPL (and every SIZE record).
        """
        assert segment.meta.hydrating
        segment.check_epochs(epochs)
        meta = segment.meta
        chain_base = self._last_lsn_at_or_below(txn, meta.volume_id, meta.pg, base)
        chain = SegmentChain(Lsn(chain_base), self._records_above(txn, meta, chain_base))
        segment.chain = chain
        meta.scl = chain.scl
        meta.highest_lsn = chain.highest_lsn
        # Versions below the base were not copied: reads below it are refused.
        meta.pgmrpl = max(meta.pgmrpl, base)
        meta.hydrating = False
        txn.put(SEGMENT_KEY.pack(meta.volume_id, meta.pg), meta.to_json(), db=self.meta_db)
        scl, pgmrpl = chain.scl, meta.pgmrpl

        def publish() -> int:
            segment.pgmrpl = Lsn(pgmrpl)
            segment.scl = Lsn(scl)
            return scl

        return publish

    def op_replace_record(self, txn: lmdb.Transaction, segment: Segment, data: bytes) -> Publish:
        """Overwrites a (corrupt) log record with a checked copy from a peer."""
        header = redo.check(data)
        volume, pg = segment.meta.volume_id, segment.meta.pg
        key = LOG_KEY.pack(volume, pg, header[1])
        replaced = txn.get(key, db=self.log_db) is not None
        if replaced:
            stored = seal_record(self.sealer_of(volume), volume, pg, header[1], data)
            txn.put(key, stored, db=self.log_db)
        return lambda: replaced

    def op_delete_versions(
        self, txn: lmdb.Transaction, segment: Segment, versions: list[tuple[int, int]]
    ) -> Publish:
        """Deletes (page, lsn) versions and their log records (garbage collection)."""
        volume, pg = segment.meta.volume_id, segment.meta.pg
        meta = segment.meta
        overhead_bytes = self.sealer_of(volume).overhead_bytes
        deleted = 0
        for page, lsn in versions:
            txn.delete(VERSION_KEY.pack(volume, pg, page, lsn), db=self.versions_db)
            stored = txn.pop(LOG_KEY.pack(volume, pg, lsn), db=self.log_db)
            if stored is not None:
                deleted += 1
                meta.records -= 1
                meta.record_bytes -= len(stored) - overhead_bytes
        txn.put(SEGMENT_KEY.pack(volume, pg), meta.to_json(), db=self.meta_db)
        return lambda: deleted

    def _doomed_records(
        self, txn: lmdb.Transaction, volume: int, pg: int, above: int, up_to: int
    ) -> list[tuple[int, int | None, int]]:
        """(lsn, page, plaintext size) of the records with above < lsn <= up_to; the page
        is None for a corrupt record (its header cannot be trusted)."""
        sealer = self.sealer_of(volume)
        doomed: list[tuple[int, int | None, int]] = []
        for key, stored in self._log_range(txn, volume, pg, above):
            (lsn,) = U64.unpack_from(key, SEGMENT_KEY_BYTES)
            if lsn > up_to:
                break
            size = len(stored) - sealer.overhead_bytes
            try:
                page: int | None = redo.HEADER.unpack_from(
                    open_record(sealer, volume, pg, lsn, stored)
                )[5]
            except Corruption as error:
                log.warning("corrupt log record truncated", error=error)
                page = None
            doomed.append((lsn, page, size))
        return doomed

    def _delete_versions_at(self, txn: lmdb.Transaction, volume: int, pg: int, lsn: int) -> None:
        """Deletes the page versions at `lsn`, whatever their page: a walk of the segment's
        whole index, done only for a corrupt record whose page is unknown."""
        prefix = SEGMENT_KEY.pack(volume, pg)
        with txn.cursor(db=self.versions_db) as cursor:
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()[:SEGMENT_KEY_BYTES]) == prefix:
                if U64.unpack_from(cursor.key(), PAGE_PREFIX_BYTES)[0] == lsn:
                    found = cursor.delete()
                else:
                    found = cursor.next()

    # -- data keys ---------------------------------------------------------------

    def _put_key_check(self, txn: lmdb.Transaction, volume: int) -> None:
        """Records, once per volume, how its data here is sealed (see verify_keys)."""
        key = U64.pack(volume)
        if txn.get(key, db=self.keys_db) is not None:
            return
        sealer = self.sealer_of(volume)
        if sealer.encrypted:
            check = sealer.seal(KEY_CHECK, associated_data(volume, 0, 0, 0, WHAT_KEY_CHECK))
            txn.put(key, KEY_STORED_SEALED + check, db=self.keys_db)
        else:
            txn.put(key, KEY_STORED_PLAIN, db=self.keys_db)

    def verify_keys(self) -> None:
        """KeyUnavailable unless this node can open the data of every volume it holds:
        each volume has a sealer, encrypted exactly when its data is, with the key
        that sealed it. Run at start, before `load` (which opens records)."""
        with self.env.begin() as txn:
            volumes = {
                SEGMENT_KEY.unpack(key)[0]
                for key in txn.cursor(self.meta_db).iternext(values=False)
            }
            for key, value in txn.cursor(self.keys_db):
                volume = U64.unpack(key)[0]
                volumes.discard(volume)
                self._verify_key(volume, bytes(value))
        for volume in volumes:
            self._sealer_or_unavailable(volume)

    def _verify_key(self, volume: int, value: bytes) -> None:
        sealer = self._sealer_or_unavailable(volume)
        if value[:1] == KEY_STORED_PLAIN:
            if sealer.encrypted:
                raise KeyUnavailable(
                    "the volume's data here is stored in the clear, but a data key is "
                    "configured for it: start this node without kms_url",
                    volume=volume,
                )
            return
        if not sealer.encrypted:
            raise KeyUnavailable(
                "the volume's data here is encrypted, but no KMS is configured (kms_url)",
                volume=volume,
            )
        try:
            check = sealer.open(value[1:], associated_data(volume, 0, 0, 0, WHAT_KEY_CHECK))
        except Corruption:
            check = b""
        if check != KEY_CHECK:
            raise KeyUnavailable(
                "the configured data key does not open the volume's data here: wrong key",
                volume=volume,
            )

    def _sealer_or_unavailable(self, volume: int) -> Sealer:
        try:
            return self.sealer_of(volume)
        except InvalidRequest as error:
            raise KeyUnavailable(str(error)) from None

    def _last_lsn_at_or_below(self, txn: lmdb.Transaction, volume: int, pg: int, lsn: int) -> int:
        cursor = txn.cursor(self.log_db)
        found = (
            cursor.prev() if cursor.set_range(LOG_KEY.pack(volume, pg, lsn + 1)) else cursor.last()
        )
        if found and cursor.key()[:SEGMENT_KEY_BYTES] == SEGMENT_KEY.pack(volume, pg):
            return U64.unpack_from(cursor.key(), SEGMENT_KEY_BYTES)[0]
        return 0

    def op_set_epoch(
        self,
        txn: lmdb.Transaction,
        segment: Segment,
        volume_epoch: int,
        truncate: tuple[int, int] | None,
    ) -> Publish:
        """Raises the volume epoch and, in the same transaction, deletes the records with
        above < lsn <= up_to of a truncation range and their page versions (recovery)."""
        volume, pg = segment.meta.volume_id, segment.meta.pg
        meta = segment.meta
        meta.volume_epoch = volume_epoch
        if truncate is None:
            txn.put(SEGMENT_KEY.pack(volume, pg), meta.to_json(), db=self.meta_db)
            return lambda: 0
        above, up_to = truncate
        doomed = self._doomed_records(txn, volume, pg, above, up_to)
        for lsn, page, size in doomed:
            txn.delete(LOG_KEY.pack(volume, pg, lsn), db=self.log_db)
            if page is None:
                self._delete_versions_at(txn, volume, pg, lsn)
            else:
                txn.delete(VERSION_KEY.pack(volume, pg, page, lsn), db=self.versions_db)
            meta.records -= 1
            meta.record_bytes -= size
        last_held = self._last_lsn_at_or_below(txn, volume, pg, above)
        segment.chain.truncate(Lsn(above), Lsn(up_to), Lsn(last_held))
        # Records above the range stay (a retried truncation must not lose what the
        # new writer appended since); the chain forgot those it had folded into the
        # SCL, so it learns them again from the log.
        for lsn, prev_lsn_pg in self._records_above(txn, meta, up_to):
            segment.chain.add(lsn, prev_lsn_pg)
        meta.scl = segment.chain.scl
        meta.highest_lsn = segment.chain.highest_lsn
        meta.truncated_above_lsn = above
        meta.truncated_up_to_lsn = up_to
        txn.put(SEGMENT_KEY.pack(volume, pg), meta.to_json(), db=self.meta_db)
        scl = meta.scl

        def publish() -> int:
            segment.scl = Lsn(scl)
            return len(doomed)

        return publish
