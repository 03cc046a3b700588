"""The instance's buffer cache: page images tagged with LSNs, bounded in bytes, LRU.

A page whose newest version is above the VDL exists only here and in flight to
storage (DESIGN.md section 5): storage cannot serve it at any read point the
instance may use yet, so evicting it would lose the only readable copy. Such a
page is *pinned* until the VDL passes its LSN; pinned pages may push the cache
over its capacity for a while, which is counted and reported, never resolved by
evicting them.

The cache is used from SQLite worker threads (the VFS on reads and commits) and
from the event loop (VDL advances, resizes), so every method takes one lock.
Critical sections are short: a hit is a dict lookup and a `move_to_end`, and long
evictions (a large shrink, a VDL jump that unpins many pages) give the lock up
between chunks.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from borealis.ids import LSN_NONE, Lsn
from borealis.metrics import Metrics, Sample

# At most this many pages are evicted or unpinned per hold of the lock, so a
# worker thread's cache hit never waits behind a long eviction (about 100 us).
LOCK_CHUNK_PAGES = 1024

# The unpin heap keeps one entry per pinned write; a page rewritten many times
# above the VDL leaves stale entries. The heap is rebuilt when it is this many
# times larger than the set of pinned pages (plus a floor, so small caches do
# not rebuild on every write).
HEAP_SLACK_FACTOR = 2
HEAP_SLACK_FLOOR = 64

# The longest hot list `hot_pages` gives (256 MiB of 4 KiB pages, a 2 BCU cache): the
# list is built under the lock, and a new reader cannot read more than this many
# pages within its prewarm time bound anyway.
HOT_PAGES_MAX = 65536


CACHE_METRICS = (
    ("buffer_cache_capacity_bytes", "gauge", "Buffer cache capacity."),
    ("buffer_cache_size_bytes", "gauge", "Bytes of page images cached."),
    ("buffer_cache_pinned_bytes", "gauge", "Bytes of cached pages above the VDL (not evictable)."),
    ("buffer_cache_pages", "gauge", "Pages cached."),
    ("buffer_cache_hits_total", "counter", "Buffer cache hits."),
    ("buffer_cache_misses_total", "counter", "Buffer cache misses."),
    ("buffer_cache_evictions_total", "counter", "Pages evicted."),
    ("buffer_cache_stale_puts_total", "counter", "Puts ignored: older than the cached version."),
    ("buffer_cache_over_capacity_bytes", "gauge", "Bytes held beyond capacity (pinned pages)."),
    (
        "buffer_cache_over_capacity_events_total",
        "counter",
        "Times pinned pages pushed the cache over capacity.",
    ),
)


class CachedPage(NamedTuple):
    """One page's image and the LSN of the newest version the image includes."""

    image: bytes
    page_lsn: Lsn


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A consistent snapshot of the cache's counters and sizes."""

    capacity_bytes: int
    size_bytes: int
    pinned_bytes: int
    pages: int
    pinned_pages: int
    vdl: Lsn
    hits: int
    misses: int
    evictions: int
    # Puts of a version older than the cached one (a slow fetch racing a commit).
    stale_puts: int
    # Times the cache went from within capacity to over it, and the most it has
    # ever held beyond capacity: both only because of pinned pages.
    over_capacity_events: int
    over_capacity_bytes_max: int

    @property
    def over_capacity_bytes(self) -> int:
        return max(0, self.size_bytes - self.capacity_bytes)


class BufferCache:
    """Page number -> CachedPage; bounded in bytes, LRU among pages at or below the VDL.

    Invariants (checked by `check_invariants`, used by tests):
    - a page is in exactly one of the evictable LRU map and the pinned map;
    - evictable pages have page_lsn <= vdl, pinned pages page_lsn > vdl;
    - size_bytes > capacity_bytes only when no evictable page is left.
    """

    def __init__(self, capacity_bytes: int, vdl: Lsn = LSN_NONE) -> None:
        assert capacity_bytes >= 0, capacity_bytes
        self._lock = threading.Lock()
        self._capacity_bytes = capacity_bytes
        self._vdl = vdl
        # Pages at or below the VDL in LRU order: least recently used first.
        self._evictable: OrderedDict[int, CachedPage] = OrderedDict()
        # Pages above the VDL, and a min-heap of (page_lsn, page) to find the ones
        # a VDL advance releases without scanning them all.
        self._pinned: dict[int, CachedPage] = {}
        self._unpin_heap: list[tuple[Lsn, int]] = []
        self._evictable_bytes = 0
        self._pinned_bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._stale_puts = 0
        self._over_capacity = False
        self._over_capacity_events = 0
        self._over_capacity_bytes_max = 0

    # -- the hot path -------------------------------------------------------------

    def get(self, page: int, read_point: Lsn | None = None) -> CachedPage | None:
        """The cached version of `page`, marking it recently used; None on a miss.

        With `read_point`, a cached version newer than it counts as a miss: the
        caller must read the page from storage at its read point. (The cache holds
        only the newest version of a page, so an older cached version is the right
        one for any read point at or above its LSN.)
        """
        with self._lock:
            entry = self._evictable.get(page)
            if entry is not None:
                if read_point is not None and entry.page_lsn > read_point:
                    self._misses += 1
                    return None
                self._evictable.move_to_end(page)
                self._hits += 1
                return entry
            entry = self._pinned.get(page)
            if entry is None or (read_point is not None and entry.page_lsn > read_point):
                self._misses += 1
                return None
            self._hits += 1
            return entry

    def peek(self, page: int) -> CachedPage | None:
        """The cached version of `page` without touching LRU order or counters
        (for a replica deciding whether to apply a record to a cached page)."""
        with self._lock:
            entry = self._evictable.get(page)
            return entry if entry is not None else self._pinned.get(page)

    def put(self, page: int, image: bytes, page_lsn: Lsn) -> bool:
        """Caches `image` as `page`'s version at `page_lsn`, most recently used.

        A version older than the cached one is ignored (returns False): a read
        from storage that raced a commit must not hide the commit's image. An
        equal LSN replaces the image (the same version, e.g. re-read).
        """
        assert isinstance(image, bytes), type(image)
        assert page >= 0, page
        entry = CachedPage(image, page_lsn)
        with self._lock:
            old = self._evictable.get(page)
            if old is None:
                old = self._pinned.get(page)
            if old is not None:
                if old.page_lsn > page_lsn:
                    self._stale_puts += 1
                    return False
                self._remove_locked(page, old)
            if page_lsn > self._vdl:
                self._pinned[page] = entry
                self._pinned_bytes += len(image)
                heapq.heappush(self._unpin_heap, (page_lsn, page))
                self._compact_heap_locked()
            else:
                self._evictable[page] = entry
                self._evictable_bytes += len(image)
            # One put adds one page, so it evicts few: no need to chunk here.
            self._evict_locked(pages_max=None)
            self._note_capacity_locked()
            return True

    # -- owner operations ------------------------------------------------------------

    def touch(self, pages: Iterable[int]) -> None:
        """Marks the cached ones of `pages` recently used, in order (the last is the
        most recent), without counting hits: a prewarm that read the hottest page
        first calls this coldest first, so that eviction takes the coldest first."""
        with self._lock:
            for page in pages:
                if page in self._evictable:
                    self._evictable.move_to_end(page)

    def set_vdl(self, vdl: Lsn) -> None:
        """Advances the VDL: pages at or below it become evictable (most recently
        used, as they were just written). The VDL never moves back; an older value
        (a caller that raced a newer update) is ignored."""
        while True:
            with self._lock:
                if vdl > self._vdl:
                    self._vdl = vdl
                done = self._unpin_locked(LOCK_CHUNK_PAGES)
                done = self._evict_locked(LOCK_CHUNK_PAGES) and done
                self._note_capacity_locked()
            if done:
                return

    def resize(self, capacity_bytes: int) -> None:
        """Changes the capacity at run time (the instance's capacity, in BCUs). A
        shrink evicts pages at or below the VDL, least recently used first, in
        chunks (giving up the lock between them), down to the new capacity. Pinned
        pages (above the VDL) are never evicted: if they alone exceed the new
        capacity, the cache stays over its bound (counted in the over-capacity
        metrics) until the VDL passes them, and set_vdl then evicts down to it."""
        assert capacity_bytes >= 0, capacity_bytes
        with self._lock:
            self._capacity_bytes = capacity_bytes
        while True:
            with self._lock:
                done = self._evict_locked(LOCK_CHUNK_PAGES)
                self._note_capacity_locked()
            if done:
                return

    def discard(self, page: int) -> bool:
        """Drops `page` whatever its LSN (the file shrank past it, or the owner
        invalidates it); True if it was cached. Dropping a pinned page is the
        owner's decision: its image is then only in flight to storage."""
        with self._lock:
            entry = self._evictable.get(page)
            if entry is None:
                entry = self._pinned.get(page)
            if entry is None:
                return False
            self._remove_locked(page, entry)
            self._note_capacity_locked()
            return True

    def clear(self) -> None:
        """Drops every page (a new writer epoch, a replica that lost its stream)."""
        with self._lock:
            self._evictable.clear()
            self._pinned.clear()
            self._unpin_heap.clear()
            self._evictable_bytes = 0
            self._pinned_bytes = 0
            self._note_capacity_locked()

    # -- observation -------------------------------------------------------------------

    @property
    def vdl(self) -> Lsn:
        return self._vdl

    @property
    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._evictable_bytes + self._pinned_bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._evictable) + len(self._pinned)

    def __contains__(self, page: object) -> bool:
        with self._lock:
            return page in self._evictable or page in self._pinned

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity_bytes=self._capacity_bytes,
                size_bytes=self._evictable_bytes + self._pinned_bytes,
                pinned_bytes=self._pinned_bytes,
                pages=len(self._evictable) + len(self._pinned),
                pinned_pages=len(self._pinned),
                vdl=self._vdl,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                stale_puts=self._stale_puts,
                over_capacity_events=self._over_capacity_events,
                over_capacity_bytes_max=self._over_capacity_bytes_max,
            )

    def register_metrics(self, metrics: Metrics) -> None:
        """Declares the cache's metrics in `metrics` and reports them at render time."""
        for name, kind, help_text in CACHE_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)

    def samples(self) -> list[Sample]:
        stats = self.stats()
        return [
            ("buffer_cache_capacity_bytes", {}, stats.capacity_bytes),
            ("buffer_cache_size_bytes", {}, stats.size_bytes),
            ("buffer_cache_pinned_bytes", {}, stats.pinned_bytes),
            ("buffer_cache_pages", {}, stats.pages),
            ("buffer_cache_hits_total", {}, stats.hits),
            ("buffer_cache_misses_total", {}, stats.misses),
            ("buffer_cache_evictions_total", {}, stats.evictions),
            ("buffer_cache_stale_puts_total", {}, stats.stale_puts),
            ("buffer_cache_over_capacity_bytes", {}, stats.over_capacity_bytes),
            ("buffer_cache_over_capacity_events_total", {}, stats.over_capacity_events),
        ]

    def hot_pages(self, pages_max: int) -> list[int]:
        """The hottest cached pages, at most `pages_max` (<= HOT_PAGES_MAX): pages at
        or below the VDL most recently used first, then pages above the VDL (written
        in the last few milliseconds, not yet durable; a reader prewarming from this
        list reads them at its own, older, read point). A new reader prewarms its
        cache from its writer's list (compute_node/replication/replica.py)."""
        assert 0 <= pages_max <= HOT_PAGES_MAX, pages_max
        with self._lock:
            hot = list(itertools.islice(reversed(self._evictable), pages_max))
            hot += itertools.islice(self._pinned, pages_max - len(hot))
            return hot

    def lru_order(self) -> list[int]:
        """Evictable pages, least recently used first (for tests and debugging)."""
        with self._lock:
            return list(self._evictable)

    def check_invariants(self) -> None:
        """Asserts the structure's invariants; O(pages), for tests."""
        with self._lock:
            assert not (self._evictable.keys() & self._pinned.keys())
            assert all(e.page_lsn <= self._vdl for e in self._evictable.values())
            assert all(e.page_lsn > self._vdl for e in self._pinned.values())
            assert self._evictable_bytes == sum(len(e.image) for e in self._evictable.values())
            assert self._pinned_bytes == sum(len(e.image) for e in self._pinned.values())
            size_bytes = self._evictable_bytes + self._pinned_bytes
            assert size_bytes <= self._capacity_bytes or not self._evictable
            heap_members = set(self._unpin_heap)
            assert all((e.page_lsn, page) in heap_members for page, e in self._pinned.items())

    # -- internals (the caller holds the lock) -------------------------------------------

    def _remove_locked(self, page: int, entry: CachedPage) -> None:
        # A pinned page's heap entry stays behind; _unpin_locked skips stale ones.
        if self._evictable.pop(page, None) is not None:
            self._evictable_bytes -= len(entry.image)
        else:
            del self._pinned[page]
            self._pinned_bytes -= len(entry.image)

    def _evict_locked(self, pages_max: int | None) -> bool:
        """Evicts least recently used pages until within capacity or none is
        evictable; False if it stopped at `pages_max` with work left."""
        evicted = 0
        while self._evictable and self._evictable_bytes + self._pinned_bytes > self._capacity_bytes:
            if pages_max is not None and evicted >= pages_max:
                return False
            _, entry = self._evictable.popitem(last=False)
            self._evictable_bytes -= len(entry.image)
            self._evictions += 1
            evicted += 1
        return True

    def _unpin_locked(self, pages_max: int) -> bool:
        """Moves pinned pages at or below the VDL to the evictable map; False if it
        stopped at `pages_max` with work left."""
        heap = self._unpin_heap
        moved = 0
        while heap and heap[0][0] <= self._vdl:
            if moved >= pages_max:
                return False
            page_lsn, page = heapq.heappop(heap)
            entry = self._pinned.get(page)
            if entry is None or entry.page_lsn != page_lsn:
                continue  # stale: the page was rewritten, discarded or already moved
            del self._pinned[page]
            self._pinned_bytes -= len(entry.image)
            self._evictable[page] = entry
            self._evictable_bytes += len(entry.image)
            moved += 1
        return True

    def _compact_heap_locked(self) -> None:
        if len(self._unpin_heap) <= HEAP_SLACK_FACTOR * len(self._pinned) + HEAP_SLACK_FLOOR:
            return
        self._unpin_heap = [(entry.page_lsn, page) for page, entry in self._pinned.items()]
        heapq.heapify(self._unpin_heap)

    def _note_capacity_locked(self) -> None:
        over_bytes = self._evictable_bytes + self._pinned_bytes - self._capacity_bytes
        if over_bytes > 0:
            if not self._over_capacity:
                self._over_capacity = True
                self._over_capacity_events += 1
            self._over_capacity_bytes_max = max(self._over_capacity_bytes_max, over_bytes)
        else:
            self._over_capacity = False
