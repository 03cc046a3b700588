"""Sealing at rest: the AES-256-GCM sealer, the per-volume sealers, and the segment
store's sealed records and images (driven in one thread on a temporary LMDB, as
the writer thread would)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import lmdb
import pytest

from borealis import redo
from borealis.encryption import (
    PLAIN,
    PLAIN_VOLUMES,
    WHAT_IMAGE,
    WHAT_RECORD,
    AesGcmSealer,
    VolumeSealers,
    associated_data,
)
from borealis.errors import Corruption, InvalidRequest, KeyUnavailable
from borealis.ids import Lsn
from storage_node.segment import Member, Segment, SegmentMeta
from storage_node.store import LOG_KEY, VERSION_KEY, IncomingRecord, Publish, SegmentStore

pytestmark = pytest.mark.unit

VOLUME = 7
PG = 0
PAGE_COUNT = 8
MAP_SIZE_BYTES = 2**26


def sealers_with(key: bytes) -> VolumeSealers:
    return VolumeSealers({VOLUME: AesGcmSealer(key)}, None)


# -- the sealers ----------------------------------------------------------------------


def test_aes_gcm_round_trips_and_binds_its_associated_data() -> None:
    sealer = AesGcmSealer(secrets.token_bytes(32))
    associated = associated_data(VOLUME, PG, 42, 3, WHAT_RECORD)
    sealed = sealer.seal(b"plaintext marker", associated)
    assert b"plaintext marker" not in sealed
    assert len(sealed) == len(b"plaintext marker") + sealer.overhead_bytes
    assert sealer.open(sealed, associated) == b"plaintext marker"
    # The same plaintext seals differently every time (a fresh nonce).
    assert sealer.seal(b"plaintext marker", associated) != sealed
    for elsewhere in (
        associated_data(VOLUME, PG, 43, 3, WHAT_RECORD),
        associated_data(VOLUME + 1, PG, 42, 3, WHAT_RECORD),
        associated_data(VOLUME, PG, 42, 3, WHAT_IMAGE),
    ):
        with pytest.raises(Corruption):
            sealer.open(sealed, elsewhere)


@pytest.mark.parametrize("position", [0, 12, 20, -1])
def test_aes_gcm_detects_a_flipped_bit_anywhere(position: int) -> None:
    sealer = AesGcmSealer(secrets.token_bytes(32))
    associated = associated_data(VOLUME, PG, 1, 0, WHAT_IMAGE)
    sealed = bytearray(sealer.seal(bytes(64), associated))
    sealed[position] ^= 0x01
    with pytest.raises(Corruption, match="failed authentication"):
        sealer.open(bytes(sealed), associated)


def test_aes_gcm_refuses_short_values_other_keys_and_bad_key_lengths() -> None:
    sealer = AesGcmSealer(secrets.token_bytes(32))
    with pytest.raises(Corruption, match="too short"):
        sealer.open(b"\x00" * 27, b"")
    with pytest.raises(Corruption):
        AesGcmSealer(secrets.token_bytes(32)).open(sealer.seal(b"x", b""), b"")
    with pytest.raises(ValueError, match="32 bytes"):
        AesGcmSealer(secrets.token_bytes(16))


def test_plain_sealer_is_the_identity() -> None:
    assert not PLAIN.encrypted and PLAIN.overhead_bytes == 0
    assert PLAIN.seal(b"abc", b"ad") == b"abc" == PLAIN.open(b"abc", b"other")


def test_volume_sealers_use_the_volume_key_then_the_default_else_refuse() -> None:
    own, default = AesGcmSealer(bytes(32)), AesGcmSealer(bytes(range(32)))
    sealers = VolumeSealers({1: own}, default)
    assert sealers.encrypted
    assert sealers.of(1) is own and sealers.of(2) is default
    strict = VolumeSealers({1: own}, None)
    with pytest.raises(InvalidRequest, match="no data key"):
        strict.of(2)
    assert not PLAIN_VOLUMES.encrypted and PLAIN_VOLUMES.of(99) is PLAIN


# -- the segment store ------------------------------------------------------------------


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> Iterator[SegmentStore]:
    segment_store = SegmentStore(tmp_path / "segments", MAP_SIZE_BYTES, sealers_with(key))
    try:
        yield segment_store
    finally:
        segment_store.close()


def run_op(store: SegmentStore, operation: Callable[[lmdb.Transaction], Publish]) -> object:
    with store.env.begin(write=True) as txn:
        publish = operation(txn)
    return publish()


def new_segment(store: SegmentStore) -> Segment:
    meta = SegmentMeta(
        volume_id=VOLUME,
        pg=PG,
        first_page=0,
        page_count=PAGE_COUNT,
        volume_epoch=1,
        membership_epoch=1,
        members=[Member("s1", "127.0.0.1:1", "az-a")],
    )
    segment = run_op(store, partial(store.op_create, meta=meta))
    assert isinstance(segment, Segment)
    return segment


def image_record(lsn: int, prev_lsn_pg: int, page: int, image: bytes) -> bytes:
    return redo.encode(
        redo.RedoRecord(
            lsn=Lsn(lsn),
            prev_lsn_volume=Lsn(lsn - 1),
            prev_lsn_pg=Lsn(prev_lsn_pg),
            prev_lsn_page=Lsn(0),
            page=page,
            kind=redo.Kind.IMAGE,
            payload=image,
            cpl=True,
        )
    )


def incoming(records: list[bytes]) -> list[IncomingRecord]:
    checked = []
    for data in records:
        _, lsn, _, prev_lsn_pg, _, page, kind, _, _, _ = redo.check(data)
        checked.append((lsn, prev_lsn_pg, page, kind, data))
    return checked


def marked_image(marker: bytes) -> bytes:
    return marker + bytes(redo.PAGE_SIZE_BYTES - len(marker))


def stored_value(store: SegmentStore, db: object, key: bytes) -> bytes:
    with store.env.begin() as txn:
        value = txn.get(key, db=db)
    assert value is not None
    return bytes(value)


def flip(store: SegmentStore, db: object, key: bytes, offset: int) -> None:
    value = bytearray(stored_value(store, db, key))
    value[offset] ^= 0x04
    with store.env.begin(write=True) as txn:
        txn.put(key, bytes(value), db=db)


def delta_record(lsn: int, prev_lsn_pg: int, page: int, prev_lsn_page: int) -> bytes:
    return redo.encode(
        redo.RedoRecord(
            lsn=Lsn(lsn),
            prev_lsn_volume=Lsn(lsn - 1),
            prev_lsn_pg=Lsn(prev_lsn_pg),
            prev_lsn_page=Lsn(prev_lsn_page),
            page=page,
            kind=redo.Kind.DELTA,
            payload=redo.delta_payload([(1000, b"changed")]),
            cpl=True,
        )
    )


def test_records_and_images_are_sealed_on_disk_and_read_back_in_the_clear(
    store: SegmentStore, tmp_path: Path
) -> None:
    marker = secrets.token_hex(16).encode()
    segment = new_segment(store)
    records = [image_record(1, 0, 2, marked_image(marker)), delta_record(2, 1, 2, 1)]
    run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
    image, page_lsn = store.read_page(segment, 2, 2)
    assert image[: len(marker)] == marker and image[1000:1007] == b"changed" and page_lsn == 2
    # What the coalescer does: the delta version becomes a materialised image.
    assert run_op(store, partial(store.op_put_image, segment=segment, page=2, lsn=2, image=image))

    assert store.read_records(segment, 0, 10, 2**20) == (records, False)
    assert store.read_page(segment, 2, 2) == (image, 2)
    assert segment.meta.record_bytes == sum(map(len, records))
    assert marker not in (tmp_path / "segments" / "data.mdb").read_bytes()
    sealed_record = stored_value(store, store.log_db, LOG_KEY.pack(VOLUME, PG, 1))
    assert len(sealed_record) == len(records[0]) + AesGcmSealer.overhead_bytes
    assert store.sealer_of(VOLUME).encrypted


def test_without_encryption_the_marker_is_on_disk(tmp_path: Path) -> None:
    """The scan above can find a marker: stored in the clear, it is there."""
    marker = secrets.token_hex(16).encode()
    store = SegmentStore(tmp_path / "segments", MAP_SIZE_BYTES)
    try:
        segment = new_segment(store)
        records = [image_record(1, 0, 2, marked_image(marker))]
        run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
        assert store.read_page(segment, 2, 1) == (marked_image(marker), 1)
    finally:
        store.close()
    assert marker in (tmp_path / "segments" / "data.mdb").read_bytes()


def test_a_flipped_bit_in_a_sealed_record_is_corruption_on_read_and_scrub(
    store: SegmentStore,
) -> None:
    segment = new_segment(store)
    records = [image_record(1, 0, 2, marked_image(b"a")), image_record(2, 1, 3, bytes(4096))]
    run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
    flip(store, store.log_db, LOG_KEY.pack(VOLUME, PG, 2), 40)

    with pytest.raises(Corruption, match="failed authentication"):
        store.read_page(segment, 3, 2)
    with pytest.raises(Corruption):
        store.read_records(segment, 1, 2, 2**20)
    assert store.read_page(segment, 2, 2) == (marked_image(b"a"), 1)
    bad, resume = store.scan(segment, b"", 100)
    assert bad == [("log", LOG_KEY.pack(VOLUME, PG, 2))] and resume is None

    # The scrubber's repair: a peer's checked copy, sealed again.
    run_op(store, partial(store.op_replace_record, segment=segment, data=records[1]))
    assert store.read_page(segment, 3, 2) == (bytes(4096), 2)
    assert store.scan(segment, b"", 100) == ([], None)


def test_a_flipped_bit_in_a_sealed_image_is_corruption(store: SegmentStore) -> None:
    segment = new_segment(store)
    records = [image_record(1, 0, 2, marked_image(b"m")), delta_record(2, 1, 2, 1)]
    run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
    image, _ = store.read_page(segment, 2, 2)
    assert run_op(store, partial(store.op_put_image, segment=segment, page=2, lsn=2, image=image))
    key = VERSION_KEY.pack(VOLUME, PG, 2, 2)
    assert stored_value(store, store.versions_db, key)[:1] == b"M"

    flip(store, store.versions_db, key, 1 + 12 + 500)
    with pytest.raises(Corruption, match="page image failed authentication"):
        store.read_page(segment, 2, 2)
    assert store.scan(segment, b"", 100)[0] == [("image", key)]
    # The scrubber's repair: a peer's image, sealed again.
    assert run_op(store, partial(store.op_put_image, segment=segment, page=2, lsn=2, image=image))
    assert store.read_page(segment, 2, 2) == (image, 2)


def test_garbage_collection_keeps_the_plaintext_byte_count(store: SegmentStore) -> None:
    segment = new_segment(store)
    records = [image_record(1, 0, 2, bytes(4096)), image_record(2, 1, 2, bytes(4096))]
    run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
    assert run_op(store, partial(store.op_delete_versions, segment=segment, versions=[(2, 1)]))
    assert (segment.meta.records, segment.meta.record_bytes) == (1, len(records[1]))


def test_truncation_deletes_sealed_records_and_their_versions(store: SegmentStore) -> None:
    segment = new_segment(store)
    records = [image_record(lsn, lsn - 1, lsn % 4, bytes(4096)) for lsn in range(1, 6)]
    run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
    flip(store, store.log_db, LOG_KEY.pack(VOLUME, PG, 5), 30)
    assert run_op(
        store, partial(store.op_set_epoch, segment=segment, volume_epoch=2, truncate=(3, 9))
    )
    assert (segment.scl, segment.meta.records) == (3, 3)
    assert segment.meta.record_bytes == sum(map(len, records[:3]))
    pages = {versions.page: versions.lsns for versions in store.page_versions(segment)}
    assert pages == {1: [1], 2: [2], 3: [3]}


def reopen(path: Path, sealers: VolumeSealers) -> SegmentStore:
    reopened = SegmentStore(path / "segments", MAP_SIZE_BYTES, sealers)
    try:
        reopened.verify_keys()
        reopened.load()
    except BaseException:
        reopened.close()
        raise
    return reopened


def test_a_store_opens_only_with_the_key_that_sealed_it(tmp_path: Path, key: bytes) -> None:
    first = SegmentStore(tmp_path / "segments", MAP_SIZE_BYTES, sealers_with(key))
    segment = new_segment(first)
    run_op(
        first,
        partial(
            first.op_append, segment=segment, records=incoming([image_record(1, 0, 2, bytes(4096))])
        ),
    )
    first.close()

    with pytest.raises(KeyUnavailable, match="wrong key"):
        reopen(tmp_path, sealers_with(secrets.token_bytes(32)))
    with pytest.raises(KeyUnavailable, match="no KMS is configured"):
        reopen(tmp_path, PLAIN_VOLUMES)
    with pytest.raises(KeyUnavailable, match="no data key"):
        reopen(tmp_path, VolumeSealers({VOLUME + 1: AesGcmSealer(key)}, None))
    again = reopen(tmp_path, sealers_with(key))
    try:
        assert again.segment(segment.id).scl == 1
    finally:
        again.close()


def test_a_plain_store_refuses_a_key(tmp_path: Path, key: bytes) -> None:
    first = SegmentStore(tmp_path / "segments", MAP_SIZE_BYTES)
    new_segment(first)
    first.close()
    with pytest.raises(KeyUnavailable, match="stored in the clear"):
        reopen(tmp_path, sealers_with(key))
    reopen(tmp_path, PLAIN_VOLUMES).close()


def test_a_volume_without_a_key_is_refused_not_stored_in_the_clear(tmp_path: Path) -> None:
    store = SegmentStore(
        tmp_path / "segments",
        MAP_SIZE_BYTES,
        VolumeSealers({VOLUME + 1: AesGcmSealer(bytes(32))}, None),
    )
    try:
        with pytest.raises(InvalidRequest, match="no data key"):
            new_segment(store)
        assert store.sealer_of(VOLUME + 1).encrypted
    finally:
        store.close()
