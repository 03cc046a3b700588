"""borealis/redo.py's fast diff against the straightforward per-byte loop it replaced.

The fast diff compares chunks, then XORs runs of differing chunks as integers; these
tests pin it to the reference semantics byte for byte, on random pages, on changes
around the chunk boundaries, and on real before/after pages of SQLite B-trees.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from borealis import redo
from borealis.redo import DIFF_CHUNK_BYTES, PAGE_SIZE_BYTES
from compute_node.engine import LockingMode, VolumeFile, VolumeVFS, open_connection
from compute_node.engine.memory import MemoryPageSource
from tests.support.reference_diff import reference_diff

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Offsets that stress the chunking: chunk edges and their neighbours.
EDGES = sorted(
    {
        offset
        for edge in range(0, PAGE_SIZE_BYTES + 1, DIFF_CHUNK_BYTES)
        for offset in (edge - 9, edge - 8, edge - 7, edge - 1, edge, edge + 1, edge + 7, edge + 8)
        if 0 <= offset < PAGE_SIZE_BYTES
    }
)


@st.composite
def page_pairs(draw) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    old = draw(st.sampled_from([redo.ZERO_PAGE, rng.randbytes(PAGE_SIZE_BYTES)]))
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 12))):
        offset = draw(st.one_of(st.sampled_from(EDGES), st.integers(0, PAGE_SIZE_BYTES - 1)))
        length = draw(st.integers(1, min(64, PAGE_SIZE_BYTES - offset)))
        # Random bytes, some of which happen to equal the old ones (inner gaps).
        for index in range(offset, offset + length):
            new[index] = old[index] if rng.random() < 0.3 else rng.randrange(256)
    return old, bytes(new)


@SETTINGS
@given(page_pairs(), st.sampled_from([0, 1, 2, 3, 7, 8, 9, 32, 511, 512, 513, 5000]))
def test_fast_diff_equals_the_per_byte_loop(pair: tuple[bytes, bytes], gap_bytes_max: int) -> None:
    old, new = pair
    assert redo.diff(old, new, gap_bytes_max) == reference_diff(old, new, gap_bytes_max)


def test_fast_diff_on_whole_page_rewrites() -> None:
    rng = random.Random(5)
    for _ in range(20):
        old, new = rng.randbytes(PAGE_SIZE_BYTES), rng.randbytes(PAGE_SIZE_BYTES)
        for gap in (0, 8, 600):
            assert redo.diff(old, new, gap) == reference_diff(old, new, gap)


class PairsFile(VolumeFile):
    """Collects (committed image, new image) of every page a commit changes."""

    pairs: list[tuple[bytes, bytes]] = []

    def _changes(self):  # type: ignore[no-untyped-def]
        changes, old_images = super()._changes()
        for write in changes.pages:
            if write.page in old_images:
                PairsFile.pairs.append((old_images[write.page], write.image))
        return changes, old_images


def test_fast_diff_on_real_sqlite_pages() -> None:
    PairsFile.pairs = []
    vfs = VolumeVFS(MemoryPageSource(), file_class=PairsFile)
    writer = open_connection(vfs, writable=True, locking_mode=LockingMode.EXCLUSIVE)
    sqlite = writer.sqlite
    sqlite.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, pad TEXT)")
    sqlite.execute("CREATE INDEX t_name ON t(name)")
    rng = random.Random(9)
    for row in range(600):
        sqlite.execute(
            "INSERT INTO t VALUES(?, ?, ?, ?)",
            (row, f"name-{rng.randrange(10**6)}", row, "p" * rng.randrange(100)),
        )
    for _ in range(100):
        sqlite.execute(
            "UPDATE t SET n = n + 1, pad = pad || 'q' WHERE id = ?", (rng.randrange(600),)
        )
        sqlite.execute("DELETE FROM t WHERE id = ?", (rng.randrange(600),))
    assert len(PairsFile.pairs) > 500
    for old, new in PairsFile.pairs:
        assert redo.diff(old, new) == reference_diff(old, new)
