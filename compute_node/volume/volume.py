"""The writer's volume client: the engine's PageSource on the distributed volume.

`Volume` ties the sans-IO core (Topology, LsnAllocator, DurabilityTracker) to the
I/O around it (Shipper, PageReader, BufferCache) and presents the PageSource
protocol of compute_node/engine/source.py.

Threads. The volume belongs to one asyncio event loop (the one `create` or `open`
ran on): the tracker, the shipper, the page reader and the storage clients live
there and are touched only from it. SQLite worker threads call the PageSource
methods; they only hand work over:

- `read_page` serves the buffer cache, and on a miss runs the page reader on the
  loop (`run_coroutine_threadsafe`) with a deadline, then caches the result.
- `admit` checks (fenced, closed), creates the PGs the group grows into (on the
  loop, before the commit point), and waits (bounded) while the group would pass
  the LAL.
- `commit` runs on the worker thread under the engine's volume lock and never
  waits: it allocates LSNs (the allocator is driven only by this one committing
  thread), encodes the records, puts the new page images into the buffer cache
  (pinned above the VDL), and hands the group to the shipper with
  `loop.call_soon_threadsafe`. Commits are serialised by the engine, and the loop
  runs callbacks in FIFO order, so the tracker registers groups in LSN order
  (`group_sent` and the shipper's queues in one callback, before any send).
- `wait_durable_blocking` waits on a concurrent future the shipper resolves;
  `wait_durable` is its coroutine form for the loop.

The VDL a worker thread reads (`vdl`) is a copy the loop updates before it lets
the cache unpin; a stale value is only ever lower, which is safe everywhere it
is used (read points, LAL).

Reopening (`open`) is a first version of DESIGN.md section 8's recovery, for a
writer that stopped or was killed (see `_Recovery` for the steps and what it does
not handle yet).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from borealis import redo
from borealis.errors import (
    AlreadyExists,
    BorealisError,
    Corruption,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from borealis.ids import LSN_NONE, Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.redo import PAGE_SIZE_BYTES, ZERO_PAGE, RedoRecord
from compute_node.engine.source import CommitChanges
from compute_node.volume.cache import BufferCache
from compute_node.volume.durability import LAL_LSNS_DEFAULT, DurabilityTracker
from compute_node.volume.lsn import LsnAllocator
from compute_node.volume.reader import PageReader, PageReaderConfig
from compute_node.volume.shipper import Shipper, ShipperConfig
from compute_node.volume.topology import PAGES_PER_PG_DEFAULT, WRITE_QUORUM, Topology
from storage_node.client import StorageClient
from storage_node.segment import Member, SegmentMeta

log = get_logger("compute_node.volume")

T = TypeVar("T")

EPOCH_FIRST = Epoch(1)

# read_page caches a page read from storage only if no commit of the page can be
# newer than the read. Commits record their LSN in one of these slots per page
# (page mod the slot count): a fixed-size, conservative filter (a collision only
# skips caching one read).
PAGE_COMMIT_SLOTS = 1 << 16
PAGE_COMMIT_SLOT_MASK = PAGE_COMMIT_SLOTS - 1

# A worker thread waits this much longer than the loop-side deadline of what it
# waits for, so the loop's own, more precise error normally wins.
LOOP_GRACE_S = 5.0

# Recovery RPCs in flight at once (ReadRecords, SetEpoch, ...).
RECOVERY_CALLS_IN_FLIGHT_MAX = 64
# ReadRecords pages per segment and call site, so a node that always says `more`
# cannot loop forever.
READ_RECORDS_PAGES_MAX = 1_000_000
SET_EPOCH_ATTEMPTS = 3
NODE_RETRY_INTERVAL_S = 0.1


@dataclass(frozen=True)
class VolumeConfig:
    # For a new volume; a reopened one takes its PG size from its segments.
    pages_per_pg: int = PAGES_PER_PG_DEFAULT
    # The LSN allocation limit. Recovery relies on every writer of a volume using
    # the same value (its truncation range covers what an old writer may have used).
    lal_lsns: int = LAL_LSNS_DEFAULT
    # Added to the truncation range at open, above VDL + LAL.
    truncation_margin_lsns: int = 1024
    cache_capacity_bytes: int = 256 * 2**20
    # Deadline of each control call: ListSegments, SetMembership, SetEpoch, ReadRecords.
    control_rpc_timeout_ms: float = 5000.0
    # How long create and open keep asking storage nodes that do not answer
    # before going on without them.
    node_wait_ms: float = 5000.0
    # How long admit may wait: PG creation, and back-pressure at the LAL.
    admit_timeout_ms: float = 30_000.0
    # ReadRecords page size during recovery, and the first window of the backward
    # searches (for the last CPL and SIZE record below what was read).
    read_records_bytes_max: int = 4 * 2**20
    recovery_window_lsns: int = 4096
    shipper: ShipperConfig = field(default_factory=ShipperConfig)
    reader: PageReaderConfig = field(default_factory=PageReaderConfig)

    def __post_init__(self) -> None:
        assert self.pages_per_pg > 0 and self.lal_lsns > 0
        assert self.truncation_margin_lsns >= 0 and self.cache_capacity_bytes >= 0
        assert self.control_rpc_timeout_ms > 0 and self.admit_timeout_ms > 0
        assert self.node_wait_ms >= 0
        assert self.read_records_bytes_max > 0 and self.recovery_window_lsns > 0


@dataclass
class VolumeStats:
    commits: int = 0
    records: int = 0
    # Bytes of encoded records, of their payloads, and of the pages SQLite dirtied.
    record_bytes: int = 0
    redo_payload_bytes: int = 0
    dirty_bytes: int = 0
    # Admits that had to wait at the LAL, and PGs this writer created.
    admit_waits: int = 0
    pgs_created: int = 0
    # Page reads that went to storage, and those whose result was not cached
    # (a commit of the page may be newer).
    storage_reads: int = 0
    storage_reads_uncached: int = 0


VOLUME_METRICS = (
    ("volume_commits_total", "counter", "Commit groups."),
    ("volume_records_total", "counter", "Redo records created."),
    ("volume_record_bytes_total", "counter", "Bytes of encoded redo records."),
    ("volume_redo_payload_bytes_total", "counter", "Bytes of redo payloads (deltas, images)."),
    ("volume_dirty_bytes_total", "counter", "Bytes of the pages SQLite dirtied in commits."),
    ("volume_admit_waits_total", "counter", "Commits that waited at the LSN allocation limit."),
    ("volume_pgs_created_total", "counter", "Protection groups created."),
    ("volume_storage_reads_total", "counter", "Page reads from storage (cache misses)."),
)


@dataclass(frozen=True)
class RecoveredVolume:
    """What `open` found and decided (also logged)."""

    volume_epoch: Epoch
    pages_per_pg: int
    members_by_pg: dict[PgIndex, list[Member]]
    membership_epoch_by_pg: dict[PgIndex, Epoch]
    # Everything at or below was on a write quorum without reading it.
    floor: Lsn
    vcl: Lsn
    vdl: Lsn
    # The truncation range (vdl, truncate_up_to]; new LSNs start above it.
    truncate_up_to: Lsn
    last_lsn_by_pg: dict[PgIndex, Lsn]
    lsn_size_last: Lsn
    page_count: int
    records_read: int
    # Segments left out ("pg/node: why"): node unreachable, older epoch, refused.
    excluded: list[str]
    # Members whose node answered without the segment: the shipper creates them.
    missing_by_pg: dict[PgIndex, list[str]]


class Volume:
    """A writer's volume; build it with `await Volume.create(...)` or `Volume.open(...)`."""

    page_size = PAGE_SIZE_BYTES

    def __init__(
        self,
        topology: Topology,
        config: VolumeConfig,
        clients: dict[str, StorageClient],
        volume_epoch: Epoch,
        allocator: LsnAllocator,
        tracker: DurabilityTracker,
        page_count: int,
        recovered: RecoveredVolume | None = None,
    ) -> None:
        """Use `create` or `open`; this runs on the volume's event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.volume_id = topology.volume_id
        self.config = config
        self.recovered = recovered
        self._topology = topology
        self._clients = clients
        self._volume_epoch = volume_epoch
        self._allocator = allocator
        self._tracker = tracker
        self._lal_lsns = tracker.lal_lsns
        self._lsn_allocation_floor = tracker.lsn_allocation_floor
        self._lsn_newest = tracker.vdl
        self._page_count = page_count
        self._vdl: Lsn = tracker.vdl
        self._members: dict[PgIndex, list[Member]] = {}
        # PGs 0 .. _pg_ready_count - 1 all exist (read by worker threads in admit).
        self._pg_ready_count = 0
        self._pg_lock = asyncio.Lock()
        self._page_commit_lsn: list[Lsn] = [LSN_NONE] * PAGE_COMMIT_SLOTS
        self._cache = BufferCache(config.cache_capacity_bytes, vdl=tracker.vdl)
        self._reader = PageReader(
            self.volume_id,
            pg_of=topology.pg_of,
            placement=self._members.__getitem__,
            epochs_of=self._epochs_of,
            client_of=lambda member: self._clients[member.node],
            config=config.reader,
        )
        self._shipper = Shipper(
            self.volume_id,
            tracker,
            clients,
            config.shipper,
            on_scl=self._reader.note_scl,
            on_vdl=self._vdl_advanced,
        )
        self._membership_epoch: dict[PgIndex, Epoch] = {}
        self._read_timeout_s = config.reader.read_timeout_ms / 1000 + LOOP_GRACE_S
        self._admit_timeout_s = config.admit_timeout_ms / 1000
        self._closed = False
        self.stats = VolumeStats()

    # -- creating and opening --------------------------------------------------------------

    @classmethod
    async def create(
        cls, volume_id: VolumeId, nodes: Sequence[Member], config: VolumeConfig | None = None
    ) -> Volume:
        """A new, empty volume: volume and membership epoch 1, page size 4096, PG 0
        created (more PGs are created as the volume grows into them).

        Raises AlreadyExists if a reachable node holds a segment of the volume, and
        Unavailable if fewer than a write quorum of nodes answer.
        """
        config = config or VolumeConfig()
        topology = Topology(volume_id, nodes, config.pages_per_pg)
        clients = _clients_for(topology.nodes, config)
        try:
            timeout_s = config.control_rpc_timeout_ms / 1000
            listings = await list_segments(clients, timeout_s, config.node_wait_ms)
            answered = 0
            for node, listing in listings.items():
                if isinstance(listing, BorealisError):
                    log.warning("storage node did not answer", node=node, error=listing)
                    continue
                answered += 1
                if any(meta.volume_id == volume_id for meta in listing):
                    raise AlreadyExists("the volume already exists", volume_id=volume_id, node=node)
            if answered < WRITE_QUORUM:
                raise Unavailable(
                    "too few storage nodes answer to create a volume",
                    volume_id=volume_id,
                    answered=answered,
                )
            tracker = DurabilityTracker(LSN_NONE, config.lal_lsns)
            volume = cls(
                topology, config, clients, EPOCH_FIRST, LsnAllocator(), tracker, page_count=0
            )
        except BaseException:
            await _close_clients(clients)
            raise
        try:
            await volume._ensure_pgs(1)
        except BaseException:
            await volume.close()
            raise
        log.info("volume created", volume=volume_id, pages_per_pg=topology.pages_per_pg)
        return volume

    @classmethod
    async def open(
        cls, volume_id: VolumeId, nodes: Sequence[Member], config: VolumeConfig | None = None
    ) -> Volume:
        """Reopens an existing volume as its (new) writer: fences older writers,
        computes the durable point, truncates what is above it, and continues from
        there. See `_Recovery`."""
        config = config or VolumeConfig()
        clients = _clients_for(nodes, config)
        try:
            recovered = await _Recovery(volume_id, clients, config).run()
            topology = Topology(volume_id, nodes, recovered.pages_per_pg)
            allocator = LsnAllocator(
                start_after=recovered.truncate_up_to,
                last_lsn_by_pg=recovered.last_lsn_by_pg,
                last_lsn_size=recovered.lsn_size_last,
            )
            tracker = DurabilityTracker(
                recovered.vdl, config.lal_lsns, lsn_allocation_floor=recovered.truncate_up_to
            )
            volume = cls(
                topology,
                config,
                clients,
                recovered.volume_epoch,
                allocator,
                tracker,
                page_count=recovered.page_count,
                recovered=recovered,
            )
        except BaseException:
            await _close_clients(clients)
            raise
        for pg in sorted(recovered.members_by_pg):
            volume._add_pg(
                pg,
                recovered.members_by_pg[pg],
                recovered.membership_epoch_by_pg[pg],
                recovered.last_lsn_by_pg.get(pg, LSN_NONE),
                recovered.missing_by_pg.get(pg, ()),
            )
        log.info(
            "volume opened",
            volume=volume_id,
            volume_epoch=recovered.volume_epoch,
            vdl=recovered.vdl,
            vcl=recovered.vcl,
            floor=recovered.floor,
            truncate_up_to=recovered.truncate_up_to,
            page_count=recovered.page_count,
            pgs=len(recovered.members_by_pg),
            records_read=recovered.records_read,
            excluded=";".join(recovered.excluded) or "none",
        )
        return volume

    def _epochs_of(self, pg: PgIndex) -> Epochs:
        return Epochs(self._volume_epoch, self._membership_epoch[pg])

    def _add_pg(
        self,
        pg: PgIndex,
        members: list[Member],
        membership_epoch: Epoch,
        lsn_last: Lsn,
        missing: Iterable[str] = (),
    ) -> None:
        """Makes a PG known to the reader and the shipper (on the loop)."""
        self._membership_epoch[pg] = membership_epoch
        self._members[pg] = members
        first_page = self._topology.first_page(pg)
        self._shipper.add_pg(
            pg,
            members,
            self._epochs_of(pg),
            first_page,
            self._topology.pages_per_pg,
            lsn_last,
            missing,
        )
        ready = self._pg_ready_count
        while PgIndex(ready) in self._members:
            ready += 1
        self._pg_ready_count = ready

    async def _ensure_pgs(self, pg_count: int) -> None:
        """Creates PGs 0 .. pg_count - 1 that do not exist yet: SetMembership on the
        6 placement nodes of each; a write quorum of them must succeed (the shipper
        creates the rest before it first sends them records)."""
        async with self._pg_lock:
            for index in range(pg_count):
                pg = PgIndex(index)
                if pg in self._members:
                    continue
                members = self._topology.placement(pg)
                missing = await self._create_segments(pg, members)
                self._add_pg(pg, members, EPOCH_FIRST, LSN_NONE, missing)
                self.stats.pgs_created += 1

    async def _create_segments(self, pg: PgIndex, members: list[Member]) -> list[str]:
        epochs = Epochs(self._volume_epoch, EPOCH_FIRST)
        segment_id = SegmentId(self.volume_id, pg)
        timeout_s = self.config.control_rpc_timeout_ms / 1000
        results = await asyncio.gather(
            *(
                self._clients[member.node].set_membership(
                    segment_id,
                    epochs,
                    self._topology.first_page(pg),
                    self._topology.pages_per_pg,
                    members,
                    timeout_s=timeout_s,
                )
                for member in members
            ),
            return_exceptions=True,
        )
        errors = {}
        for member, result in zip(members, results, strict=True):
            if isinstance(result, BorealisError):
                errors[member.node] = str(result)
            elif isinstance(result, BaseException):
                raise result
        if len(members) - len(errors) < WRITE_QUORUM:
            raise Unavailable(
                "could not create the segments of a protection group on a write quorum",
                pg=pg,
                errors="; ".join(f"{node}: {error}" for node, error in errors.items()),
            )
        if errors:
            log.warning("PG created without some segments", pg=pg, errors=errors)
        log.info("PG created", pg=pg, nodes=",".join(member.node for member in members))
        return list(errors)

    # -- PageSource: called from SQLite worker threads -------------------------------------

    def lsn_newest(self) -> Lsn:
        return self._lsn_newest

    def page_count(self) -> int:
        return self._page_count

    def read_page(self, page: int, read_point: Lsn) -> bytes:
        """The page at `read_point`, or a newer version committed after it (the engine
        keeps the older images its pinned read points need)."""
        cached = self._cache.get(page)
        if cached is not None:
            return cached.image
        self._check_open()
        # Read the VDL after the miss: a version above it would be pinned in the
        # cache, so the page's newest version at the read point is at or below it.
        lsn = min(read_point, self._vdl)
        self.stats.storage_reads += 1
        image, page_lsn = self._run_blocking(
            self._read_from_storage(page, lsn), self._read_timeout_s, "page read", page=page
        )
        if self._page_commit_lsn[page & PAGE_COMMIT_SLOT_MASK] <= lsn:
            self._cache.put(page, image, page_lsn)
        else:
            # A commit of the page (or of one sharing its slot) is newer than the
            # read: caching this version could hide it once it was evicted.
            self.stats.storage_reads_uncached += 1
        return image

    async def _read_from_storage(self, page: int, lsn: Lsn) -> tuple[bytes, Lsn]:
        pg = self._topology.pg_of(page)
        if pg not in self._members:
            # No PG, so never written (the engine reads only below the page count).
            return ZERO_PAGE, LSN_NONE
        return await self._reader.read_page(page, self._shipper.lsn_readable(pg, lsn))

    def admit(self, changes: CommitChanges) -> None:
        """Refuses the group if the volume is fenced or closed; creates the PGs it
        grows into; waits (bounded) while it would pass the LAL."""
        self._check_open()
        count = len(changes.pages) + (changes.page_count is not None)
        if count > self._lal_lsns:
            raise InvalidRequest(
                "commit group is larger than the LSN allocation limit",
                records=count,
                lal_lsns=self._lal_lsns,
            )
        pages_end = max((write.page for write in changes.pages), default=-1) + 1
        if changes.page_count is not None:
            pages_end = max(pages_end, changes.page_count)
        pg_count = self._topology.pg_count_for(pages_end)
        if pg_count > self._pg_ready_count:
            self._run_blocking(
                self._ensure_pgs(pg_count),
                self._admit_timeout_s,
                "creating protection groups",
                pgs=pg_count,
            )
        # The writer never allocates above max(VDL, allocation floor) + LAL.
        lsn_needed = self._allocator.lsn_allocated + count - self._lal_lsns
        if lsn_needed > max(self._vdl, self._lsn_allocation_floor):
            self.stats.admit_waits += 1
            try:
                self.wait_durable_blocking(Lsn(lsn_needed), self._admit_timeout_s)
            except Unavailable as error:
                raise Unavailable(
                    "writer stalled at the LSN allocation limit: " + error.message,
                    lal_lsns=self._lal_lsns,
                    **error.context,
                ) from error

    def commit(self, changes: CommitChanges) -> Lsn:
        """Allocates the group's LSNs, encodes its records, caches its images and hands
        it to the shipper; returns its CPL. Never waits."""
        assignments = self._allocator.assign(
            [write.page for write in changes.pages], self._topology, changes.page_count
        )
        commit_time_us = changes.commit_time_us
        records = [
            redo.encode(
                RedoRecord(
                    lsn=assignment.lsn,
                    prev_lsn_volume=assignment.prev_lsn_volume,
                    prev_lsn_pg=assignment.prev_lsn_pg,
                    prev_lsn_page=assignment.prev_lsn_page,
                    page=page,
                    kind=kind,
                    payload=payload,
                    cpl=assignment.cpl,
                    commit_time_us=commit_time_us if assignment.cpl else 0,
                )
            )
            for assignment, (page, kind, payload) in zip(
                assignments, changes.records(), strict=True
            )
        ]
        slots = self._page_commit_lsn
        cache = self._cache
        # The slot before the image: a storage read that misses both is older than
        # the commit and loses to its image in the cache (older puts are ignored).
        for write, assignment in zip(changes.pages, assignments, strict=False):
            slots[write.page & PAGE_COMMIT_SLOT_MASK] = assignment.lsn
            cache.put(write.page, write.image, assignment.lsn)
        self._loop.call_soon_threadsafe(self._shipper.submit, assignments, records)
        stats = self.stats
        stats.commits += 1
        stats.records += len(records)
        stats.record_bytes += sum(len(record) for record in records)
        stats.redo_payload_bytes += changes.redo_payload_bytes
        stats.dirty_bytes += changes.dirty_bytes
        return assignments[-1].lsn

    # -- durability ----------------------------------------------------------------------------

    @property
    def vdl(self) -> Lsn:
        return self._vdl

    async def wait_durable(self, lsn: Lsn, timeout_s: float | None = None) -> Lsn:
        """On the volume's loop: returns once VDL >= lsn; Unavailable (naming the PG
        without a write quorum) after the timeout, StaleEpoch if fenced."""
        return await self._shipper.wait_durable(lsn, timeout_s)

    def wait_durable_blocking(self, lsn: Lsn, timeout_s: float | None = None) -> Lsn:
        """`wait_durable` for worker threads (never the loop's own thread)."""
        vdl = self._vdl
        if vdl >= lsn:
            return vdl
        assert threading.get_ident() != self._loop_thread, "would block the volume's loop"
        if timeout_s is None:
            timeout_s = self.config.shipper.durable_timeout_ms / 1000
        future: concurrent.futures.Future[Lsn] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._shipper.add_waiter, lsn, future, timeout_s)
        try:
            return future.result(timeout_s + LOOP_GRACE_S)
        except TimeoutError:
            future.cancel()
            raise Unavailable(
                "the volume's event loop did not answer", lsn=lsn, timeout_s=timeout_s
            ) from None

    def _vdl_advanced(self, vdl: Lsn) -> None:
        # The copy first: once the cache unpins a page, a reader that misses it must
        # see a VDL at least as high (read_page reads at min(read point, VDL)).
        self._vdl = vdl
        self._cache.set_vdl(vdl)

    # -- helpers -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the volume is closed", volume_id=self.volume_id)
        fenced = self._shipper.fenced
        if fenced is not None:
            raise fenced

    def _run_blocking(
        self, coroutine: Coroutine[Any, Any, T], timeout_s: float, what: str, **context: Any
    ) -> T:
        """Runs `coroutine` on the volume's loop and waits for it from a worker thread."""
        if threading.get_ident() == self._loop_thread:
            coroutine.close()
            raise AssertionError("a blocking volume call on the volume's event loop thread")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise Unavailable(f"{what} timed out", timeout_s=timeout_s, **context) from None

    # -- observation and lifecycle -----------------------------------------------------------

    @property
    def shipper(self) -> Shipper:
        return self._shipper

    @property
    def cache(self) -> BufferCache:
        return self._cache

    @property
    def reader(self) -> PageReader:
        return self._reader

    @property
    def volume_epoch(self) -> Epoch:
        return self._volume_epoch

    @property
    def pg_count(self) -> int:
        return self._pg_ready_count

    def metrics(self) -> dict[str, float]:
        """A flat snapshot of the volume's counters (for tests and benchmarks)."""
        stats = self.stats
        shipper = self._shipper.stats
        commits = stats.commits or 1
        return {
            "commits": stats.commits,
            "records": stats.records,
            "record_bytes": stats.record_bytes,
            "redo_payload_bytes": stats.redo_payload_bytes,
            "dirty_bytes": stats.dirty_bytes,
            "redo_bytes_per_commit": stats.record_bytes / commits,
            "dirty_bytes_per_commit": stats.dirty_bytes / commits,
            "admit_waits": stats.admit_waits,
            "pgs": self._pg_ready_count,
            "storage_reads": stats.storage_reads,
            "vdl": self._vdl,
            "batches": shipper.batches,
            "batch_records_mean": shipper.batch_records_mean,
            "batch_bytes_mean": shipper.batch_bytes_mean,
            "rpcs": shipper.rpcs,
            "rpc_failures": shipper.rpc_failures,
            "acks": shipper.acks,
            "catchup_rpcs": shipper.catchup_rpcs,
            "rpcs_per_segment_per_commit": shipper.rpcs_per_segment_per_commit(),
            "segments_left_behind": shipper.segments_left_behind,
            "waiter_timeouts": shipper.waiter_timeouts,
        }

    def register_metrics(self, metrics: Metrics) -> None:
        for name, kind, help_text in VOLUME_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)
        self._shipper.register_metrics(metrics)
        self._cache.register_metrics(metrics)
        self._reader.register_metrics(metrics)

    def samples(self) -> list[Sample]:
        stats = self.stats
        return [
            ("volume_commits_total", {}, stats.commits),
            ("volume_records_total", {}, stats.records),
            ("volume_record_bytes_total", {}, stats.record_bytes),
            ("volume_redo_payload_bytes_total", {}, stats.redo_payload_bytes),
            ("volume_dirty_bytes_total", {}, stats.dirty_bytes),
            ("volume_admit_waits_total", {}, stats.admit_waits),
            ("volume_pgs_created_total", {}, stats.pgs_created),
            ("volume_storage_reads_total", {}, stats.storage_reads),
        ]

    async def close(self) -> None:
        """Stops shipping (records not yet durable may be lost; wait first), fails
        the remaining waiters, and closes the storage clients. On the volume's loop."""
        if self._closed:
            return
        self._closed = True
        await self._shipper.close()
        await self._reader.close()
        await _close_clients(self._clients)


def _clients_for(nodes: Iterable[Member], config: VolumeConfig) -> dict[str, StorageClient]:
    """One client (one gRPC channel) per storage node, shared by every PG."""
    timeout_s = config.control_rpc_timeout_ms / 1000
    return {node.node: StorageClient(node.address, timeout_s=timeout_s) for node in nodes}


async def _close_clients(clients: Mapping[str, StorageClient]) -> None:
    for client in clients.values():
        await client.close()


async def list_segments(
    clients: Mapping[str, StorageClient], timeout_s: float, wait_ms: float
) -> dict[str, list[SegmentMeta] | BorealisError]:
    """ListSegments on every node; nodes that fail are asked again until `wait_ms`
    has passed (a node that just restarted may refuse for a moment: gRPC shares a
    connection per address between channels, and one in reconnect backoff fails
    new calls at once). Each node's answer or last error."""
    deadline_s = time.monotonic() + wait_ms / 1000
    results: dict[str, list[SegmentMeta] | BorealisError] = {}
    pending = list(clients)
    while True:
        answers = await asyncio.gather(
            *(clients[node].list_segments(timeout_s=timeout_s) for node in pending),
            return_exceptions=True,
        )
        failed = []
        for node, answer in zip(pending, answers, strict=True):
            if isinstance(answer, BorealisError):
                failed.append(node)
            elif isinstance(answer, BaseException):
                raise answer
            results[node] = answer
        pending = failed
        if not pending or time.monotonic() >= deadline_s:
            return results
        await asyncio.sleep(NODE_RETRY_INTERVAL_S)


# -- recovery ---------------------------------------------------------------------------------


class RecordSeen:
    """One record found on the segments during recovery: its header and how many
    segments of its PG hold it."""

    __slots__ = ("pg", "prev_lsn_volume", "prev_lsn_pg", "cpl", "size", "page", "holders")

    def __init__(
        self,
        pg: PgIndex,
        prev_lsn_volume: Lsn,
        prev_lsn_pg: Lsn,
        cpl: bool,
        size: bool,
        page: int,
        holders: int = 1,
    ) -> None:
        self.pg = pg
        self.prev_lsn_volume = prev_lsn_volume
        self.prev_lsn_pg = prev_lsn_pg
        self.cpl = cpl
        self.size = size
        self.page = page
        self.holders = holders


def durable_point(
    records: Mapping[Lsn, RecordSeen], floor: Lsn, holders_needed: Mapping[PgIndex, int]
) -> tuple[Lsn, Lsn | None]:
    """(VCL, the highest CPL in (floor, VCL] or None), from what the segments hold.

    Every record at or below `floor` is known to be on a write quorum; `records`
    holds every record above it found on any segment. Walking up from the floor,
    a record extends the VCL when it is held by enough segments of its PG and
    the volume's backlink chain is unbroken: its `prev_lsn_volume` is the record
    before it (for the first one, anything at or below the floor). A record
    missing from every segment shows up as a broken link.
    """
    vcl = floor
    vdl: Lsn | None = None
    for lsn in sorted(lsn for lsn in records if lsn > floor):
        record = records[lsn]
        # The first record may link to anything at or below the floor.
        linked = record.prev_lsn_volume <= floor if vcl == floor else record.prev_lsn_volume == vcl
        if not linked or record.holders < holders_needed[record.pg]:
            break
        vcl = lsn
        if record.cpl:
            vdl = lsn
    return vcl, vdl


@dataclass(frozen=True)
class _PgLayout:
    members: list[Member]
    membership_epoch: Epoch
    first_page: int
    page_count: int


class _Recovery:
    """Reopening a volume (a first version of DESIGN.md section 8).

    1. ListSegments on every storage node: the volume's PGs, their members and
       epochs. A segment is usable if its node answers and it is at the volume's
       highest volume epoch and its PG's membership epoch. Every PG needs a
       write quorum of usable segments.
    2. Fence: SetEpoch(volume epoch + 1) on the usable segments (a write quorum
       of each PG must accept). From here an older writer's appends are refused,
       so what the segments hold no longer changes under the reads below.
    3. ListSegments again. Per PG, the 4th highest SCL of the usable segments
       (PGCL) bounds what is surely on a write quorum. The floor is the lowest
       PGCL over the PGs, raised to (highest LSN held anywhere - LAL): an old
       writer never ran more than the LAL ahead of its VDL (or of its own
       allocation floor, the end of an earlier truncation range, below which
       everything surviving was at or below an earlier VDL).
    4. ReadRecords above the floor on every usable segment; per record, the
       segments that hold it. `durable_point` walks the volume's backlink chain
       up from the floor: VCL is where a record is missing or held by too few
       segments, VDL the last CPL before it. "Too few" is fewer than 4 when all 6
       are usable; with r usable, fewer than r - 2, since a record that reached 4
       segments is on at least r - 2 of those that answer (records kept that way
       are on fewer than 4 segments until gossip copies them to their peers).
       If no CPL is above the floor, windows below it are read (doubling) until
       one is found.
    5. The page count: the newest SIZE record (PG 0) at or below VDL, searched
       the same way. The last record of every PG at or below VDL, exactly, for
       the new writer's backlinks.
    6. Truncate: SetEpoch again (same new epoch) with the range
       (VDL, max(VDL, earlier truncation end) + LAL + margin], covering anything
       an old writer may have allocated; new LSNs start above it.

    A PG with fewer usable segments than a write quorum fails the open, unless it
    holds no record at all (its creation reached too few nodes): it is kept with
    the segments it has. Members whose node answered without the segment are
    created by the shipper before it first sends them records; gossip fills them.

    Not handled yet: a segment that is unreachable or refuses at open keeps its
    old epoch and is left out (the shipper retries it, and it refuses with
    StaleEpoch) until a repair (a membership change) replaces it; segments at an
    older volume epoch (they missed an earlier recovery) are likewise left out;
    PGs in a membership change (segments with different membership epochs) open
    only if a write quorum agrees on the newest; a node failing mid-recovery fails
    the open (retry it).
    Memory is one small object per record above the floor (bounded by the LAL).
    """

    def __init__(
        self, volume_id: VolumeId, clients: Mapping[str, StorageClient], config: VolumeConfig
    ) -> None:
        self.volume_id = volume_id
        self._clients = clients
        self._config = config
        self._timeout_s = config.control_rpc_timeout_ms / 1000
        self._calls = asyncio.Semaphore(RECOVERY_CALLS_IN_FLIGHT_MAX)
        self._excluded: list[str] = []
        self._records_read = 0
        # The nodes that answered the last ListSegments.
        self._answered: set[str] = set()

    async def run(self) -> RecoveredVolume:
        metas = await self._list()
        if not metas:
            raise NotFound("no storage node holds a segment of the volume", volume=self.volume_id)
        epoch_old = max(
            meta.volume_epoch for by_node in metas.values() for meta in by_node.values()
        )
        epoch_new = Epoch(epoch_old + 1)
        layouts = {pg: self._layout(pg, by_node, epoch_old) for pg, by_node in metas.items()}
        pages_per_pg = self._pages_per_pg(layouts)
        usable = {
            pg: [
                node
                for node, meta in by_node.items()
                if meta.volume_epoch == epoch_old
                and meta.membership_epoch == layouts[pg].membership_epoch
                and node in {member.node for member in layouts[pg].members}
            ]
            for pg, by_node in metas.items()
        }
        for pg, by_node in metas.items():
            for node in sorted(set(by_node) - set(usable[pg])):
                self._exclude(pg, node, "older epoch or not a member")
        # A PG whose creation reached fewer than a write quorum of nodes (the writer
        # failed or stopped in admit) holds no record: it opens with the segments it
        # has, and the shipper creates the others.
        partial = {
            pg
            for pg, by_node in metas.items()
            if len(usable[pg]) < WRITE_QUORUM
            and all(meta.highest_lsn == LSN_NONE for meta in by_node.values())
        }
        self._require_quorum(usable, "usable segments", partial)

        # Fence, then look again: nothing an old writer sends lands after this.
        usable = await self._set_epoch(layouts, usable, epoch_new, None, partial)
        metas = await self._list()
        states: dict[PgIndex, dict[str, SegmentMeta]] = {}
        for pg in layouts:
            states[pg] = {}
            for node in usable[pg]:
                meta = metas.get(pg, {}).get(node)
                if meta is None or meta.volume_epoch != epoch_new:
                    self._exclude(pg, node, "not at the new epoch after fencing")
                    continue
                states[pg][node] = meta
        self._require_quorum(
            {pg: list(by_node) for pg, by_node in states.items()}, "fenced", partial
        )
        missing_by_pg = {
            pg: [
                member.node
                for member in layout.members
                if member.node in self._answered and member.node not in metas.get(pg, {})
            ]
            for pg, layout in layouts.items()
        }

        lal = self._config.lal_lsns
        top = max(
            (meta.highest_lsn for by_node in states.values() for meta in by_node.values()),
            default=LSN_NONE,
        )
        pgcls = {
            pg: Lsn(sorted((meta.scl for meta in by_node.values()), reverse=True)[WRITE_QUORUM - 1])
            if len(by_node) >= WRITE_QUORUM
            else LSN_NONE
            for pg, by_node in states.items()
        }
        floor = Lsn(max(min(pgcls.values()), top - lal, 0))
        holders_needed = {pg: max(1, len(by_node) - 2) for pg, by_node in states.items()}
        epochs = {pg: Epochs(epoch_new, layouts[pg].membership_epoch) for pg in states}
        known: dict[Lsn, RecordSeen] = {}
        await self._read_union(states, epochs, floor, Lsn(top), known)
        vcl, vdl_found = durable_point(known, floor, holders_needed)
        # Every record above covered_after (of every PG) is in `known`.
        covered_after = floor
        if vdl_found is None:
            vdl_found, covered_after = await self._scan_back(
                states, epochs, floor, known, lambda record: record.cpl
            )
        vdl = vdl_found if vdl_found is not None else LSN_NONE
        lsn_size, page_count = await self._size_at(states, epochs, vdl, known, covered_after)
        last_lsn_by_pg = {
            pg: await self._last_at_or_below(pg, states, epochs, vdl, known, covered_after)
            for pg in states
        }
        truncated_before = max(
            (meta.truncated_up_to_lsn for by_node in states.values() for meta in by_node.values()),
            default=LSN_NONE,
        )
        truncate_up_to = Lsn(
            max(
                max(vdl, truncated_before) + lal + self._config.truncation_margin_lsns,
                top,
            )
        )
        await self._set_epoch(
            layouts,
            {pg: list(by_node) for pg, by_node in states.items()},
            epoch_new,
            (vdl, truncate_up_to),
            partial,
        )
        return RecoveredVolume(
            volume_epoch=epoch_new,
            pages_per_pg=pages_per_pg,
            members_by_pg={pg: layout.members for pg, layout in layouts.items()},
            membership_epoch_by_pg={pg: layout.membership_epoch for pg, layout in layouts.items()},
            floor=floor,
            vcl=vcl,
            vdl=vdl,
            truncate_up_to=truncate_up_to,
            last_lsn_by_pg={pg: lsn for pg, lsn in last_lsn_by_pg.items() if lsn != LSN_NONE},
            lsn_size_last=lsn_size,
            page_count=page_count,
            records_read=self._records_read,
            excluded=list(self._excluded),
            missing_by_pg={pg: nodes for pg, nodes in missing_by_pg.items() if nodes},
        )

    # -- segment states -------------------------------------------------------------------

    async def _list(self) -> dict[PgIndex, dict[str, SegmentMeta]]:
        """The volume's segments by PG and node, from every node that answers."""
        listings = await list_segments(self._clients, self._timeout_s, self._config.node_wait_ms)
        metas: dict[PgIndex, dict[str, SegmentMeta]] = {}
        self._answered = set()
        for node, listing in listings.items():
            if isinstance(listing, BorealisError):
                log.warning("storage node did not answer during recovery", node=node, error=listing)
                continue
            self._answered.add(node)
            for meta in listing:
                if meta.volume_id == self.volume_id:
                    metas.setdefault(PgIndex(meta.pg), {})[node] = meta
        return metas

    def _layout(self, pg: PgIndex, by_node: dict[str, SegmentMeta], epoch: int) -> _PgLayout:
        """The PG's members and page range, from its segments at the volume epoch and
        the newest membership epoch among them."""
        current = [meta for meta in by_node.values() if meta.volume_epoch == epoch]
        if not current:
            current = list(by_node.values())
        membership_epoch = max(meta.membership_epoch for meta in current)
        newest = [meta for meta in current if meta.membership_epoch == membership_epoch]
        layout = _PgLayout(
            list(newest[0].members),
            Epoch(membership_epoch),
            newest[0].first_page,
            newest[0].page_count,
        )
        for meta in newest:
            if (meta.members, meta.first_page, meta.page_count) != (
                layout.members,
                layout.first_page,
                layout.page_count,
            ):
                raise Corruption(
                    "segments of a PG disagree on members or page range at one epoch",
                    pg=pg,
                    membership_epoch=membership_epoch,
                )
        return layout

    def _pages_per_pg(self, layouts: Mapping[PgIndex, _PgLayout]) -> int:
        sizes = {layout.page_count for layout in layouts.values()}
        if len(sizes) != 1:
            raise Corruption("PGs of the volume differ in size", sizes=sorted(sizes))
        (pages_per_pg,) = sizes
        for pg, layout in layouts.items():
            if layout.first_page != pg * pages_per_pg:
                raise Corruption(
                    "a PG's first page does not match its index",
                    pg=pg,
                    first_page=layout.first_page,
                    pages_per_pg=pages_per_pg,
                )
        return pages_per_pg

    def _exclude(self, pg: PgIndex, node: str, why: str) -> None:
        self._excluded.append(f"{pg}/{node}: {why}")
        log.warning("segment left out of recovery", pg=pg, node=node, why=why)

    def _require_quorum(
        self,
        usable: Mapping[PgIndex, Sequence[str]],
        what: str,
        exempt: Collection[PgIndex] = (),
    ) -> None:
        short = {
            pg: len(nodes)
            for pg, nodes in usable.items()
            if len(nodes) < WRITE_QUORUM and pg not in exempt
        }
        if short:
            raise Unavailable(
                f"cannot open the volume: PGs without a write quorum of {what}",
                volume=self.volume_id,
                segments_by_pg=short,
                excluded="; ".join(self._excluded) or "none",
            )

    async def _set_epoch(
        self,
        layouts: Mapping[PgIndex, _PgLayout],
        nodes_by_pg: Mapping[PgIndex, Sequence[str]],
        epoch: Epoch,
        truncate: tuple[Lsn, Lsn] | None,
        exempt: Collection[PgIndex] = (),
    ) -> dict[PgIndex, list[str]]:
        """SetEpoch on the given segments (retried a few times); the nodes that
        accepted, per PG. Each PG but the exempt ones needs a write quorum."""
        accepted: dict[PgIndex, list[str]] = {pg: [] for pg in nodes_by_pg}
        pending = [(pg, node) for pg, nodes in nodes_by_pg.items() for node in nodes]
        errors: dict[tuple[PgIndex, str], BorealisError] = {}
        for _ in range(SET_EPOCH_ATTEMPTS):
            if not pending:
                break
            results = await asyncio.gather(
                *(
                    self._call(
                        self._clients[node].set_epoch(
                            SegmentId(self.volume_id, pg),
                            Epochs(epoch, layouts[pg].membership_epoch),
                            truncate=truncate,
                            timeout_s=self._timeout_s,
                        )
                    )
                    for pg, node in pending
                ),
                return_exceptions=True,
            )
            failed = []
            for (pg, node), result in zip(pending, results, strict=True):
                if isinstance(result, BorealisError):
                    errors[(pg, node)] = result
                    failed.append((pg, node))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    accepted[pg].append(node)
            pending = failed
        for pg, node in pending:
            self._exclude(pg, node, f"SetEpoch refused: {errors[(pg, node)]}")
        self._require_quorum(accepted, "segments accepting the new epoch", exempt)
        return accepted

    # -- reading records -------------------------------------------------------------------

    async def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        async with self._calls:
            return await coroutine

    async def _read_segment(
        self, pg: PgIndex, node: str, epochs: Epochs, after: Lsn, up_to: Lsn
    ) -> list[tuple[Any, ...]]:
        """The headers of the segment's records with after < lsn <= up_to."""
        client = self._clients[node]
        segment_id = SegmentId(self.volume_id, pg)
        headers: list[tuple[Any, ...]] = []
        for _ in range(READ_RECORDS_PAGES_MAX):
            records, more, _ = await self._call(
                client.read_records(
                    segment_id,
                    epochs,
                    after,
                    up_to,
                    bytes_max=self._config.read_records_bytes_max,
                    timeout_s=self._timeout_s,
                )
            )
            for data in records:
                headers.append(redo.check(data, Corruption))
            if not more or not records:
                return headers
            after = Lsn(headers[-1][1])
        raise Unavailable("ReadRecords kept saying `more`", pg=pg, node=node)

    async def _read_union(
        self,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        after: Lsn,
        up_to: Lsn,
        known: dict[Lsn, RecordSeen],
    ) -> list[Lsn]:
        """Reads every usable segment's records in (after, up_to] into `known`,
        counting holders; returns the LSNs read. PGs with nothing above `after` are
        skipped."""
        work = [
            (pg, node)
            for pg, by_node in states.items()
            if max((meta.highest_lsn for meta in by_node.values()), default=LSN_NONE) > after
            for node in by_node
        ]
        results = await asyncio.gather(
            *(self._read_segment(pg, node, epochs[pg], after, up_to) for pg, node in work)
        )
        read: set[Lsn] = set()
        for (pg, _node), headers in zip(work, results, strict=True):
            self._records_read += len(headers)
            for header in headers:
                _, lsn, prev_volume, prev_pg, _, page, kind, flags, _, _ = header
                record = known.get(lsn)
                if record is None:
                    known[lsn] = RecordSeen(
                        pg,
                        Lsn(prev_volume),
                        Lsn(prev_pg),
                        bool(flags & redo.FLAG_CPL),
                        kind == redo.KIND_SIZE,
                        page,
                    )
                elif record.pg != pg or record.prev_lsn_volume != prev_volume:
                    raise Corruption("two different records with one LSN", lsn=lsn, pg=pg)
                else:
                    record.holders += 1
                read.add(lsn)
        return sorted(read)

    async def _scan_back(
        self,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        below: Lsn,
        known: dict[Lsn, RecordSeen],
        wanted: Callable[[RecordSeen], bool],
    ) -> tuple[Lsn | None, Lsn]:
        """Reads windows (lo, hi] downward from `below` (doubling) until one holds a
        wanted record; (its highest such LSN or None, the lowest `lo` read)."""
        window = self._config.recovery_window_lsns
        hi = below
        while hi > LSN_NONE:
            lo = Lsn(max(0, hi - window))
            read = await self._read_union(states, epochs, lo, hi, known)
            hits = [lsn for lsn in read if wanted(known[lsn])]
            if hits:
                return max(hits), lo
            hi = lo
            window *= 2
        return None, LSN_NONE

    async def _size_at(
        self,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        vdl: Lsn,
        known: dict[Lsn, RecordSeen],
        covered_after: Lsn,
    ) -> tuple[Lsn, int]:
        """(LSN, page count) of the newest SIZE record at or below VDL; (0, 0) if none."""
        sizes = [lsn for lsn, record in known.items() if record.size and lsn <= vdl]
        if not sizes and covered_after > LSN_NONE and PgIndex(0) in states:
            found, _ = await self._scan_back(
                {PgIndex(0): states[PgIndex(0)]},
                epochs,
                covered_after,
                known,
                lambda record: record.size,
            )
            sizes = [found] if found is not None else []
        if not sizes:
            return LSN_NONE, 0
        lsn = max(sizes)
        return lsn, known[lsn].page

    async def _last_at_or_below(
        self,
        pg: PgIndex,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        vdl: Lsn,
        known: dict[Lsn, RecordSeen],
        covered_after: Lsn,
    ) -> Lsn:
        """The PG's last record at or below VDL: the new writer's first record of
        the PG links to it (storage builds the segment chain from that link)."""
        mine = [lsn for lsn, record in known.items() if record.pg == pg and lsn > covered_after]
        below = [lsn for lsn in mine if lsn <= vdl]
        if below:
            return max(below)
        if not mine:
            # Every record of the PG is at or below covered_after (<= VDL).
            return Lsn(max((meta.highest_lsn for meta in states[pg].values()), default=LSN_NONE))
        prev = known[min(mine)].prev_lsn_pg
        if prev <= vdl:
            return prev
        # The PG's first record above VDL follows one missing everywhere: look below.
        found, _ = await self._scan_back(
            {pg: states[pg]}, epochs, covered_after, known, lambda record: record.pg == pg
        )
        return found if found is not None else LSN_NONE
