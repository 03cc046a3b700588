"""A reader instance's volume: the engine's PageSource, fed by the writer's redo stream.

The reader opens the volume read-only: no epoch bump, no recovery, no shipping.
What it knows of the volume (epochs, PG members, each PG's newest record, the page
count) comes from the writer's `Hello` when it subscribes, and from the stream
after that (compute_node/replication/subscriber.py drives this class).

Read points. The reader's read point is `lsn_applied`: the CPL of the last commit
group (MTR) it applied, never above the writer's VDL. It moves only at MTR
boundaries, after every record of the MTR was applied, through the engine's
VolumeState.advance; each read transaction pins the newest one.

The buffer cache holds, for each cached page, its version at `lsn_applied`
(tagged with the LSN of the newest record it includes). That is the invariant
everything here keeps:

- Applying an MTR: for each record, a cached page gets the record applied
  (borealis/redo.materialise); an IMAGE record caches the page even if it was not
  cached (its image is the whole page); other records of uncached pages are
  dropped. Every record's LSN goes into the page's commit slot (below).
- A page read at read point R that the cache cannot answer (not cached, or cached
  at a version newer than R) goes to storage at the PG's newest record at or
  below R (PgLsnHistory). Its result is cached only if no record of the page
  above R was applied or dropped since (the page's commit slot <= R), the read
  point is not older than the stream's starting point (`_cache_floor`: records
  before it were never seen), and no resubscription happened meanwhile
  (`_generation`). The check and the put run under `_apply_lock`, which every
  MTR apply holds, so a read cannot slip an older version in between.
- A cached version newer than a read point counts as a miss (BufferCache.get with
  the read point): older read points read storage, which keeps every version
  at or above the PGMRPL, so the engine keeps no old page versions on a reader.

Prewarm. Before a new reader serves, `prewarm` reads a list of pages (its writer's
hottest, see compute_node/capacity.py HotPages) into the cache, a few at a time and
for a bounded time. Each page is read at the read point of the moment and cached
under the same checks as a miss in `read_page`, so the invariant above holds; a page
already cached, beyond the file's end or never written is skipped.

Threads: `read_page` runs on SQLite worker threads and waits for storage on the
volume's event loop; everything else (begin, apply, advance) runs on the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from borealis import redo
from borealis.errors import BorealisError, InvalidRequest, Unavailable
from borealis.ids import LSN_NONE, Epoch, Epochs, Lsn, PgIndex, VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.redo import PAGE_SIZE_BYTES, ZERO_PAGE, Kind
from compute_node.engine.source import CommitChanges
from compute_node.replication.core import Group, PgLsnHistory
from compute_node.volume.cache import BufferCache
from compute_node.volume.config import VolumeConfig
from compute_node.volume.lsn import SIZE_PG
from compute_node.volume.reader import PageReader
from storage_node.client import StorageClient
from storage_node.segment import Member

log = get_logger("compute_node.replica")

T = TypeVar("T")

LSN_NEVER = Lsn(2**64 - 1)
PAGE_COMMIT_SLOTS = 1 << 16
PAGE_COMMIT_SLOT_MASK = PAGE_COMMIT_SLOTS - 1
LOOP_GRACE_S = 5.0
# The PG history is pruned to the oldest pinned read point every this many MTRs.
HISTORY_PRUNE_EVERY_MTRS = 256

REPLICA_METRICS = (
    ("replica_mtrs_applied_total", "counter", "Commit groups applied."),
    ("replica_records_applied_total", "counter", "Redo records applied to cached pages."),
    ("replica_records_dropped_total", "counter", "Redo records of uncached pages dropped."),
    ("replica_resyncs_total", "counter", "Times the reader started over from a new hello."),
    ("replica_lsn_applied", "gauge", "The reader's read point (its VDL)."),
    ("replica_prewarm_pages_listed", "gauge", "Pages the prewarm was asked to read."),
    ("replica_prewarm_pages", "gauge", "Pages the prewarm read into the cache."),
    ("replica_prewarm_failures", "gauge", "Prewarm page reads that failed."),
    ("replica_prewarm_seconds", "gauge", "How long the prewarm took."),
    ("replica_prewarm_timed_out", "gauge", "1 if the prewarm stopped at its time bound."),
)


@dataclass
class PrewarmResult:
    """What one prewarm did: pages listed, read from storage and cached (a page read
    may not be cached, if the stream changed it meanwhile), failed reads, seconds."""

    pages_listed: int = 0
    pages_read: int = 0
    pages_cached: int = 0
    failures: int = 0
    seconds: float = 0.0
    timed_out: bool = False


class PlannedRead(NamedTuple):
    """A storage read of a page at a read point: the PG's newest LSN at or below it,
    and the resubscription generation the read started in."""

    lsn: Lsn
    generation: int


class StartPoint:
    """Where a (re)subscription's stream starts, from the writer's Hello."""

    def __init__(
        self, lsn_start: Lsn, page_count: int, lsn_last_by_pg: Mapping[PgIndex, Lsn]
    ) -> None:
        self.lsn_start = lsn_start
        self.page_count = page_count
        self.lsn_last_by_pg = dict(lsn_last_by_pg)


class ReplicaVolume:
    """A reader's volume. Build on the event loop; `begin` before use."""

    page_size = PAGE_SIZE_BYTES

    def __init__(self, volume_id: VolumeId, nodes: Iterable[Member], config: VolumeConfig) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.volume_id = volume_id
        self.config = config
        timeout_s = config.control_rpc_timeout_ms / 1000
        self._clients = {
            node.node: StorageClient(node.address, timeout_s=timeout_s) for node in nodes
        }
        self._volume_epoch = Epoch(0)
        self._pages_per_pg = 0
        self._members: dict[PgIndex, list[Member]] = {}
        self._membership_epoch: dict[PgIndex, Epoch] = {}
        self._cache = BufferCache(config.cache_capacity_bytes)
        self._reader = PageReader(
            volume_id,
            pg_of=self._pg_of,
            placement=self._members.__getitem__,
            epochs_of=self._epochs_of,
            client_of=lambda member: self._clients[member.node],
            config=config.reader,
        )
        self._history = PgLsnHistory()
        self._apply_lock = threading.Lock()
        self._page_commit_lsn: list[Lsn] = [LSN_NONE] * PAGE_COMMIT_SLOTS
        self._generation = 0
        self._cache_floor: Lsn = LSN_NEVER
        self._lsn_applied: Lsn = LSN_NONE
        self._page_count = 0
        self._started = False
        self._pending: StartPoint | None = None
        self._advance: Callable[[Lsn, int], None] | None = None
        self._read_point_oldest: Callable[[], Lsn] | None = None
        self._read_timeout_s = config.reader.read_timeout_ms / 1000 + LOOP_GRACE_S
        self._closed = False
        self.mtrs_applied = 0
        self.records_applied = 0
        self.records_dropped = 0
        self.resyncs = 0
        self.storage_reads = 0
        self.prewarmed = PrewarmResult()
        # Wall-clock time (ms) at which the last MTR was applied, and its commit time.
        self.applied_commit_time_us = 0

    # -- the stream (on the loop) ------------------------------------------------------

    def attach(
        self, advance: Callable[[Lsn, int], None], read_point_oldest: Callable[[], Lsn]
    ) -> None:
        """Connects the engine (VolumeState.advance, .read_point_oldest) once open."""
        with self._apply_lock:
            self._advance = advance
            self._read_point_oldest = read_point_oldest
            # Groups applied while the engine opened.
            self._publish_locked()

    def set_volume(self, volume_epoch: Epoch, pages_per_pg: int) -> None:
        assert pages_per_pg > 0, pages_per_pg
        assert self._pages_per_pg in (0, pages_per_pg), (self._pages_per_pg, pages_per_pg)
        self._volume_epoch = volume_epoch
        self._pages_per_pg = pages_per_pg

    def set_pg(self, pg: PgIndex, membership_epoch: Epoch, members: list[Member]) -> None:
        """Names a PG's members (from a Hello, a PG the writer created, or a
        membership change); a node the cluster file did not list (a replacement)
        gets a client for the address the writer names."""
        timeout_s = self.config.control_rpc_timeout_ms / 1000
        for member in members:
            if member.node not in self._clients:
                self._clients[member.node] = StorageClient(member.address, timeout_s=timeout_s)
        self._members[pg] = list(members)
        self._membership_epoch[pg] = membership_epoch

    def begin(self, start: StartPoint) -> None:
        """A (re)subscription: the records between what was applied and the new
        starting point were never seen, so the cache is dropped and nothing read
        from storage is cached until the reader has jumped to the starting point
        (`start_if_durable`, once the VDL reaches it)."""
        with self._apply_lock:
            self._generation += 1
            self._cache.clear()
            self._cache_floor = LSN_NEVER
            self._pending = start
        if self._started:
            self.resyncs += 1

    def start_if_durable(self, vdl: Lsn) -> bool:
        """Jumps to the pending starting point once the writer's VDL covers it;
        True when the reader has a read point (now or before)."""
        start = self._pending
        if start is None:
            return self._started
        if vdl < start.lsn_start:
            return self._started
        with self._apply_lock:
            self._pending = None
            self._generation += 1
            self._cache.clear()
            self._history.start(start.lsn_last_by_pg)
            if start.lsn_start >= self._lsn_applied:
                self._cache_floor = start.lsn_start
                self._cache.set_vdl(start.lsn_start)
                self._lsn_applied = start.lsn_start
                self._page_count = start.page_count
                self._publish_locked()
            else:
                # The new stream starts below what was applied (it repeats groups
                # the reader has seen); those are skipped by apply.
                self._cache_floor = self._lsn_applied
        self._started = True
        log.info("replica read point", lsn=self._lsn_applied, page_count=self._page_count)
        return True

    def apply(self, group: Group) -> None:
        """Applies one whole MTR whose CPL the writer's VDL covers (see the module
        docstring); then the read point moves to its CPL."""
        assert self._started and self._pending is None
        if group.cpl <= self._lsn_applied:
            return  # a resubscription repeated it
        records = [redo.decode(data) for data in group.records]
        assert records and records[-1].lsn == group.cpl and records[-1].cpl, group.cpl
        pages_per_pg = self._pages_per_pg
        cache = self._cache
        slots = self._page_commit_lsn
        page_count = self._page_count
        with self._apply_lock:
            # Entries written below carry LSNs up to the CPL; none is pinned.
            cache.set_vdl(group.cpl)
            for record, data in zip(records, group.records, strict=True):
                if record.kind == Kind.SIZE:
                    page_count = record.page
                    self._history.add(SIZE_PG, record.lsn)
                    continue
                page = record.page
                self._history.add(PgIndex(page // pages_per_pg), record.lsn)
                slots[page & PAGE_COMMIT_SLOT_MASK] = record.lsn
                entry = cache.peek(page)
                if entry is None and record.kind != Kind.IMAGE:
                    self.records_dropped += 1
                    continue
                base = entry.image if entry is not None else None
                cache.put(page, redo.materialise(base, [data]), record.lsn)
                self.records_applied += 1
            self._lsn_applied = group.cpl
            self._page_count = page_count
            self.applied_commit_time_us = group.commit_time_us
            self._publish_locked()
        self.mtrs_applied += 1
        if self.mtrs_applied % HISTORY_PRUNE_EVERY_MTRS == 0:
            self._prune_history()

    def _publish_locked(self) -> None:
        if self._advance is not None:
            self._advance(self._lsn_applied, self._page_count)

    def _prune_history(self) -> None:
        if self._read_point_oldest is None:
            return
        oldest = self._read_point_oldest()
        with self._apply_lock:
            self._history.prune(oldest)

    # -- PageSource (SQLite worker threads) ----------------------------------------------

    def lsn_newest(self) -> Lsn:
        return self._lsn_applied

    def page_count(self) -> int:
        return self._page_count

    def read_page(self, page: int, read_point: Lsn) -> bytes:
        cached = self._cache.get(page, read_point)
        if cached is not None:
            return cached.image
        if self._closed:
            raise Unavailable("the volume is closed", volume_id=self.volume_id)
        planned = self._plan_read(page, read_point)
        if planned is None:
            # No record of the PG at or below the read point: the page was never written.
            return ZERO_PAGE
        self.storage_reads += 1
        image, page_lsn = self._run_blocking(self._reader.read_page(page, planned.lsn), page=page)
        self._cache_read(page, image, page_lsn, read_point, planned.generation)
        return image

    def _plan_read(self, page: int, read_point: Lsn) -> PlannedRead | None:
        """Where storage serves `page` at `read_point`; None if it was never written."""
        pg = self._pg_of(page)
        with self._apply_lock:
            lsn = self._history.lsn_readable(pg, read_point)
            if pg not in self._members or lsn == LSN_NONE:
                return None
            return PlannedRead(lsn, self._generation)

    def _cache_read(
        self, page: int, image: bytes, page_lsn: Lsn, read_point: Lsn, generation: int
    ) -> bool:
        """Caches a page read from storage at `read_point` if it is still the page's
        version at the reader's read point (see the module docstring); True if cached."""
        with self._apply_lock:
            if (
                generation == self._generation
                and read_point >= self._cache_floor
                and self._page_commit_lsn[page & PAGE_COMMIT_SLOT_MASK] <= read_point
            ):
                return self._cache.put(page, image, page_lsn)
        return False

    # -- prewarm (on the loop) ---------------------------------------------------------

    async def prewarm(
        self, pages: Sequence[int], concurrency: int, timeout_s: float
    ) -> PrewarmResult:
        """Reads `pages` (hottest first) into the cache, `concurrency` reads at a time,
        for at most `timeout_s`; a failed read is counted and skipped. Runs on the loop
        once the reader has a read point."""
        assert threading.get_ident() == self._loop_thread
        assert self._started, "prewarm before the reader has a read point"
        assert concurrency > 0 and timeout_s > 0, (concurrency, timeout_s)
        result = PrewarmResult(pages_listed=len(pages))
        started_s = time.monotonic()
        queue = iter(pages)
        workers = [
            asyncio.ensure_future(self._prewarm_worker(queue, result))
            for _ in range(min(concurrency, len(pages)))
        ]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=timeout_s)
            result.timed_out = bool(pending)
            for worker in pending:
                worker.cancel()
            # Cancelled workers end at once; the others ended already.
            await asyncio.gather(*workers, return_exceptions=True)
        # Read hottest first (the reads most worth their time), but cached in the
        # writer's LRU order: the hottest most recently used, the first kept.
        self._cache.touch(reversed(pages))
        result.seconds = time.monotonic() - started_s
        self.prewarmed = result
        return result

    async def _prewarm_worker(self, queue: Iterator[int], result: PrewarmResult) -> None:
        # Workers share one iterator: the loop runs one of them at a time, so each
        # page goes to exactly one worker.
        for page in queue:
            if self._closed:
                return
            if page >= self._page_count or page in self._cache:
                continue
            read_point = self._lsn_applied
            planned = self._plan_read(page, read_point)
            if planned is None:
                continue
            try:
                image, page_lsn = await self._reader.read_page(page, planned.lsn)
            except BorealisError as error:
                result.failures += 1
                # Storage in trouble fails every read: one line says so, the
                # count says how many.
                if result.failures == 1:
                    log.warning("prewarm page read failed", page=page, error=repr(error))
                continue
            result.pages_read += 1
            if self._cache_read(page, image, page_lsn, read_point, planned.generation):
                result.pages_cached += 1

    def admit(self, changes: CommitChanges) -> None:
        raise InvalidRequest("a reader instance does not write")

    def commit(self, changes: CommitChanges) -> Lsn:
        raise AssertionError("a reader instance's engine has no writing connection")

    # -- helpers -----------------------------------------------------------------------

    def _pg_of(self, page: int) -> PgIndex:
        assert self._pages_per_pg > 0, "read before the writer's hello"
        return PgIndex(page // self._pages_per_pg)

    def _epochs_of(self, pg: PgIndex) -> Epochs:
        return Epochs(self._volume_epoch, self._membership_epoch[pg])

    def _run_blocking(self, coroutine: Coroutine[Any, Any, T], **context: Any) -> T:
        if threading.get_ident() == self._loop_thread:
            coroutine.close()
            raise AssertionError("a blocking volume call on the volume's event loop thread")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self._read_timeout_s)
        except TimeoutError:
            future.cancel()
            raise Unavailable(
                "page read timed out", timeout_s=self._read_timeout_s, **context
            ) from None

    # -- observation and lifecycle -------------------------------------------------------

    @property
    def lsn_applied(self) -> Lsn:
        return self._lsn_applied

    @property
    def started(self) -> bool:
        return self._started

    @property
    def cache(self) -> BufferCache:
        return self._cache

    def lsn_readable(self, pg: PgIndex, read_point: Lsn) -> Lsn:
        with self._apply_lock:
            return self._history.lsn_readable(pg, read_point)

    def register_metrics(self, metrics: Metrics) -> None:
        for name, kind, help_text in REPLICA_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)
        self._cache.register_metrics(metrics)
        self._reader.register_metrics(metrics)

    def samples(self) -> list[Sample]:
        return [
            ("replica_mtrs_applied_total", {}, self.mtrs_applied),
            ("replica_records_applied_total", {}, self.records_applied),
            ("replica_records_dropped_total", {}, self.records_dropped),
            ("replica_resyncs_total", {}, self.resyncs),
            ("replica_lsn_applied", {}, self._lsn_applied),
            ("replica_prewarm_pages_listed", {}, self.prewarmed.pages_listed),
            ("replica_prewarm_pages", {}, self.prewarmed.pages_cached),
            ("replica_prewarm_failures", {}, self.prewarmed.failures),
            ("replica_prewarm_seconds", {}, self.prewarmed.seconds),
            ("replica_prewarm_timed_out", {}, int(self.prewarmed.timed_out)),
        ]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reader.close()
        for client in self._clients.values():
            await client.close()


def now_us() -> int:
    return time.time_ns() // 1000
