"""borealis/backup_format.py: object encodings, the restorable point, the commit-time
index and retention."""

from __future__ import annotations

import os

import pytest

from borealis import backup_format as layout
from borealis import redo
from borealis.encryption import PLAIN, AesGcmSealer
from borealis.errors import Corruption, InvalidRequest
from borealis.ids import Lsn

pytestmark = pytest.mark.unit

VOLUME = 7


def record(
    lsn: int, prev_volume: int, prev_pg: int, cpl: bool = False, commit_time_us: int = 0
) -> bytes:
    return redo.encode(
        redo.RedoRecord(
            lsn=Lsn(lsn),
            prev_lsn_volume=Lsn(prev_volume),
            prev_lsn_pg=Lsn(prev_pg),
            prev_lsn_page=Lsn(0),
            page=3,
            kind=redo.Kind.DELTA,
            payload=redo.delta_payload([(10, b"marker-%d" % lsn)]),
            cpl=cpl,
            commit_time_us=commit_time_us if cpl else 0,
        )
    )


def test_chunk_round_trip_plain_and_sealed() -> None:
    records = [record(5, 4, 3), record(6, 5, 5, cpl=True, commit_time_us=1234)]
    for sealer in (PLAIN, AesGcmSealer(os.urandom(32))):
        data = layout.encode_chunk(sealer, VOLUME, 2, records)
        assert layout.decode_chunk(sealer, data) == (VOLUME, 2, records)
    # Sealed: the payload is not in the object.
    assert b"marker-5" not in layout.encode_chunk(AesGcmSealer(os.urandom(32)), VOLUME, 2, records)
    assert b"marker-5" in layout.encode_chunk(PLAIN, VOLUME, 2, records)


def test_chunk_tampering_is_detected() -> None:
    sealer = AesGcmSealer(os.urandom(32))
    data = bytearray(layout.encode_chunk(sealer, VOLUME, 2, [record(5, 4, 3)]))
    data[-3] ^= 0x01
    with pytest.raises(Corruption):
        layout.decode_chunk(sealer, bytes(data))
    # A chunk presented as another PG's (its header changed) fails to open too.
    moved = bytearray(layout.encode_chunk(sealer, VOLUME, 2, [record(5, 4, 3)]))
    moved[4 + 8 + 3] = 9
    with pytest.raises(Corruption):
        layout.decode_chunk(sealer, bytes(moved))
    # Plain chunks still have each record's CRC.
    plain = bytearray(layout.encode_chunk(PLAIN, VOLUME, 2, [record(5, 4, 3)]))
    plain[-2] ^= 0x01
    with pytest.raises(Corruption):
        layout.decode_chunk(PLAIN, bytes(plain))
    with pytest.raises(Corruption):
        layout.decode_chunk(PLAIN, b"nonsense")


def test_index_round_trip_and_crc() -> None:
    records = [record(5, 4, 3), record(6, 5, 5, cpl=True, commit_time_us=99)]
    data = layout.encode_index(VOLUME, 1, records)
    volume, pg, entries = layout.decode_index(data)
    assert (volume, pg) == (VOLUME, 1)
    assert entries == [
        layout.IndexEntry(5, 4, 3, 0, False),
        layout.IndexEntry(6, 5, 5, 99, True),
    ]
    broken = bytearray(data)
    broken[40] ^= 0xFF
    with pytest.raises(Corruption):
        layout.decode_index(bytes(broken))


def test_images_round_trip_and_base_bound() -> None:
    sealer = AesGcmSealer(os.urandom(32))
    images = [(4, 10, b"a" * redo.PAGE_SIZE_BYTES), (5, 12, b"b" * redo.PAGE_SIZE_BYTES)]
    data = layout.encode_images(sealer, VOLUME, 0, 12, 3, images)
    assert layout.decode_images(sealer, data) == images
    too_new = layout.encode_images(PLAIN, VOLUME, 0, 11, 0, images)
    with pytest.raises(Corruption):
        layout.decode_images(PLAIN, too_new)


def test_keys_sort_numerically_and_parse_back() -> None:
    name = layout.volume_name("ab12", VOLUME)
    keys = [layout.chunk_key(name, 1, first, first + 5) for first in (100, 9, 1000)]
    assert sorted(keys) == [keys[1], keys[0], keys[2]]
    assert layout.parse_range_key(keys[0]) == (100, 105)
    assert layout.parse_pg(keys[0]) == 1
    assert layout.parse_image_base(layout.image_part_key(name, 2, 77, 0)) == 77
    with pytest.raises(InvalidRequest):
        layout.volume_name("../x", 1)


def history_of(*pg_records: tuple[int, list[bytes]]) -> layout.VolumeHistory:
    history = layout.VolumeHistory()
    for pg, records in pg_records:
        history.add_index(pg, [layout.index_entry(each) for each in records])
    return history


# A volume of two PGs: LSNs 1..6, CPLs at 2 (t=20), 4 (t=40), 6 (t=60).
PG0 = [record(1, 0, 0), record(3, 2, 1), record(5, 4, 3)]
PG1 = [
    record(2, 1, 0, cpl=True, commit_time_us=20),
    record(4, 3, 2, cpl=True, commit_time_us=40),
    record(6, 5, 4, cpl=True, commit_time_us=60),
]


def test_restorable_lsn_is_the_last_cpl_of_the_unbroken_chain() -> None:
    history = history_of((0, PG0), (1, PG1))
    assert layout.restorable_lsn(history) == (6, 60)
    assert layout.restorable(history, 2) and layout.restorable(history, 6)
    # PG 0's uploader has not uploaded LSN 5 yet: 6 links to a missing record.
    behind = history_of((0, PG0[:2]), (1, PG1))
    assert layout.restorable_lsn(behind) == (4, 40)
    assert not layout.restorable(behind, 6)
    # Duplicates (an uploader that took over) change nothing.
    duplicated = history_of((0, PG0), (1, PG1), (1, PG1[1:]))
    assert layout.restorable_lsn(duplicated) == (6, 60)
    # Nothing restorable while the first CPL's history is incomplete.
    assert layout.restorable_lsn(history_of((1, PG1))) == (0, 0)


def test_time_to_lsn() -> None:
    history = history_of((0, PG0), (1, PG1))
    assert layout.lsn_at_time(history, 45, 6) == 4
    assert layout.lsn_at_time(history, 40, 6) == 4  # at or before
    assert layout.lsn_at_time(history, 19, 6) == 0
    assert layout.lsn_at_time(history, 100, 4) == 4  # never past the restorable point


def test_history_starting_at_image_sets() -> None:
    # PG 0's backup began from an image set at 3 (its segment no longer held its
    # first records, e.g. a restored cluster): its history starts there.
    history = history_of((0, PG0[2:]), (1, PG1))
    assert layout.log_starts(history)[0] == layout.NEVER  # no image set yet
    assert layout.restorable_lsn(history) == (0, 0)
    history.add_image_set(0, 3)
    assert layout.log_starts(history) == {0: 3, 1: 0}
    # From the floor 3 up, the chain is whole: 4 links to 3, 5 to 4, 6 to 5.
    assert layout.restorable_lsn(history) == (6, 60)
    assert not layout.restorable(history, 2)  # PG 0's history starts at 3
    assert layout.bases_for(history, 6) == {0: 3, 1: 0}
    assert layout.bases_for(history, 2) == {0: 0, 1: 0}
    history.add_image_set(1, 4)
    assert layout.bases_for(history, 6) == {0: 3, 1: 4}


def test_a_commit_at_an_image_set_base_stays_restorable() -> None:
    # An idle volume's newest commit becomes the base of the next image set; the
    # latest restorable point must not go back below it.
    history = history_of((0, PG0), (1, PG1))
    history.add_image_set(1, 6)
    assert layout.restorable(history, 6)
    assert layout.restorable_lsn(history) == (6, 60)
    history.add_image_set(0, 6)
    assert layout.restorable_lsn(history) == (6, 60)


def test_a_gap_in_a_pgs_log_is_bridged_by_a_later_image_set() -> None:
    # PG 0 lacks LSN 3 (an uploader took over from a segment that hydrated past it),
    # then uploaded an image set at 5 and went on: restorable again above 5.
    pg0 = [record(1, 0, 0), record(5, 4, 3), record(7, 6, 5)]
    pg1 = [*PG1, record(8, 7, 6, cpl=True, commit_time_us=80)]
    history = history_of((0, pg0), (1, pg1))
    assert layout.restorable_lsn(history) == (2, 20)
    history.add_image_set(0, 5)
    assert layout.restorable_lsn(history) == (8, 80)
    assert layout.restorable(history, 6) and not layout.restorable(history, 4)


def test_retention_keeps_what_a_restore_at_the_window_start_needs() -> None:
    sets = {
        0: [layout.ImageSet(10, 1, 1, 100, True), layout.ImageSet(50, 1, 1, 200, True)],
        1: [layout.ImageSet(20, 1, 1, 300, True)],
    }
    keep = layout.retention_keep(sets, window_start_us=250)
    assert keep == {0: 50}  # PG 1 has no set old enough: nothing of it may go
    name = "c-1"
    keys = [
        layout.image_part_key(name, 0, 10, 0),
        layout.image_set_done_key(name, 0, 10),
        layout.image_part_key(name, 0, 50, 0),
        layout.chunk_key(name, 0, 1, 9),
        layout.index_key(name, 0, 1, 9),
        layout.chunk_key(name, 0, 10, 60),
    ]
    doomed = layout.retention_doomed(keys, 0, keep_base_lsn=50, volume_floor_lsn=20)
    assert sorted(doomed) == sorted(keys[:2] + keys[3:5])
