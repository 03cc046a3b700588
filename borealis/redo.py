"""Redo records: the log's own binary encoding, its checks, and page materialisation.

The writer creates records, storage nodes persist and gossip them, backups keep
them; all use this one encoding, so a record's CRC32C is computed once by the
writer and checked on every hop. Layout (little-endian):

    crc32c          u32   over every byte after this field
    lsn             u64
    prev_lsn_volume u64   backlink: the previous record of the volume
    prev_lsn_pg     u64   backlink: the previous record of the same PG (segment chain)
    prev_lsn_page   u64   backlink: the previous record of the same page
    page            u64   page number (for SIZE: the volume's new page count)
    kind            u8    DELTA, IMAGE or SIZE
    flags           u8    FLAG_CPL: the last record of an MTR
    commit_time_us  u64   commit timestamp (CPL records), else 0
    payload_len     u32
    payload               DELTA: ranges of (offset u16, length u16, bytes), ascending,
                          disjoint, inside the page; IMAGE: PAGE_SIZE_BYTES bytes;
                          SIZE: empty
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from crc32c import crc32c

from borealis.errors import BorealisError, InvalidRequest
from borealis.ids import Lsn

PAGE_SIZE_BYTES = 4096
ZERO_PAGE = bytes(PAGE_SIZE_BYTES)

HEADER = struct.Struct("<IQQQQQBBQI")
HEADER_BYTES = HEADER.size
KIND_OFFSET = 4 + 8 * 5
RANGE = struct.Struct("<HH")
RANGE_BYTES = RANGE.size
CRC = struct.Struct("<I")


class Kind(IntEnum):
    DELTA = 0
    IMAGE = 1
    SIZE = 2


# Plain ints for the hot paths: comparing with an enum member costs an attribute lookup.
KIND_DELTA = int(Kind.DELTA)
KIND_IMAGE = int(Kind.IMAGE)
KIND_SIZE = int(Kind.SIZE)

FLAG_CPL = 0x01
FLAGS_KNOWN = FLAG_CPL


@dataclass(frozen=True, slots=True)
class RedoRecord:
    lsn: Lsn
    prev_lsn_volume: Lsn
    prev_lsn_pg: Lsn
    prev_lsn_page: Lsn
    page: int
    kind: Kind
    payload: bytes = b""
    cpl: bool = False
    commit_time_us: int = 0
    deltas: list[tuple[int, bytes]] = field(default_factory=list, compare=False, repr=False)


def delta_payload(ranges: Iterable[tuple[int, bytes]]) -> bytes:
    """Encodes (offset, bytes) ranges; they must be ascending and disjoint."""
    parts = []
    for offset, data in ranges:
        parts.append(RANGE.pack(offset, len(data)))
        parts.append(bytes(data))
    return b"".join(parts)


def encode(record: RedoRecord) -> bytes:
    body = (
        HEADER.pack(
            0,
            record.lsn,
            record.prev_lsn_volume,
            record.prev_lsn_pg,
            record.prev_lsn_page,
            record.page,
            record.kind,
            FLAG_CPL if record.cpl else 0,
            record.commit_time_us,
            len(record.payload),
        )[CRC.size :]
        + record.payload
    )
    return CRC.pack(crc32c(body)) + body


def check(data: bytes, error: type[BorealisError] = InvalidRequest) -> tuple:
    """Verifies an encoded record and returns its header tuple (HEADER's fields).

    Raises `error` (InvalidRequest for input, Corruption for what was read back)
    on a bad checksum, length, kind, flag, backlink or payload shape.
    """
    if len(data) < HEADER_BYTES:
        raise error("redo record shorter than its header", bytes=len(data))
    header = HEADER.unpack_from(data)
    crc, lsn, prev_volume, prev_pg, prev_page, _page, kind, flags, _time, length = header
    # Slicing copies the record, which is still cheaper than a memoryview slice here.
    if crc32c(data[CRC.size :]) != crc:
        raise error("redo record CRC32C mismatch", lsn=lsn)
    if HEADER_BYTES + length != len(data):
        raise error("redo record length does not match its payload", lsn=lsn)
    if lsn == 0 or not (prev_volume < lsn and prev_pg < lsn and prev_page < lsn):
        raise error("redo record backlinks must point below its LSN", lsn=lsn)
    if flags & ~FLAGS_KNOWN:
        raise error("redo record has unknown flags", lsn=lsn, flags=flags)
    if kind == KIND_DELTA:
        _check_ranges(data, lsn, error)
    elif kind == KIND_IMAGE:
        if length != PAGE_SIZE_BYTES:
            raise error("page image has the wrong page size", lsn=lsn, bytes=length)
    elif kind == KIND_SIZE:
        if length != 0:
            raise error("size record carries a payload", lsn=lsn)
    else:
        raise error("redo record has an unknown kind", lsn=lsn, kind=kind)
    return header


def _check_ranges(data: bytes, lsn: int, error: type[BorealisError]) -> None:
    position = HEADER_BYTES
    end = len(data)
    page_offset_min = 0
    unpack_range = RANGE.unpack_from
    while position < end:
        if position + RANGE_BYTES > end:
            raise error("delta range header truncated", lsn=lsn)
        offset, length = unpack_range(data, position)
        position += RANGE_BYTES + length
        if length == 0 or offset < page_offset_min or offset + length > PAGE_SIZE_BYTES:
            raise error("delta range outside the page or out of order", lsn=lsn, offset=offset)
        if position > end:
            raise error("delta range runs past the record", lsn=lsn)
        page_offset_min = offset + length


def decode(data: bytes, error: type[BorealisError] = InvalidRequest) -> RedoRecord:
    _, lsn, prev_volume, prev_pg, prev_page, page, kind, flags, commit_us, _ = check(data, error)
    payload = bytes(data[HEADER_BYTES:])
    return RedoRecord(
        lsn=Lsn(lsn),
        prev_lsn_volume=Lsn(prev_volume),
        prev_lsn_pg=Lsn(prev_pg),
        prev_lsn_page=Lsn(prev_page),
        page=page,
        kind=Kind(kind),
        payload=payload,
        cpl=bool(flags & FLAG_CPL),
        commit_time_us=commit_us,
        deltas=list(iter_ranges(data)) if kind == KIND_DELTA else [],
    )


def iter_ranges(data: bytes) -> Iterable[tuple[int, bytes]]:
    """The (offset, bytes) ranges of an encoded, already checked DELTA record."""
    view = memoryview(data)
    position = HEADER_BYTES
    end = len(data)
    while position < end:
        offset, length = RANGE.unpack_from(data, position)
        position += RANGE_BYTES
        yield offset, view[position : position + length]
        position += length


def apply(image: bytearray, data: bytes) -> None:
    """Applies one encoded, checked record (DELTA or IMAGE) to a page image in place."""
    kind = data[KIND_OFFSET]
    if kind == KIND_IMAGE:
        image[:] = memoryview(data)[HEADER_BYTES:]
        return
    for offset, chunk in iter_ranges(data):
        image[offset : offset + len(chunk)] = chunk


def materialise(base: bytes | None, records: Iterable[bytes]) -> bytes:
    """The page image after applying `records` (LSN ascending) to `base` (zeros if None)."""
    image = bytearray(base if base is not None else ZERO_PAGE)
    for data in records:
        apply(image, data)
    assert len(image) == PAGE_SIZE_BYTES
    return bytes(image)


# diff compares pages chunk by chunk (a memcmp per slice), then finds the changed
# bytes of each run of differing chunks at C speed: XOR as big integers, then map
# every non-zero byte to 1 so bytes.find can look for changes and for gaps.
DIFF_CHUNK_BYTES = 512
_NONZERO_TO_ONE = bytes([0] + [1] * 255)


def diff(old: bytes, new: bytes, gap_bytes_max: int = 8) -> list[tuple[int, bytes]]:
    """Byte ranges where `new` differs from `old`; ranges closer than the gap merge.

    Two ranges stay apart when at least `gap_bytes_max` equal bytes lie between
    them; each range starts and ends on a changed byte (so with 0, every changed
    byte is its own range).
    """
    assert len(old) == len(new) == PAGE_SIZE_BYTES
    ranges: list[tuple[int, bytes]] = []
    if old == new:
        return ranges
    # Runs of differing chunks are diffed as one span, so a range can cross a chunk
    # boundary; an equal chunk between two spans is a gap wider than the limit
    # (when the limit is not, the whole page is one span).
    chunk_bytes = DIFF_CHUNK_BYTES if gap_bytes_max < DIFF_CHUNK_BYTES else PAGE_SIZE_BYTES
    span_start = -1
    for start in range(0, PAGE_SIZE_BYTES, chunk_bytes):
        end = start + chunk_bytes
        if old[start:end] != new[start:end]:
            if span_start < 0:
                span_start = start
        elif span_start >= 0:
            _diff_span(old, new, span_start, start, gap_bytes_max, ranges)
            span_start = -1
    if span_start >= 0:
        _diff_span(old, new, span_start, PAGE_SIZE_BYTES, gap_bytes_max, ranges)
    return ranges


def _diff_span(
    old: bytes,
    new: bytes,
    start: int,
    end: int,
    gap_bytes_max: int,
    ranges: list[tuple[int, bytes]],
) -> None:
    """Appends the ranges of old[start:end] != new[start:end], which differ somewhere."""
    changed = (
        (int.from_bytes(old[start:end], "little") ^ int.from_bytes(new[start:end], "little"))
        .to_bytes(end - start, "little")
        .translate(_NONZERO_TO_ONE)
    )
    position = changed.find(1)
    if gap_bytes_max == 0:
        while position >= 0:
            ranges.append((start + position, new[start + position : start + position + 1]))
            position = changed.find(1, position + 1)
        return
    gap = bytes(gap_bytes_max)
    while position >= 0:
        # The first run of gap_bytes_max equal bytes ends the range; the byte before
        # it is a changed one (else the run would have been found one byte earlier).
        range_end = changed.find(gap, position)
        if range_end < 0:
            range_end = changed.rfind(1) + 1
            ranges.append((start + position, new[start + position : start + range_end]))
            return
        ranges.append((start + position, new[start + position : start + range_end]))
        position = changed.find(1, range_end)
