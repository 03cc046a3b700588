"""The backup's object layout, shared by the uploader (storage_node/backup.py) and
restore (control_plane/restore.py).

Under the store's URL, one directory per backed-up volume, named
`CLUSTER_ID-VOLUME_ID` (a cluster id is random per `borealis up`, so two clusters,
such as an original and its restore, never write into each other's backup even
in one bucket):

    volumes/NAME/manifest.json                       what a restore needs (JSON)
    volumes/NAME/pgs/PG/log/FIRST-LAST.chunk          sealed redo records, LSN ascending
    volumes/NAME/pgs/PG/index/FIRST-LAST.index        their headers (lsn, backlinks,
                                                      commit time): the commit-time ->
                                                      LSN index, written after the chunk
    volumes/NAME/pgs/PG/images/BASE/part-N.images     sealed page images as of BASE
    volumes/NAME/pgs/PG/images/BASE/records.chunk     the records the segment held at or
                                                      below BASE (the chain's anchor and
                                                      every SIZE record)
    volumes/NAME/pgs/PG/images/BASE/done.json         written last: the set is complete
    volumes/NAME/pgs/PG/progress.json                 every record of the PG up to `lsn`
                                                      is in the log chunks (or images)

Keys are deterministic by LSN range: an uploader that takes over a PG writes
chunks that may overlap its predecessor's, and a restore reads each LSN once.
Numbers in keys are zero-padded so that key order is numeric order.

Only records at or below the PG's PGMRPL are uploaded: those are at or below a
VDL, so no later recovery truncates them, and every record in the backup is on
the volume's backlink chain. Restore checks that chain (`restorable_lsn`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crc32c import crc32c

from borealis import redo
from borealis.encryption import WHAT_OBJECT, Sealer, associated_data
from borealis.errors import Corruption, InvalidRequest

FORMAT_VERSION = 1
VOLUMES = "volumes"
MAGIC_CHUNK = b"BRC1"
MAGIC_INDEX = b"BRX1"
MAGIC_IMAGES = b"BRI1"
# (volume u64, pg u32, first lsn u64, last lsn u64, count u32)
OBJECT_HEADER = struct.Struct(">QIQQI")
# Index entry: lsn, prev_lsn_volume, prev_lsn_pg, commit_time_us, flags.
INDEX_ENTRY = struct.Struct(">QQQQB")
IMAGE_ENTRY = struct.Struct(">QQ")
CRC = struct.Struct(">I")
# What is sealed, bound into the associated data beside the key's numbers.
KIND_LOG = 1
KIND_IMAGES = 2
KIND_BASE_RECORDS = 3


def volume_name(cluster_id: str, volume_id: int) -> str:
    if not cluster_id or not cluster_id.replace("-", "").isalnum():
        raise InvalidRequest("a backup cluster id is letters, digits and '-'", id=cluster_id)
    return f"{cluster_id}-{volume_id}"


def volume_prefix(name: str) -> str:
    return f"{VOLUMES}/{name}/"


def manifest_key(name: str) -> str:
    return f"{VOLUMES}/{name}/manifest.json"


def pg_prefix(name: str, pg: int) -> str:
    return f"{VOLUMES}/{name}/pgs/{pg:06d}/"


def chunk_key(name: str, pg: int, first_lsn: int, last_lsn: int) -> str:
    return f"{pg_prefix(name, pg)}log/{first_lsn:020d}-{last_lsn:020d}.chunk"


def index_key(name: str, pg: int, first_lsn: int, last_lsn: int) -> str:
    return f"{pg_prefix(name, pg)}index/{first_lsn:020d}-{last_lsn:020d}.index"


def image_set_prefix(name: str, pg: int, base_lsn: int) -> str:
    return f"{pg_prefix(name, pg)}images/{base_lsn:020d}/"


def image_part_key(name: str, pg: int, base_lsn: int, part: int) -> str:
    return f"{image_set_prefix(name, pg, base_lsn)}part-{part:06d}.images"


def base_records_key(name: str, pg: int, base_lsn: int) -> str:
    return f"{image_set_prefix(name, pg, base_lsn)}records.chunk"


def image_set_done_key(name: str, pg: int, base_lsn: int) -> str:
    return f"{image_set_prefix(name, pg, base_lsn)}done.json"


def progress_key(name: str, pg: int) -> str:
    return f"{pg_prefix(name, pg)}progress.json"


def parse_range_key(key: str) -> tuple[int, int]:
    """(first, last) LSN of a chunk or index key."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    first, _, last = stem.partition("-")
    return int(first), int(last)


def parse_pg(key: str) -> int:
    """The PG of a key under volumes/NAME/pgs/PG/."""
    return int(key.split("/")[3])


def parse_image_base(key: str) -> int:
    """The base LSN of a key under .../images/BASE/."""
    return int(key.split("/")[5])


def _associated(volume_id: int, pg: int, first: int, last: int, kind: int) -> bytes:
    return associated_data(volume_id, pg, first, last, WHAT_OBJECT) + bytes([kind])


# -- log chunks and their index ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexEntry:
    lsn: int
    prev_lsn_volume: int
    prev_lsn_pg: int
    commit_time_us: int
    cpl: bool


def index_entry(record: bytes) -> IndexEntry:
    header = redo.HEADER.unpack_from(record)
    _, lsn, prev_volume, prev_pg, _, _, _, flags, commit_us, _ = header
    return IndexEntry(lsn, prev_volume, prev_pg, commit_us, bool(flags & redo.FLAG_CPL))


def encode_chunk(
    sealer: Sealer, volume_id: int, pg: int, records: list[bytes], kind: int = KIND_LOG
) -> bytes:
    """Records (checked, LSN ascending) as one sealed object."""
    assert records
    first, last = index_entry(records[0]).lsn, index_entry(records[-1]).lsn
    header = OBJECT_HEADER.pack(volume_id, pg, first, last, len(records))
    body = sealer.seal(b"".join(records), _associated(volume_id, pg, first, last, kind))
    return MAGIC_CHUNK + header + body


def decode_chunk(sealer: Sealer, data: bytes, kind: int = KIND_LOG) -> tuple[int, int, list[bytes]]:
    """(volume, pg, records) of a chunk; Corruption if it does not open or check."""
    volume_id, pg, first, last, count = _header(data, MAGIC_CHUNK)
    plain = sealer.open(
        data[4 + OBJECT_HEADER.size :], _associated(volume_id, pg, first, last, kind)
    )
    records = []
    position = 0
    while position < len(plain):
        if position + redo.HEADER_BYTES > len(plain):
            raise Corruption("backup chunk ends inside a record header", pg=pg, first=first)
        length = redo.HEADER.unpack_from(plain, position)[-1]
        end = position + redo.HEADER_BYTES + length
        record = bytes(plain[position:end])
        redo.check(record, Corruption)
        records.append(record)
        position = end
    if len(records) != count or (records and index_entry(records[0]).lsn != first):
        raise Corruption("backup chunk does not match its header", pg=pg, first=first)
    if records and index_entry(records[-1]).lsn != last:
        raise Corruption("backup chunk does not match its header", pg=pg, last=last)
    return volume_id, pg, records


def encode_index(volume_id: int, pg: int, records: list[bytes]) -> bytes:
    entries = [index_entry(record) for record in records]
    header = OBJECT_HEADER.pack(volume_id, pg, entries[0].lsn, entries[-1].lsn, len(entries))
    body = b"".join(
        INDEX_ENTRY.pack(e.lsn, e.prev_lsn_volume, e.prev_lsn_pg, e.commit_time_us, int(e.cpl))
        for e in entries
    )
    return MAGIC_INDEX + header + body + CRC.pack(crc32c(header + body))


def decode_index(data: bytes) -> tuple[int, int, list[IndexEntry]]:
    volume_id, pg, first, last, count = _header(data, MAGIC_INDEX)
    body = data[4 + OBJECT_HEADER.size : -CRC.size]
    header = data[4 : 4 + OBJECT_HEADER.size]
    if len(data) < 4 + OBJECT_HEADER.size + CRC.size or (
        CRC.unpack(data[-CRC.size :])[0] != crc32c(header + body)
    ):
        raise Corruption("backup index CRC32C mismatch", pg=pg, first=first)
    if len(body) != count * INDEX_ENTRY.size:
        raise Corruption("backup index length does not match its count", pg=pg, first=first)
    entries = [
        IndexEntry(lsn, prev_volume, prev_pg, commit_us, bool(flags))
        for lsn, prev_volume, prev_pg, commit_us, flags in INDEX_ENTRY.iter_unpack(body)
    ]
    return volume_id, pg, entries


def _header(data: bytes, magic: bytes) -> tuple[int, int, int, int, int]:
    if len(data) < 4 + OBJECT_HEADER.size or data[:4] != magic:
        raise Corruption("not a backup object of the expected kind", magic=repr(bytes(data[:4])))
    return OBJECT_HEADER.unpack_from(data, 4)  # type: ignore[return-value]


# -- page images ------------------------------------------------------------------------------


def encode_images(
    sealer: Sealer, volume_id: int, pg: int, base_lsn: int, part: int, images: list[tuple]
) -> bytes:
    """(page, page_lsn, image) triples as one sealed object of an image set."""
    header = OBJECT_HEADER.pack(volume_id, pg, base_lsn, part, len(images))
    plain = b"".join(IMAGE_ENTRY.pack(page, lsn) + image for page, lsn, image in images)
    body = sealer.seal(plain, _associated(volume_id, pg, base_lsn, part, KIND_IMAGES))
    return MAGIC_IMAGES + header + body


def decode_images(sealer: Sealer, data: bytes) -> list[tuple[int, int, bytes]]:
    volume_id, pg, base_lsn, part, count = _header(data, MAGIC_IMAGES)
    plain = sealer.open(
        data[4 + OBJECT_HEADER.size :], _associated(volume_id, pg, base_lsn, part, KIND_IMAGES)
    )
    entry_bytes = IMAGE_ENTRY.size + redo.PAGE_SIZE_BYTES
    if len(plain) != count * entry_bytes:
        raise Corruption("backup image part length does not match its count", pg=pg, part=part)
    images = []
    for position in range(0, len(plain), entry_bytes):
        page, lsn = IMAGE_ENTRY.unpack_from(plain, position)
        if lsn > base_lsn:
            raise Corruption("backup image newer than its set's base", pg=pg, page=page)
        images.append(
            (page, lsn, bytes(plain[position + IMAGE_ENTRY.size : position + entry_bytes]))
        )
    return images


# -- JSON objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """What a restore needs besides the data: written by the storage nodes."""

    volume_name: str
    volume_id: int
    pages_per_pg: int
    cluster_id: str
    # The KMS URL and the wrapped data keys (storage_node data_keys syntax); empty
    # when the backup is not encrypted.
    kms_url: str = ""
    data_keys: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        values = json.loads(data)
        if values.get("format_version") != FORMAT_VERSION:
            raise InvalidRequest(
                "backup format version not supported", version=values.get("format_version")
            )
        return cls(**values)


@dataclass(frozen=True)
class Progress:
    """Every record of the PG at or below `lsn` is in the backup."""

    lsn: int
    node: str
    updated_us: int

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Progress:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class ImageSet:
    base_lsn: int
    parts: int
    pages: int
    created_us: int
    has_records: bool

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ImageSet:
        return cls(**json.loads(data))


# -- planning a restore (sans-IO) -------------------------------------------------------------


@dataclass
class VolumeHistory:
    """What the index objects and image sets of a volume say, merged over PGs."""

    # lsn -> (pg, entry); each LSN once, whichever chunk it came from.
    entries: dict[int, tuple[int, IndexEntry]] = field(default_factory=dict)
    # pg -> base LSNs of its complete image sets, ascending.
    image_bases: dict[int, list[int]] = field(default_factory=dict)
    pgs: set[int] = field(default_factory=set)

    def add_index(self, pg: int, entries: Iterable[IndexEntry]) -> None:
        self.pgs.add(pg)
        for entry in entries:
            self.entries.setdefault(entry.lsn, (pg, entry))

    def add_image_set(self, pg: int, base_lsn: int) -> None:
        self.pgs.add(pg)
        bases = self.image_bases.setdefault(pg, [])
        if base_lsn not in bases:
            bases.append(base_lsn)
            bases.sort()


def bases_for(history: VolumeHistory, target_lsn: int) -> dict[int, int]:
    """Per PG, the newest image set base at or below the target (0: none, from the start)."""
    return {
        pg: max((base for base in history.image_bases.get(pg, []) if base <= target_lsn), default=0)
        for pg in history.pgs
    }


NEVER = 2**63


def log_starts(history: VolumeHistory) -> dict[int, int]:
    """Per PG, where its backed-up history starts: 0 when its first record (the one
    with no PG backlink) is in the backup, else its oldest image set (a PG whose
    backup began from an image set, or whose older log retention removed); NEVER
    when neither (its history cannot be restored yet)."""
    firsts = {pg for pg, entry in history.entries.values() if entry.prev_lsn_pg == 0}
    starts = {}
    for pg in history.pgs:
        if pg in firsts:
            starts[pg] = 0
        elif history.image_bases.get(pg):
            starts[pg] = min(history.image_bases[pg])
        else:
            starts[pg] = NEVER
    return starts


def floor_at(history: VolumeHistory, lsn: int) -> int | None:
    """Where a restore to `lsn` checks the volume's history from: the highest of the
    PGs' bases for it (None when some PG's backed-up history starts above `lsn`)."""
    if any(start > lsn for start in log_starts(history).values()):
        return None
    return max(bases_for(history, lsn).values(), default=0)


def chain_end(history: VolumeHistory, floor: int, lsns: list[int] | None = None) -> int:
    """The highest LSN up to which the volume's backlink chain is unbroken above
    `floor`: each record's prev_lsn_volume is the record before it (the first
    one's is at or below the floor). Every backed-up record is on the chain (only
    records at or below a VDL are uploaded), so a break is a record some PG's
    uploader has not uploaded yet. `lsns`: the history's LSNs, sorted."""
    previous = floor
    for lsn in lsns if lsns is not None else sorted(history.entries):
        if lsn <= floor:
            continue
        prev_lsn_volume = history.entries[lsn][1].prev_lsn_volume
        if prev_lsn_volume != previous and not (previous == floor and prev_lsn_volume <= floor):
            break
        previous = lsn
    return previous


def restorable(history: VolumeHistory, lsn: int) -> bool:
    """Whether a restore to the CPL `lsn` finds its whole history in the backup:
    every PG's base at or below it, and the chain unbroken from the bases up."""
    floor = floor_at(history, lsn)
    return floor is not None and floor <= lsn and chain_end(history, floor) >= lsn


def restorable_lsn(history: VolumeHistory) -> tuple[int, int]:
    """(the newest restorable CPL, its commit time in us), or (0, 0).

    The bases a restore uses change only at image set bases, so the candidates are
    tried from the newest base down: for targets between a base x and the next
    one, the floor is the same, and the newest CPL below the chain's first break
    above it is the answer.
    """
    lsns = sorted(history.entries)
    cpls = [lsn for lsn in lsns if history.entries[lsn][1].cpl]
    candidates = sorted({0, *(b for bases in history.image_bases.values() for b in bases)})
    upper = NEVER
    for low in reversed(candidates):
        floor = floor_at(history, low)
        if floor is not None:
            end = chain_end(history, floor, lsns)
            best = [lsn for lsn in cpls if max(low, floor) <= lsn < upper and lsn <= end]
            if best:
                return best[-1], history.entries[best[-1]][1].commit_time_us
        upper = low
    return 0, 0


def lsn_at_time(history: VolumeHistory, time_us: int, restorable: int) -> int:
    """The last CPL at or below `restorable` committed at or before `time_us` (0: none)."""
    return max(
        (
            lsn
            for lsn, (_, entry) in history.entries.items()
            if entry.cpl and entry.commit_time_us <= time_us and lsn <= restorable
        ),
        default=0,
    )


def retention_keep(
    image_sets: Mapping[int, list[ImageSet]], window_start_us: int
) -> dict[int, int]:
    """Per PG, the base of the image set a restore at the window's start needs: the
    newest created before the window starts (the oldest one kept when none is).
    Objects of the PG older than it may go; see `retention_doomed`."""
    keep: dict[int, int] = {}
    for pg, sets in image_sets.items():
        before = [each for each in sets if each.created_us < window_start_us]
        if before:
            keep[pg] = max(each.base_lsn for each in before)
    return keep


def retention_doomed(
    keys: Iterable[str], pg: int, keep_base_lsn: int, volume_floor_lsn: int
) -> list[str]:
    """The PG's objects no restore in the window needs: image sets older than the
    kept one, and log chunks and index objects wholly at or below the volume's
    floor (the lowest kept base of any PG: restore checks the backlink chain from
    there up, across every PG's records)."""
    doomed = []
    for key in keys:
        if "/images/" in key:
            if parse_image_base(key) < keep_base_lsn:
                doomed.append(key)
        elif "/log/" in key or "/index/" in key:
            _, last = parse_range_key(key)
            if last < volume_floor_lsn:
                doomed.append(key)
    return doomed


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise Corruption(f"backup {what} is not JSON") from None
