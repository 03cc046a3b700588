"""The buffer cache: byte bound, LRU order, pages above the VDL never evicted, and the
hot list a new reader prewarms from."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from borealis import metrics
from borealis.ids import Lsn
from compute_node.volume.cache import HOT_PAGES_MAX, LOCK_CHUNK_PAGES, BufferCache

pytestmark = pytest.mark.unit

PAGE_BYTES = 100


def image(tag: int, size: int = PAGE_BYTES) -> bytes:
    return bytes([tag % 256]) * size


def test_hit_miss_and_lru_eviction() -> None:
    cache = BufferCache(capacity_bytes=3 * PAGE_BYTES, vdl=Lsn(100))
    for page in (1, 2, 3):
        assert cache.put(page, image(page), Lsn(page))
    assert cache.lru_order() == [1, 2, 3]
    assert cache.get(1) == (image(1), 1)  # 1 becomes most recently used
    assert cache.get(9) is None
    cache.put(4, image(4), Lsn(4))  # evicts 2, the least recently used
    assert cache.lru_order() == [3, 1, 4]
    assert 2 not in cache
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (1, 1, 1)
    assert stats.size_bytes == 3 * PAGE_BYTES and stats.pages == 3
    cache.check_invariants()


def test_pages_above_vdl_are_pinned_until_vdl_passes_them() -> None:
    cache = BufferCache(capacity_bytes=2 * PAGE_BYTES, vdl=Lsn(10))
    cache.put(1, image(1), Lsn(5))
    for page in (2, 3, 4):
        cache.put(page, image(page), Lsn(10 + page))  # above VDL: pinned
    # Page 1 was the only evictable page; the pinned ones stay although over capacity.
    assert sorted([page for page in (1, 2, 3, 4) if page in cache]) == [2, 3, 4]
    stats = cache.stats()
    assert stats.pinned_pages == 3 and stats.over_capacity_bytes == PAGE_BYTES
    assert stats.over_capacity_events == 1 and stats.over_capacity_bytes_max == PAGE_BYTES
    cache.check_invariants()
    # VDL passes pages 2 and 3 (LSN 12, 13): they become evictable, and the cache
    # shrinks back to capacity by evicting the older of them.
    cache.set_vdl(Lsn(13))
    assert cache.stats().pinned_pages == 1
    assert cache.size_bytes == 2 * PAGE_BYTES
    assert 4 in cache and 2 not in cache and 3 in cache
    cache.check_invariants()
    cache.set_vdl(Lsn(14))
    assert cache.stats().pinned_pages == 0
    cache.check_invariants()


def test_older_version_does_not_replace_newer() -> None:
    cache = BufferCache(capacity_bytes=10 * PAGE_BYTES)
    assert cache.put(1, image(2), Lsn(20))
    assert not cache.put(1, image(1), Lsn(10))  # a slow read racing a commit
    assert cache.get(1) == (image(2), 20)
    assert cache.put(1, image(3), Lsn(20))  # the same version, re-read
    assert cache.stats().stale_puts == 1
    cache.check_invariants()


def test_get_at_read_point_misses_newer_versions() -> None:
    cache = BufferCache(capacity_bytes=10 * PAGE_BYTES, vdl=Lsn(10))
    cache.put(1, image(1), Lsn(5))
    cache.put(2, image(2), Lsn(15))
    assert cache.get(1, read_point=Lsn(5)) == (image(1), 5)
    assert cache.get(1, read_point=Lsn(4)) is None
    assert cache.get(2, read_point=Lsn(10)) is None
    assert cache.get(2, read_point=Lsn(15)) == (image(2), 15)
    assert (cache.stats().hits, cache.stats().misses) == (2, 2)


def test_vdl_never_moves_back() -> None:
    cache = BufferCache(capacity_bytes=10 * PAGE_BYTES, vdl=Lsn(10))
    cache.set_vdl(Lsn(5))
    assert cache.vdl == 10
    cache.put(1, image(1), Lsn(8))
    cache.check_invariants()


def test_resize_shrinks_and_grows() -> None:
    cache = BufferCache(capacity_bytes=5 * PAGE_BYTES, vdl=Lsn(100))
    for page in range(5):
        cache.put(page, image(page), Lsn(page + 1))
    cache.resize(2 * PAGE_BYTES)
    assert cache.lru_order() == [3, 4] and cache.stats().evictions == 3
    cache.resize(10 * PAGE_BYTES)
    for page in range(10, 18):
        cache.put(page, image(page), Lsn(1))
    assert len(cache) == 10
    cache.resize(0)
    assert len(cache) == 0 and cache.size_bytes == 0
    cache.check_invariants()


def test_large_shrink_and_unpin_work_in_chunks() -> None:
    pages = 3 * LOCK_CHUNK_PAGES + 7
    cache = BufferCache(capacity_bytes=pages * 10, vdl=Lsn(0))
    for page in range(pages):
        cache.put(page, image(page, 10), Lsn(page + 1))
    assert cache.stats().pinned_pages == pages
    cache.resize(5 * 10)  # nothing evictable: all pinned
    assert len(cache) == pages
    cache.set_vdl(Lsn(pages))  # unpins all, then evicts down to 5 pages
    assert cache.lru_order() == list(range(pages - 5, pages))
    cache.check_invariants()


def test_discard_and_clear() -> None:
    cache = BufferCache(capacity_bytes=10 * PAGE_BYTES, vdl=Lsn(10))
    cache.put(1, image(1), Lsn(5))
    cache.put(2, image(2), Lsn(50))
    assert cache.discard(2) and not cache.discard(2)
    cache.set_vdl(Lsn(60))  # the stale heap entry of page 2 is skipped
    cache.check_invariants()
    assert cache.peek(1) == (image(1), 5)
    cache.clear()
    assert len(cache) == 0 and cache.size_bytes == 0
    cache.check_invariants()


def test_rewrites_above_vdl_keep_the_heap_bounded() -> None:
    cache = BufferCache(capacity_bytes=10 * PAGE_BYTES, vdl=Lsn(0))
    for lsn in range(1, 10_000):
        cache.put(1, image(lsn), Lsn(lsn))
    assert len(cache._unpin_heap) < 200
    cache.check_invariants()
    cache.set_vdl(Lsn(9_999))
    assert cache.stats().pinned_pages == 0
    cache.check_invariants()


def test_concurrent_threads_keep_invariants() -> None:
    cache = BufferCache(capacity_bytes=50 * PAGE_BYTES, vdl=Lsn(0))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for index in range(3000):
                page = (seed * 7919 + index * 31) % 200
                cache.put(page, image(page), Lsn(seed * 100_000 + index))
                cache.get((page + 1) % 200)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for vdl in range(0, 400_000, 500):
        cache.set_vdl(Lsn(vdl))
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    cache.set_vdl(Lsn(10**9))
    cache.check_invariants()
    assert cache.size_bytes <= 50 * PAGE_BYTES


# -- property tests --------------------------------------------------------------------


class CacheMachine(RuleBasedStateMachine):
    """Random puts, gets, VDL advances and resizes, checked against what was written."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = BufferCache(8 * PAGE_BYTES)
        self.vdl = 0
        self.lsn = 0
        # page -> (size, LSN) of the newest version ever put.
        self.newest: dict[int, tuple[int, int]] = {}

    @rule(page=st.integers(0, 20), size=st.sampled_from([1, 50, PAGE_BYTES, 3 * PAGE_BYTES]))
    def put(self, page: int, size: int) -> None:
        self.lsn += 1
        assert self.cache.put(page, image(self.lsn, size), Lsn(self.lsn))
        self.newest[page] = (size, self.lsn)

    @rule(page=st.integers(0, 20))
    def put_older(self, page: int) -> None:
        current = self.cache.peek(page)
        if current is not None and current.page_lsn > 0:
            assert not self.cache.put(page, b"old", Lsn(current.page_lsn - 1))

    @rule(page=st.integers(0, 20))
    def get(self, page: int) -> None:
        entry = self.cache.get(page)
        if entry is not None:
            size, page_lsn = self.newest[page]
            assert entry == (image(page_lsn, size), page_lsn)

    @rule(step=st.integers(0, 5))
    def advance_vdl(self, step: int) -> None:
        self.vdl = min(self.lsn, self.vdl + step)
        self.cache.set_vdl(Lsn(self.vdl))

    @rule(pages=st.integers(0, 12))
    def resize(self, pages: int) -> None:
        self.cache.resize(pages * PAGE_BYTES)

    @precondition(lambda self: self.newest)
    @rule()
    def shrinking_evicts_the_lru_front(self) -> None:
        order = self.cache.lru_order()
        capacity_bytes = self.cache.capacity_bytes
        if not order or self.cache.size_bytes > capacity_bytes:
            return
        # One byte below the current size evicts exactly the least recently used page.
        self.cache.resize(self.cache.size_bytes - 1)
        assert self.cache.lru_order() == order[1:]
        self.cache.resize(capacity_bytes)

    @invariant()
    def size_within_capacity_except_pinned(self) -> None:
        stats = self.cache.stats()
        if stats.size_bytes > stats.capacity_bytes:
            assert stats.pinned_bytes == stats.size_bytes  # everything left is pinned
        self.cache.check_invariants()

    @invariant()
    def pages_above_vdl_are_never_evicted(self) -> None:
        for page, (size, page_lsn) in self.newest.items():
            if page_lsn > self.vdl:
                assert self.cache.peek(page) == (image(page_lsn, size), page_lsn)


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=300))
@settings(max_examples=300, deadline=None)
def test_lru_order_matches_a_model(operations: list[tuple[bool, int]]) -> None:
    capacity_pages = 6
    cache = BufferCache(capacity_bytes=capacity_pages * PAGE_BYTES, vdl=Lsn(2**62))
    model: list[int] = []  # least recently used first
    for is_put, page in operations:
        if is_put:
            cache.put(page, image(page), Lsn(1))
            if page in model:
                model.remove(page)
            model.append(page)
            del model[: max(0, len(model) - capacity_pages)]
        else:
            assert (cache.get(page) is not None) == (page in model)
            if page in model:
                model.remove(page)
                model.append(page)
        assert cache.lru_order() == model
        # The hot list is the same order reversed, cut at any bound.
        assert cache.hot_pages(len(model)) == model[::-1]
        assert cache.hot_pages(2) == model[::-1][:2]


def test_hot_pages_are_most_recently_used_first_and_bounded() -> None:
    cache = BufferCache(capacity_bytes=5 * PAGE_BYTES, vdl=Lsn(100))
    for page in (1, 2, 3, 4, 5):
        cache.put(page, image(page), Lsn(page))
    cache.get(2)
    stats_before = cache.stats()
    assert cache.hot_pages(10) == [2, 5, 4, 3, 1]
    assert cache.hot_pages(3) == [2, 5, 4]
    assert cache.hot_pages(0) == []
    # Listing is not a use: order and counters stay as they were.
    assert cache.lru_order() == [1, 3, 4, 5, 2]
    assert cache.stats() == stats_before
    with pytest.raises(AssertionError):
        cache.hot_pages(HOT_PAGES_MAX + 1)


def test_touch_orders_a_prewarm_like_the_writers_list() -> None:
    """A prewarm caches the writer's list hottest first, then touches it coldest
    first: the copy's hot list is the writer's, and eviction takes the coldest."""
    writer = BufferCache(capacity_bytes=4 * PAGE_BYTES, vdl=Lsn(100))
    for page in (1, 2, 3, 4):
        writer.put(page, image(page), Lsn(page))
    writer.get(1)
    hot = writer.hot_pages(4)
    reader = BufferCache(capacity_bytes=4 * PAGE_BYTES, vdl=Lsn(100))
    for page in hot:
        reader.put(page, image(page), Lsn(page))
    stats_before = reader.stats()
    reader.touch([9, *reversed(hot)])  # a page not cached is skipped
    assert reader.hot_pages(4) == hot == [1, 4, 3, 2]
    assert reader.stats() == stats_before  # not a hit
    reader.put(5, image(5), Lsn(5))
    assert 2 not in reader and 1 in reader
    reader.check_invariants()


def test_hot_pages_list_pages_above_the_vdl_after_the_evictable_ones() -> None:
    cache = BufferCache(capacity_bytes=10 * PAGE_BYTES, vdl=Lsn(10))
    cache.put(1, image(1), Lsn(5))
    cache.put(2, image(2), Lsn(20))  # pinned: not durable yet
    cache.put(3, image(3), Lsn(6))
    cache.put(4, image(4), Lsn(30))  # pinned
    assert cache.hot_pages(10) == [3, 1, 2, 4]
    assert cache.hot_pages(3) == [3, 1, 2]
    # Once durable they join the LRU order as just used, so they lead the list.
    cache.set_vdl(Lsn(100))
    assert cache.hot_pages(10) == [4, 2, 3, 1]


def test_hot_pages_of_a_full_large_cache_are_bounded() -> None:
    pages = HOT_PAGES_MAX + 10
    cache = BufferCache(capacity_bytes=pages, vdl=Lsn(2))
    for page in range(pages):
        cache.put(page, b"x", Lsn(1))
    hot = cache.hot_pages(HOT_PAGES_MAX)
    assert len(hot) == HOT_PAGES_MAX
    assert hot[0] == pages - 1 and hot[-1] == 10


def test_metrics_are_rendered() -> None:
    registry = metrics.Metrics("borealis_compute")
    cache = BufferCache(capacity_bytes=PAGE_BYTES, vdl=Lsn(1))
    cache.register_metrics(registry)
    cache.put(1, image(1), Lsn(5))
    cache.put(2, image(2), Lsn(6))
    cache.get(3)
    samples = metrics.parse(registry.render())
    assert samples["borealis_compute_buffer_cache_misses_total"] == 1
    assert samples["borealis_compute_buffer_cache_over_capacity_bytes"] == PAGE_BYTES
    assert samples["borealis_compute_buffer_cache_pinned_bytes"] == 2 * PAGE_BYTES


def test_shrink_evicts_only_evictable_pages_lru_first_and_pinned_ones_stay_over_bound() -> None:
    cache = BufferCache(capacity_bytes=8 * PAGE_BYTES, vdl=Lsn(10))
    for page in range(4):
        cache.put(page, image(page), Lsn(page + 1))  # at or below the VDL
    for page in range(4, 8):
        cache.put(page, image(page), Lsn(20 + page))  # pinned: above the VDL
    cache.get(0)  # page 0 is now the most recently used evictable page
    cache.resize(5 * PAGE_BYTES)
    # Down to 5 pages: the 3 least recently used evictable ones went, page 0 stayed.
    assert cache.lru_order() == [0] and cache.stats().evictions == 3
    cache.resize(2 * PAGE_BYTES)
    # Nothing evictable left: the 4 pinned pages keep the cache over its bound.
    assert cache.lru_order() == [] and len(cache) == 4
    assert cache.stats().over_capacity_bytes == 2 * PAGE_BYTES
    cache.check_invariants()
    # Once the VDL passes them they are evictable, and the bound holds again.
    cache.set_vdl(Lsn(100))
    assert len(cache) == 2 and cache.stats().over_capacity_bytes == 0
    cache.check_invariants()
