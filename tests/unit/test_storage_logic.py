"""The pure decisions of the coalescer and the garbage collector, on PageVersions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage_node.coalescer import deltas_to_coalesce
from storage_node.garbage_collector import collectable
from storage_node.store import TAG_DELTA, TAG_FULL, TAG_MATERIALISED, PageVersions

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None)
IMAGE_TAGS = (TAG_FULL, TAG_MATERIALISED)


@st.composite
def page_versions(draw) -> PageVersions:
    """A page's versions, newest first: distinct LSNs with random D/F/M tags."""
    lsns = draw(st.lists(st.integers(1, 200), unique=True, max_size=20))
    lsns.sort(reverse=True)
    tags = draw(
        st.lists(
            st.sampled_from([TAG_DELTA, TAG_DELTA, TAG_FULL, TAG_MATERIALISED]),
            min_size=len(lsns),
            max_size=len(lsns),
        )
    )
    return PageVersions(page=draw(st.integers(0, 1000)), lsns=lsns, tags=tags)


def versions(*pairs: tuple[int, bytes]) -> PageVersions:
    """PageVersions from (lsn, tag) pairs given newest first."""
    return PageVersions(7, [lsn for lsn, _ in pairs], [tag for _, tag in pairs])


def walk(lsns: list[int], tags: list[bytes], read_point: int) -> list[int]:
    """The versions GetPage reads for `read_point`: from the newest at or below it down
    to the first image, or to the oldest version (then starting from a zero page)."""
    start = next((index for index, lsn in enumerate(lsns) if lsn <= read_point), None)
    if start is None:
        return []
    read = []
    for lsn, tag in zip(lsns[start:], tags[start:], strict=True):
        read.append(lsn)
        if tag in IMAGE_TAGS:
            break
    return read


# --- garbage collection ----------------------------------------------------------------


@SETTINGS
@given(page_versions(), st.integers(0, 210))
def test_gc_keeps_the_base_at_the_horizon_and_everything_newer(page, horizon: int) -> None:
    materialise, doomed = collectable(page, horizon)
    kept = [lsn for lsn in page.lsns if lsn not in doomed]
    at_or_below = [lsn for lsn in page.lsns if lsn <= horizon]

    assert set(doomed) <= set(page.lsns)
    assert len(set(doomed)) == len(doomed)
    # Nothing at or above the horizon is deleted; everything newer than it is kept.
    assert all(lsn < horizon for lsn in doomed)
    assert [lsn for lsn in page.lsns if lsn > horizon] == [lsn for lsn in kept if lsn > horizon]
    if at_or_below:
        base = at_or_below[0]
        # The newest version at or below the horizon is kept, and only older ones go.
        assert base in kept
        assert sorted(doomed, reverse=True) == at_or_below[1:]
        base_tag = page.tags[page.lsns.index(base)]
        assert materialise == (base if base_tag == TAG_DELTA and doomed else None)
    else:
        assert (materialise, doomed) == (None, [])


@SETTINGS
@given(page_versions(), st.integers(0, 210), st.data())
def test_reads_at_or_above_the_horizon_still_find_their_versions(page, horizon, data) -> None:
    materialise, doomed = collectable(page, horizon)
    after_lsns = [lsn for lsn in page.lsns if lsn not in doomed]
    after_tags = [
        TAG_MATERIALISED if lsn == materialise else tag
        for lsn, tag in zip(page.lsns, page.tags, strict=True)
        if lsn not in doomed
    ]
    read_point = data.draw(st.integers(horizon, 220), label="read_point")
    before = walk(page.lsns, page.tags, read_point)
    after = walk(after_lsns, after_tags, read_point)
    # The same walk, cut short where the base became a full image.
    if materialise is not None and materialise in before:
        assert after == before[: before.index(materialise) + 1]
    else:
        assert after == before
    assert set(after) <= set(after_lsns)


def test_gc_examples() -> None:
    d, f, m = TAG_DELTA, TAG_FULL, TAG_MATERIALISED
    page = versions((50, d), (40, d), (30, f), (20, d), (10, f))
    assert collectable(page, 5) == (None, [])
    assert collectable(page, 10) == (None, [])
    assert collectable(page, 29) == (20, [10])  # base 20 is a delta: made an image first
    assert collectable(versions((20, d), (10, d)), 15) == (None, [])  # nothing older: as is
    assert collectable(page, 30) == (None, [20, 10])
    assert collectable(page, 45) == (40, [30, 20, 10])
    assert collectable(page, 1000) == (50, [40, 30, 20, 10])
    assert collectable(versions((50, m), (40, d)), 60) == (None, [40])
    assert collectable(versions(), 60) == (None, [])


# --- coalescing ------------------------------------------------------------------------


@SETTINGS
@given(page_versions(), st.integers(0, 210))
def test_deltas_to_coalesce_counts_the_deltas_above_the_newest_image(page, scl: int) -> None:
    found = deltas_to_coalesce(page, scl)
    at_or_below = [(lsn, tag) for lsn, tag in zip(page.lsns, page.tags, strict=True) if lsn <= scl]
    deltas = 0
    for _, tag in at_or_below:
        if tag != TAG_DELTA:
            break
        deltas += 1
    if deltas == 0:
        assert found is None
    else:
        assert found == (at_or_below[0][0], deltas)
        # Never above the SCL, where the chain is not known complete.
        assert found[0] <= scl
        # After the coalescer stores the image, there is nothing left to do there.
        tags = [
            TAG_MATERIALISED if lsn == found[0] else tag
            for lsn, tag in zip(page.lsns, page.tags, strict=True)
        ]
        assert deltas_to_coalesce(PageVersions(page.page, page.lsns, tags), scl) is None


def test_deltas_to_coalesce_examples() -> None:
    d, f, m = TAG_DELTA, TAG_FULL, TAG_MATERIALISED
    page = versions((60, d), (50, d), (40, d), (30, f), (20, d), (10, d))
    assert deltas_to_coalesce(page, 70) == (60, 3)
    assert deltas_to_coalesce(page, 59) == (50, 2)
    assert deltas_to_coalesce(page, 30) is None
    assert deltas_to_coalesce(page, 25) == (20, 2)  # no image below: counts to the oldest
    assert deltas_to_coalesce(page, 9) is None
    assert deltas_to_coalesce(versions((60, m), (50, d)), 70) is None
    assert deltas_to_coalesce(versions(), 70) is None
