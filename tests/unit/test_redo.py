"""borealis/redo.py: the record encoding, its checks, diffs and page materialisation."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from borealis import redo
from borealis.errors import BorealisError, Corruption, InvalidRequest
from borealis.ids import Lsn

pytestmark = pytest.mark.unit

PAGE = redo.PAGE_SIZE_BYTES
U64_MAX = 2**64 - 1

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ---------------------------------------------------------------------------


def raw_record(
    lsn: int = 10,
    prev_volume: int = 9,
    prev_pg: int = 8,
    prev_page: int = 7,
    page: int = 3,
    kind: int = redo.Kind.DELTA,
    flags: int = 0,
    commit_time_us: int = 0,
    payload: bytes = b"",
    payload_len: int | None = None,
) -> bytes:
    """An encoding with a valid CRC32C over whatever the fields say, right or wrong."""
    body = redo.HEADER.pack(
        0,
        lsn,
        prev_volume,
        prev_pg,
        prev_page,
        page,
        kind,
        flags,
        commit_time_us,
        len(payload) if payload_len is None else payload_len,
    )[redo.CRC.size :] + bytes(payload)
    return redo.CRC.pack(crc32c(body)) + body


def reseal(data: bytes) -> bytes:
    """`data` with its CRC32C recomputed, so only the other checks can reject it."""
    body = data[redo.CRC.size :]
    return redo.CRC.pack(crc32c(body)) + body


def delta_record(ranges: list[tuple[int, bytes]], lsn: int = 10) -> bytes:
    return raw_record(lsn=lsn, payload=redo.delta_payload(ranges))


def rejects(data: bytes, reason: str, error: type[BorealisError] = InvalidRequest) -> None:
    with pytest.raises(error) as raised:
        redo.check(data, error)
    assert reason in raised.value.message


def reference_apply(image: bytearray, kind: redo.Kind, payload: bytes, ranges) -> None:
    """Straightforward byte-range overwrites, independent of redo.iter_ranges."""
    if kind == redo.Kind.IMAGE:
        assert len(payload) == PAGE
        image[:] = payload
        return
    for offset, data in ranges:
        for index, byte in enumerate(data):
            image[offset + index] = byte


# --- strategies ------------------------------------------------------------------------


@st.composite
def delta_ranges(draw, ranges_max: int = 12) -> list[tuple[int, bytes]]:
    """Ascending, disjoint, non-empty ranges inside the page (adjacent ones allowed)."""
    ranges: list[tuple[int, bytes]] = []
    position = 0
    for _ in range(draw(st.integers(0, ranges_max))):
        gap = draw(st.one_of(st.just(0), st.integers(0, 64), st.integers(0, PAGE)))
        offset = position + gap
        if offset >= PAGE:
            break
        length = draw(st.integers(1, min(PAGE - offset, 300)))
        data = draw(st.binary(min_size=length, max_size=length))
        ranges.append((offset, data))
        position = offset + length
    return ranges


# Whole pages: zeros, a seeded random page (small to draw and shrink), or raw bytes.
pages = st.one_of(
    st.just(redo.ZERO_PAGE),
    st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(PAGE)),
    st.binary(min_size=PAGE, max_size=PAGE),
)


@st.composite
def records(draw, kinds=(redo.Kind.DELTA, redo.Kind.IMAGE, redo.Kind.SIZE)):
    lsn = draw(st.integers(1, U64_MAX))
    backlink = st.one_of(st.just(0), st.just(lsn - 1), st.integers(0, lsn - 1))
    kind = draw(st.sampled_from(kinds))
    ranges: list[tuple[int, bytes]] = []
    if kind == redo.Kind.DELTA:
        ranges = draw(delta_ranges())
        payload = redo.delta_payload(ranges)
    elif kind == redo.Kind.IMAGE:
        payload = draw(pages)
    else:
        payload = b""
    record = redo.RedoRecord(
        lsn=Lsn(lsn),
        prev_lsn_volume=Lsn(draw(backlink)),
        prev_lsn_pg=Lsn(draw(backlink)),
        prev_lsn_page=Lsn(draw(backlink)),
        page=draw(st.integers(0, U64_MAX)),
        kind=kind,
        payload=payload,
        cpl=draw(st.booleans()),
        commit_time_us=draw(st.integers(0, U64_MAX)),
    )
    return record, ranges


# --- encode / decode -------------------------------------------------------------------


@SETTINGS
@given(records())
def test_encode_decode_round_trip(generated) -> None:
    record, ranges = generated
    data = redo.encode(record)
    assert len(data) == redo.HEADER_BYTES + len(record.payload)
    header = redo.check(data)
    assert header[1] == record.lsn
    decoded = redo.decode(data)
    assert decoded == record
    # `deltas` is excluded from equality; compare it on its own.
    assert [(offset, bytes(chunk)) for offset, chunk in decoded.deltas] == ranges
    if record.kind == redo.Kind.DELTA:
        assert [(offset, bytes(chunk)) for offset, chunk in redo.iter_ranges(data)] == ranges
    assert redo.encode(decoded) == data


def test_encode_sets_the_cpl_flag_and_kind_byte() -> None:
    record = redo.RedoRecord(Lsn(5), Lsn(4), Lsn(3), Lsn(2), 1, redo.Kind.SIZE, cpl=True)
    data = redo.encode(record)
    assert data[redo.KIND_OFFSET] == redo.Kind.SIZE
    assert data[redo.KIND_OFFSET + 1] == redo.FLAG_CPL
    assert redo.decode(data).cpl is True
    plain = redo.encode(dataclasses.replace(record, cpl=False))
    assert plain[redo.KIND_OFFSET + 1] == 0
    assert redo.decode(plain).cpl is False


# --- CRC32C ----------------------------------------------------------------------------


@SETTINGS
@given(records(), st.data())
def test_any_single_flipped_bit_is_rejected(generated, data) -> None:
    record, _ = generated
    encoded = redo.encode(record)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1), label="bit")
    flipped = bytearray(encoded)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidRequest):
        redo.check(bytes(flipped))
    with pytest.raises(Corruption):
        redo.check(bytes(flipped), Corruption)
    with pytest.raises(Corruption):
        redo.decode(bytes(flipped), Corruption)


def test_every_single_bit_flip_of_a_small_record_is_rejected() -> None:
    encoded = delta_record([(0, b"ab"), (100, b"xyz"), (4090, b"123456")])
    redo.check(encoded)
    for bit in range(len(encoded) * 8):
        flipped = bytearray(encoded)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(Corruption):
            redo.check(bytes(flipped), Corruption)


def test_crc_mismatch_is_reported_as_such() -> None:
    encoded = bytearray(delta_record([(0, b"ab")]))
    encoded[-1] ^= 0xFF
    rejects(bytes(encoded), "CRC32C mismatch")
    rejects(bytes(encoded), "CRC32C mismatch", Corruption)


# --- check: structural rejections ------------------------------------------------------


def test_check_accepts_well_formed_records_of_every_kind() -> None:
    redo.check(delta_record([(0, b"a"), (1, b"b"), (4095, b"z")]))  # adjacent ranges are fine
    redo.check(delta_record([]))
    redo.check(raw_record(kind=redo.Kind.IMAGE, payload=bytes(PAGE)))
    redo.check(raw_record(kind=redo.Kind.SIZE, flags=redo.FLAG_CPL, commit_time_us=12))
    redo.check(raw_record(lsn=1, prev_volume=0, prev_pg=0, prev_page=0))


@pytest.mark.parametrize("keep", [0, 1, redo.HEADER_BYTES - 1])
def test_check_rejects_a_record_shorter_than_its_header(keep: int) -> None:
    encoded = delta_record([(0, b"abc")])
    rejects(encoded[:keep], "shorter than its header")
    rejects(encoded[:keep], "shorter than its header", Corruption)


def test_check_rejects_a_truncated_record() -> None:
    encoded = delta_record([(0, b"abc"), (10, b"defg")])
    for keep in range(redo.HEADER_BYTES, len(encoded)):
        with pytest.raises(InvalidRequest):
            redo.check(encoded[:keep])
        # Even with a CRC that matches the shorter bytes, the length gives it away.
        rejects(reseal(encoded[:keep]), "length does not match")


@pytest.mark.parametrize("payload_len", [0, 5, 7, 2**32 - 1])
def test_check_rejects_a_wrong_payload_length(payload_len: int) -> None:
    payload = redo.delta_payload([(0, b"ab")])  # 6 bytes
    rejects(raw_record(payload=payload, payload_len=payload_len), "length does not match")


def test_check_rejects_trailing_bytes() -> None:
    rejects(reseal(delta_record([(0, b"ab")]) + b"\x00"), "length does not match")


@pytest.mark.parametrize("field", ["prev_volume", "prev_pg", "prev_page"])
@pytest.mark.parametrize("delta", [0, 1, 1000])
def test_check_rejects_backlinks_at_or_above_the_lsn(field: str, delta: int) -> None:
    rejects(raw_record(lsn=10, **{field: 10 + delta}), "backlinks must point below")


def test_check_rejects_lsn_zero() -> None:
    rejects(raw_record(lsn=0, prev_volume=0, prev_pg=0, prev_page=0), "backlinks")


@pytest.mark.parametrize("kind", [3, 4, 0x7F, 0xFF])
def test_check_rejects_an_unknown_kind(kind: int) -> None:
    rejects(raw_record(kind=kind), "unknown kind")


@pytest.mark.parametrize("flags", [0x02, 0x04, 0x80, 0xFF, redo.FLAG_CPL | 0x10])
def test_check_rejects_unknown_flags(flags: int) -> None:
    rejects(raw_record(flags=flags), "unknown flags")


@pytest.mark.parametrize("length", [0, 1, PAGE - 1, PAGE + 1, 2 * PAGE, 8192])
def test_check_rejects_an_image_of_the_wrong_page_size(length: int) -> None:
    rejects(raw_record(kind=redo.Kind.IMAGE, payload=bytes(length)), "wrong page size")


def test_check_rejects_a_size_record_with_a_payload() -> None:
    rejects(raw_record(kind=redo.Kind.SIZE, payload=b"x"), "size record carries a payload")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # Overlapping: the second starts inside the first.
        (redo.delta_payload([(0, b"abcd"), (2, b"xy")]), "out of order"),
        # Same offset twice.
        (redo.delta_payload([(5, b"a"), (5, b"b")]), "out of order"),
        # Descending offsets.
        (redo.delta_payload([(100, b"x"), (50, b"y")]), "out of order"),
        # Past the page end.
        (redo.delta_payload([(PAGE - 1, b"ab")]), "outside the page"),
        (redo.delta_payload([(PAGE, b"a")]), "outside the page"),
        (redo.delta_payload([(65535, b"a")]), "outside the page"),
        # Zero length ranges, alone or after a good one.
        (struct.pack("<HH", 10, 0), "outside the page"),
        (redo.delta_payload([(0, b"a")]) + struct.pack("<HH", 10, 0), "outside the page"),
        # A range header cut short.
        (b"\x00", "range header truncated"),
        (b"\x00\x00\x01", "range header truncated"),
        (redo.delta_payload([(0, b"a")]) + b"\x05\x00", "range header truncated"),
        # A range whose bytes run past the record.
        (struct.pack("<HH", 0, 10) + b"12345", "runs past the record"),
        (redo.delta_payload([(0, b"a")]) + struct.pack("<HH", 8, 3) + b"x", "runs past"),
    ],
)
def test_check_rejects_bad_delta_ranges(payload: bytes, reason: str) -> None:
    rejects(raw_record(payload=payload), reason)
    rejects(raw_record(payload=payload), reason, Corruption)


@SETTINGS
@given(delta_ranges(), st.data())
def test_check_accepts_every_generated_delta_and_rejects_a_cut_one(ranges, data) -> None:
    payload = redo.delta_payload(ranges)
    redo.check(raw_record(payload=payload))
    if ranges:
        # Cut inside the last range (its header or its bytes), never on a range boundary.
        cut = data.draw(st.integers(1, redo.RANGE_BYTES + len(ranges[-1][1]) - 1), label="cut")
        with pytest.raises(InvalidRequest):
            redo.check(raw_record(payload=payload[:-cut]))


# --- diff and apply --------------------------------------------------------------------


@st.composite
def page_pairs(draw) -> tuple[bytes, bytes]:
    """An old page and a new one: random writes onto it, or an unrelated page."""
    old = draw(pages)
    if draw(st.integers(0, 9)) == 0:
        return old, draw(pages)
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 8))):
        offset = draw(st.integers(0, PAGE - 1))
        data = draw(st.binary(min_size=1, max_size=min(200, PAGE - offset)))
        new[offset : offset + len(data)] = data
    return old, bytes(new)


@SETTINGS
@given(page_pairs(), st.integers(0, 32))
def test_diff_then_apply_turns_old_into_new(pair, gap_bytes_max: int) -> None:
    old, new = pair
    ranges = redo.diff(old, new, gap_bytes_max)
    encoded = delta_record(ranges)
    redo.check(encoded)  # diff only produces ranges the checks accept
    image = bytearray(old)
    redo.apply(image, encoded)
    assert bytes(image) == new
    assert redo.materialise(old, [encoded]) == new
    covered = bytearray(PAGE)
    previous_end = None
    for offset, chunk in ranges:
        # Ranges start and end on a changed byte, and gaps are wider than the limit.
        assert old[offset] != new[offset]
        assert old[offset + len(chunk) - 1] != new[offset + len(chunk) - 1]
        if previous_end is not None:
            assert offset - previous_end >= gap_bytes_max
        previous_end = offset + len(chunk)
        covered[offset : offset + len(chunk)] = b"\x01" * len(chunk)
    assert all(old[i] == new[i] for i in range(PAGE) if not covered[i])


def test_diff_of_equal_pages_is_empty_and_single_byte_changes_are_found() -> None:
    assert redo.diff(redo.ZERO_PAGE, redo.ZERO_PAGE) == []
    new = bytearray(PAGE)
    new[0] = 1
    new[PAGE - 1] = 2
    assert redo.diff(redo.ZERO_PAGE, bytes(new)) == [(0, b"\x01"), (PAGE - 1, b"\x02")]
    new[5] = 3  # within the gap of byte 0: one range 0..5
    assert redo.diff(redo.ZERO_PAGE, bytes(new), gap_bytes_max=8)[0] == (0, bytes(new[0:6]))
    assert redo.diff(redo.ZERO_PAGE, bytes(new), gap_bytes_max=0)[:2] == [
        (0, b"\x01"),
        (5, b"\x03"),
    ]


def test_apply_an_image_replaces_the_whole_page() -> None:
    image = bytearray(b"\x07" * PAGE)
    new = bytes(range(256)) * (PAGE // 256)
    redo.apply(image, raw_record(kind=redo.Kind.IMAGE, payload=new))
    assert bytes(image) == new


# --- materialise -----------------------------------------------------------------------


@st.composite
def record_sequences(draw):
    """Encoded DELTA/IMAGE records of one page, LSN ascending, with their raw contents."""
    count = draw(st.integers(0, 12))
    sequence = []
    for index in range(count):
        lsn = 100 + index
        if draw(st.integers(0, 4)) == 0:
            payload = draw(pages)
            sequence.append(
                (
                    raw_record(lsn=lsn, kind=redo.Kind.IMAGE, payload=payload),
                    redo.Kind.IMAGE,
                    payload,
                    [],
                )
            )
        else:
            ranges = draw(delta_ranges(ranges_max=6))
            sequence.append((delta_record(ranges, lsn=lsn), redo.Kind.DELTA, b"", ranges))
    return sequence


@SETTINGS
@given(st.one_of(st.none(), pages), record_sequences())
def test_materialise_equals_applying_the_ranges_in_order(base, sequence) -> None:
    expected = bytearray(base if base is not None else bytes(PAGE))
    for _, kind, payload, ranges in sequence:
        reference_apply(expected, kind, payload, ranges)
    result = redo.materialise(base, [encoded for encoded, *_ in sequence])
    assert len(result) == PAGE
    assert result == bytes(expected)
    if base is not None:
        assert redo.materialise(base, []) == base
    else:
        assert redo.materialise(None, []) == redo.ZERO_PAGE


def test_materialise_an_image_in_the_middle_resets_the_page() -> None:
    base = b"\x11" * PAGE
    image = b"\x22" * PAGE
    records_in_order = [
        delta_record([(0, b"AAAA"), (4000, b"BB")], lsn=1),
        raw_record(lsn=2, kind=redo.Kind.IMAGE, payload=image),
        delta_record([(2, b"CC")], lsn=3),
    ]
    result = redo.materialise(base, records_in_order)
    assert result == b"\x22\x22CC" + b"\x22" * (PAGE - 4)
    # Before the image, the deltas applied on the base.
    assert redo.materialise(base, records_in_order[:1])[:5] == b"AAAA\x11"
    # With no base, deltas apply to zeros.
    assert redo.materialise(None, [delta_record([(1, b"z")])])[:3] == b"\x00z\x00"
