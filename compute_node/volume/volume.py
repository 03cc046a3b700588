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

Reopening (`open`) is DESIGN.md section 8's recovery, for a writer that stopped
or was killed, or a reader promoted to writer (see recovery.py). It fences every
older writer. A writer that is fenced (`shipper.fenced`, a WriterFenced error)
refuses every later admit and read from storage with that error: it must stop
serving as the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from borealis import redo
from borealis.errors import (
    AlreadyExists,
    BorealisError,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    Unavailable,
    WriterFenced,
)
from borealis.ids import LSN_NONE, Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.redo import PAGE_SIZE_BYTES, ZERO_PAGE, RedoRecord
from compute_node.engine.source import CommitChanges
from compute_node.volume.cache import BufferCache
from compute_node.volume.config import VolumeConfig
from compute_node.volume.durability import DurabilityTracker
from compute_node.volume.lsn import LsnAllocator
from compute_node.volume.membership import HYDRATION_POLL_S, MemberSets, replaced
from compute_node.volume.reader import PageReader
from compute_node.volume.recovery import RecoveredVolume, Recovery, list_segments
from compute_node.volume.shipper import Shipper
from compute_node.volume.topology import WRITE_QUORUM, Topology
from storage_node.client import StorageClient
from storage_node.segment import Member

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


class VolumeObserver(Protocol):
    """Told, on the volume's event loop and in LSN order, of every commit group, VDL
    advance and new PG: the writer's redo stream to readers
    (compute_node/replication/publisher.py). Must not raise or block."""

    def on_commit(
        self, assignments: list[Any], records: list[bytes], commit_time_us: int
    ) -> None: ...

    def on_vdl(self, vdl: Lsn) -> None: ...

    def on_pg_members(self, pg: PgIndex, membership_epoch: Epoch, members: list[Member]) -> None:
        """A new PG, or a PG whose membership changed: read it from `members`."""


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
    # PGs moved to a replacement storage node (membership changes settled).
    pgs_moved: int = 0


VOLUME_METRICS = (
    ("volume_commits_total", "counter", "Commit groups."),
    ("volume_records_total", "counter", "Redo records created."),
    ("volume_record_bytes_total", "counter", "Bytes of encoded redo records."),
    ("volume_redo_payload_bytes_total", "counter", "Bytes of redo payloads (deltas, images)."),
    ("volume_dirty_bytes_total", "counter", "Bytes of the pages SQLite dirtied in commits."),
    ("volume_admit_waits_total", "counter", "Commits that waited at the LSN allocation limit."),
    ("volume_pgs_created_total", "counter", "Protection groups created."),
    ("volume_storage_reads_total", "counter", "Page reads from storage (cache misses)."),
    ("volume_pgs_moved_total", "counter", "PGs moved to a replacement storage node."),
)


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
        # Each PG's members to read from: during a membership change, the new set
        # and the node being replaced (`_changes` has both sets).
        self._members: dict[PgIndex, list[Member]] = {}
        self._changes: dict[PgIndex, MemberSets] = {}
        # PGs 0 .. _pg_ready_count - 1 all exist (read by worker threads in admit).
        self._pg_ready_count = 0
        self._pg_lock = asyncio.Lock()
        # One storage node replacement at a time.
        self._membership_lock = asyncio.Lock()
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
            catch_up=recovered.catch_up if recovered is not None else None,
        )
        self._membership_epoch: dict[PgIndex, Epoch] = {}
        self._read_timeout_s = config.reader.read_timeout_ms / 1000 + LOOP_GRACE_S
        self._admit_timeout_s = config.admit_timeout_ms / 1000
        self._closed = False
        self._observers: list[VolumeObserver] = []
        self._vdl_listeners: list[Callable[[Lsn], None]] = []
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
        there. See recovery.py."""
        config = config or VolumeConfig()
        clients = _clients_for(nodes, config)
        try:
            recovered = await Recovery(volume_id, clients, config).run()
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
                recovered.caught_up_by_pg.get(pg, ()),
            )
        log.info(
            "volume opened",
            volume=volume_id,
            volume_epoch=recovered.volume_epoch,
            vdl=recovered.vdl,
            vcl=recovered.vcl,
            floor=recovered.floor,
            repaired=";".join(
                f"{pg}:{','.join(nodes)}" for pg, nodes in recovered.repaired_by_pg.items()
            )
            or "none",
            records_repaired=recovered.records_repaired,
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
        checked: Iterable[str] | None = None,
    ) -> None:
        """Makes a PG known to the reader and the shipper (on the loop). `checked`:
        the segments recovery left at the new epoch with its truncation (None for a
        new PG); the shipper checks the others before appending to them."""
        self._membership_epoch[pg] = membership_epoch
        self._members[pg] = members
        for member in members:
            self._client_of(member)
        first_page = self._topology.first_page(pg)
        self._shipper.add_pg(
            pg,
            members,
            self._epochs_of(pg),
            first_page,
            self._topology.pages_per_pg,
            lsn_last,
            missing,
            checked,
        )
        self._tell_members(pg)
        ready = self._pg_ready_count
        while PgIndex(ready) in self._members:
            ready += 1
        self._pg_ready_count = ready

    def _client_of(self, member: Member) -> StorageClient:
        """The node's client; a replacement node the cluster config did not list
        gets one from the address in the PG's membership."""
        client = self._clients.get(member.node)
        if client is None:
            timeout_s = self.config.control_rpc_timeout_ms / 1000
            client = self._clients[member.node] = StorageClient(member.address, timeout_s=timeout_s)
        return client

    def _tell_members(self, pg: PgIndex) -> None:
        for observer in self._observers:
            observer.on_pg_members(pg, self._membership_epoch[pg], list(self._members[pg]))

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
        results = await asyncio.gather(
            *(self._set_membership(m, pg, epochs, members, created=True) for m in members),
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
        self._loop.call_soon_threadsafe(self._submit, assignments, records, commit_time_us)
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

    def _submit(self, assignments: list[Any], records: list[bytes], commit_time_us: int) -> None:
        # On the loop. Observers first: the stream carries a group before any VDL
        # advance that covers it, and the shipper may advance the VDL.
        for observer in self._observers:
            observer.on_commit(assignments, records, commit_time_us)
        self._shipper.submit(assignments, records)

    def _vdl_advanced(self, vdl: Lsn) -> None:
        # The copy first: once the cache unpins a page, a reader that misses it must
        # see a VDL at least as high (read_page reads at min(read point, VDL)).
        self._vdl = vdl
        self._cache.set_vdl(vdl)
        for observer in self._observers:
            observer.on_vdl(vdl)
        for listener in self._vdl_listeners:
            listener(vdl)

    # -- replication (on the loop) -------------------------------------------------------

    async def until_fenced(self) -> WriterFenced:
        """Returns once storage refused this writer for a newer writer's epoch."""
        await self._shipper.fenced_event.wait()
        assert self._shipper.fenced is not None
        return self._shipper.fenced

    def add_vdl_listener(self, listener: Callable[[Lsn], None]) -> None:
        """Calls `listener(vdl)` on every VDL advance, on the loop (the engine's
        durable reads follow the VDL with it). Must not block."""
        self._vdl_listeners.append(listener)

    def add_observer(self, observer: VolumeObserver) -> None:
        """Adds a redo stream observer; call before the engine commits (on the loop)."""
        self._observers.append(observer)

    def replication_start(self) -> tuple[Lsn, int, dict[PgIndex, Lsn]]:
        """(newest CPL, page count there, each PG's newest record) as of the last
        commit group that reached the loop; call before the engine commits, then
        follow commits with an observer."""
        assert threading.get_ident() == self._loop_thread
        return self._lsn_newest, self._page_count, self._allocator.lsn_last_by_pg()

    def pg_members(self) -> dict[PgIndex, tuple[Epoch, list[Member]]]:
        """Each PG's membership epoch and the members to read it from (on the loop)."""
        return {
            pg: (self._membership_epoch[pg], list(members)) for pg, members in self._members.items()
        }

    @property
    def pages_per_pg(self) -> int:
        return self._topology.pages_per_pg

    async def send_pgmrpl(self, pgmrpl_by_pg: Mapping[PgIndex, Lsn], timeout_s: float) -> int:
        """Tells every segment of each PG its PGMRPL (storage keeps versions at or
        above it for reads and may garbage-collect below). Failures are logged and
        retried by the next call; returns the number of segments that took it."""
        calls = []
        for pg, lsn in pgmrpl_by_pg.items():
            if lsn == LSN_NONE or pg not in self._members:
                continue
            segment_id = SegmentId(self.volume_id, pg)
            epochs = self._epochs_of(pg)
            for member in self._members[pg]:
                calls.append(
                    self._clients[member.node].set_pgmrpl(
                        segment_id, epochs, lsn, timeout_s=timeout_s
                    )
                )
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [result for result in results if isinstance(result, BaseException)]
        for error in failed:
            if not isinstance(error, BorealisError):
                raise error
        if failed:
            log.warning("PGMRPL not taken by some segments", failed=len(failed), error=failed[0])
        return len(results) - len(failed)

    # -- storage node replacement (on the loop; see membership.py) --------------------------

    async def replace_node(self, old: str, new: Member, timeout_s: float) -> list[PgIndex]:
        """Moves every PG with a segment on node `old` to node `new`; returns them
        once every one has settled on its new member set. Raises DeadlineExceeded
        when the new segments did not catch up within `timeout_s` (the changes stay
        in progress; calling again continues them), Unavailable when the new node
        cannot create its segments."""
        self._check_open()
        if old == new.node:
            raise InvalidRequest("a node cannot replace itself", node=old)
        deadline_s = self._loop.time() + timeout_s
        async with self._membership_lock:
            async with self._pg_lock:
                # PGs created from now on are placed on the new node.
                if any(node.node == old for node in self._topology.nodes):
                    self._topology = self._topology.replacing(old, new)
                pgs = sorted(
                    pg
                    for pg, members in self._members.items()
                    if any(member.node in (old, new.node) for member in members)
                )
                if not pgs:
                    raise NotFound("no PG has a segment on the node", node=old)
                for pg in pgs:
                    if pg not in self._changes and any(m.node == old for m in self._members[pg]):
                        await self._begin_change(pg, old, new)
            changing = [pg for pg in pgs if pg in self._changes]
            targets = {pg: self._tracker.pgcl(pg) for pg in changing}
            await asyncio.gather(
                *(self._await_caught_up(pg, new, targets[pg], deadline_s) for pg in changing)
            )
            for pg in changing:
                await self._settle_change(pg)
        return pgs

    async def _begin_change(self, pg: PgIndex, old: str, new: Member) -> None:
        """Step 1: the new segment (hydrating), the transitional quorum, epoch e+1."""
        members_old = self._members[pg]
        members = replaced(members_old, old, new)
        epochs = Epochs(self._volume_epoch, Epoch(self._membership_epoch[pg] + 1))
        await self._set_membership(
            new, pg, epochs, members, members_old, created=True, hydrate=True
        )
        self._membership_epoch[pg] = epochs.membership
        self._changes[pg] = MemberSets(members, members_old)
        # Reads may use the old node while it lives; the new one answers once its
        # SCL covers the read point.
        self._members[pg] = [*members, *(m for m in members_old if m.node == old)]
        self._shipper.change_members(pg, members, members_old, epochs)
        await self._set_members(pg, members_old, members, members_old)
        self._tell_members(pg)
        log.info(
            "membership change begun",
            pg=pg,
            old=old,
            new=new.node,
            membership_epoch=epochs.membership,
        )

    async def _await_caught_up(
        self, pg: PgIndex, new: Member, target: Lsn, deadline_s: float
    ) -> None:
        """Waits until the new segment has hydrated and holds the PG up to `target`."""
        client = self._client_of(new)
        segment_id = SegmentId(self.volume_id, pg)
        timeout_s = self.config.control_rpc_timeout_ms / 1000
        while True:
            self._check_open()
            try:
                meta = await client.state(segment_id, timeout_s=timeout_s)
                if not meta.hydrating and meta.scl >= target:
                    return
                where = f"hydrating={meta.hydrating} scl={meta.scl}"
            except BorealisError as error:
                where = str(error)
            if self._loop.time() >= deadline_s:
                raise DeadlineExceeded(
                    "the new segment has not caught up yet; the change goes on, ask again",
                    pg=pg,
                    node=new.node,
                    target=target,
                    state=where,
                )
            await asyncio.sleep(HYDRATION_POLL_S)

    async def _settle_change(self, pg: PgIndex) -> None:
        """Step 2: the new member set alone, epoch e+2."""
        change = self._changes.pop(pg)
        epochs = Epochs(self._volume_epoch, Epoch(self._membership_epoch[pg] + 1))
        self._membership_epoch[pg] = epochs.membership
        self._members[pg] = change.members
        self._shipper.change_members(pg, change.members, [], epochs)
        await self._set_members(pg, change.members, change.members, [])
        self._tell_members(pg)
        self.stats.pgs_moved += 1
        log.info(
            "membership change settled",
            pg=pg,
            members=",".join(member.node for member in change.members),
            membership_epoch=epochs.membership,
        )

    async def _set_membership(
        self,
        target: Member,
        pg: PgIndex,
        epochs: Epochs,
        members: list[Member],
        members_old: list[Member] | None = None,
        created: bool = False,
        hydrate: bool = False,
    ) -> None:
        """SetMembership of the PG's segment on `target`. `created`: the segment is
        new there (a new PG, or one joining by replacement: `hydrate`, it copies its
        peers first) and takes this writer's truncation range, as its peers hold it."""
        client = self._client_of(target)
        segment_id = SegmentId(self.volume_id, pg)
        await client.set_membership(
            segment_id,
            epochs,
            self._topology.first_page(pg),
            self._topology.pages_per_pg,
            members,
            members_old=members_old,
            hydrate=hydrate,
            timeout_s=self.config.control_rpc_timeout_ms / 1000,
        )
        if created:
            await self._shipper.adopt_truncation(client, segment_id, epochs)

    async def _set_members(
        self,
        pg: PgIndex,
        targets: list[Member],
        members: list[Member],
        members_old: list[Member],
    ) -> None:
        """SetMembership on `targets` at the PG's epochs. Best effort: a segment
        that misses it refuses the shipper's next append and is brought up to date
        then (Shipper._check_epoch)."""
        epochs = self._epochs_of(pg)
        results = await asyncio.gather(
            *(self._set_membership(m, pg, epochs, members, members_old) for m in targets),
            return_exceptions=True,
        )
        for member, result in zip(targets, results, strict=True):
            if isinstance(result, BorealisError):
                log.info(
                    "segment missed a membership change", pg=pg, node=member.node, error=result
                )
            elif isinstance(result, BaseException):
                raise result

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
            ("volume_pgs_moved_total", {}, stats.pgs_moved),
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
