"""Snapshot and clone pins on a backup (borealis/backup_pins.py), and the clone's
base image cache (storage_node/base_images.py), without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from borealis import backup_format as layout
from borealis import redo
from borealis.backup_pins import (
    CloneRef,
    Snapshot,
    check_name,
    clone_key,
    keep_pinned,
    list_snapshots,
    pinned_lsns,
    snapshot_key,
)
from borealis.encryption import PLAIN, AesGcmSealer
from borealis.errors import Corruption, InvalidRequest
from borealis.object_store import LocalObjectStore
from storage_node.base_images import BaseImageRef, BaseImages, read_ref, write_ref

pytestmark = pytest.mark.unit

VOLUME = "abc-1"
PAGE = b"\x07" * redo.PAGE_SIZE_BYTES


def image_set(base_lsn: int, created_us: int) -> layout.ImageSet:
    return layout.ImageSet(base_lsn, parts=1, pages=1, created_us=created_us, has_records=False)


def test_names_are_checked() -> None:
    assert check_name("before-migration_1.2", "snapshot") == "before-migration_1.2"
    for bad in ("", "a/b", "..", "-x", "x" * 64, "a b"):
        with pytest.raises(InvalidRequest):
            check_name(bad, "snapshot")
    assert snapshot_key(VOLUME, "s1") == "volumes/abc-1/snapshots/s1.json"
    assert clone_key(VOLUME, "c1") == "volumes/abc-1/clones/c1.json"


def test_pinned_lsns_are_every_snapshot_and_clone(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path)
    assert pinned_lsns(objects, VOLUME) == []
    objects.put(snapshot_key(VOLUME, "b"), Snapshot("b", VOLUME, 900, 5, 6).to_json())
    objects.put(snapshot_key(VOLUME, "a"), Snapshot("a", VOLUME, 300, 1, 2).to_json())
    clone = CloneRef("c", VOLUME, "def-1", 500, 3, 4, {0: 200, 1: 0})
    objects.put(clone_key(VOLUME, "c"), clone.to_json())
    objects.put(snapshot_key("other-1", "x"), Snapshot("x", "other-1", 7, 1, 1).to_json())
    assert pinned_lsns(objects, VOLUME) == [300, 500, 900]
    assert [each.name for each in list_snapshots(objects, VOLUME)] == ["a", "b"]
    assert CloneRef.from_json(objects.get(clone_key(VOLUME, "c"))) == clone
    objects.put(snapshot_key(VOLUME, "bad"), b"{not json")
    with pytest.raises(Corruption):
        pinned_lsns(objects, VOLUME)


def test_keep_pinned_lowers_retention_to_the_lowest_pin() -> None:
    sets = {
        0: [image_set(100, 10), image_set(400, 20), image_set(800, 30)],
        1: [image_set(150, 10), image_set(850, 30)],
    }
    keep = {0: 800, 1: 850}
    # No pin: retention's own choice.
    assert keep_pinned(keep, sets, []) == keep
    # A pin at 500: PG 0 restores from 400, PG 1 from 150.
    assert keep_pinned(keep, sets, [900, 500]) == {0: 400, 1: 150}
    # A pin below every set of a PG: that PG keeps everything (base 0).
    assert keep_pinned(keep, sets, [120]) == {0: 100, 1: 0}
    # A pin above what retention keeps changes nothing.
    assert keep_pinned(keep, sets, [5000]) == keep
    # Whatever keep_pinned returns, retention_doomed keeps the pinned set and the log above.
    lowered = keep_pinned(keep, sets, [500])
    keys = [
        layout.image_part_key(VOLUME, 0, 100, 0),
        layout.image_part_key(VOLUME, 0, 400, 0),
        layout.chunk_key(VOLUME, 0, 120, 160),
        layout.chunk_key(VOLUME, 0, 401, 450),
    ]
    doomed = layout.retention_doomed(keys, 0, lowered[0], min(lowered.values()))
    assert doomed == [layout.image_part_key(VOLUME, 0, 100, 0)]


def put_image_set(
    objects: LocalObjectStore, sealer: object, pg: int, base: int, pages: list[int]
) -> None:
    images = [(page, base - 1, PAGE) for page in pages]
    half = len(images) // 2
    for part, chunk in enumerate((images[:half], images[half:])):
        data = layout.encode_images(sealer, 1, pg, base, part, chunk)  # type: ignore[arg-type]
        objects.put(layout.image_part_key(VOLUME, pg, base, part), data)
    done = layout.ImageSet(base, parts=2, pages=len(images), created_us=1, has_records=False)
    objects.put(layout.image_set_done_key(VOLUME, pg, base), done.to_json())


def test_base_images_fetch_once_and_read_by_page(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "store")
    sealer = AesGcmSealer(b"k" * 32)
    put_image_set(objects, sealer, pg=3, base=70, pages=[48, 49, 51, 60])
    ref = BaseImageRef(objects.url, "", VOLUME, 1, {3: 70})
    (tmp_path / "node").mkdir()
    write_ref(tmp_path / "node", ref)
    assert read_ref(tmp_path / "node") == ref
    assert read_ref(tmp_path) is None
    images = BaseImages(ref, objects)
    assert images.image(sealer, 1, 3, 51) == (69, PAGE)
    assert images.image(sealer, 1, 3, 60) == (69, PAGE)
    assert images.image(sealer, 1, 3, 50) is None  # not in the set: a page never written
    assert images.sets_fetched == 1
    # Another volume or a PG without a base is never fetched.
    assert images.image(sealer, 2, 3, 51) is None
    assert images.image(sealer, 1, 4, 51) is None
    assert images.sets_fetched == 1
    # The wrong key does not open the set.
    with pytest.raises(Corruption):
        BaseImages(ref, objects).image(PLAIN, 1, 3, 51)


def test_base_images_cache_is_bounded(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path)
    for pg in range(3):
        put_image_set(objects, PLAIN, pg=pg, base=10, pages=[pg * 16, pg * 16 + 1])
    ref = BaseImageRef(objects.url, "", VOLUME, 1, {0: 10, 1: 10, 2: 10})
    # Room for two images: one PG's set at a time.
    images = BaseImages(ref, objects, cache_bytes_max=2 * len(PAGE))
    for pg in (0, 1, 0, 2):
        assert images.image(PLAIN, 1, pg, pg * 16) is not None
    assert images.sets_fetched == 4
