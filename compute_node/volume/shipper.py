"""Redo shipping: per-PG group commit, one encoding per batch, six segments, retries.

The commit path hands every commit group over already encoded (`submit`, on the
event loop; the volume client calls it through `loop.call_soon_threadsafe` from the
SQLite worker thread, so groups arrive in LSN order). From there:

- Group commit. Each PG has a queue of records not yet in a batch. A new batch is
  cut only when the PG has fewer than `batches_in_flight_max` batches short of a
  write quorum (1 by default): while a batch is in flight, the records of
  concurrent transactions accumulate and go together in the next one. A batch is
  bounded in records and bytes (below the storage node's own limits).
- One encoding, six sends. A batch is serialized once (`encode_append`) and the
  same bytes go to the 6 segments of its PG, each over the one client (gRPC
  channel) of its storage node, shared by all PGs. Every RPC has a deadline.
- Acks. An answer carries the segment's SCL. It goes to the durability tracker
  (PGCL, VCL, VDL) and to `on_scl` (the page reader learns which segments can serve
  which read points). When the VDL advances, waiters at or below it are released
  and `on_vdl` is called.
- Retries. A segment whose RPC failed or timed out is retried after a bounded
  exponential backoff with what it is missing, the records above its last SCL,
  encoded for it alone (a catch-up). A segment that acks with an SCL below what it
  was sent has a hole and is caught up the same way. Writes go on with any 4 of 6:
  nothing waits for the slowest segments.
- Retention. Records are kept per PG until every segment has acked them, up to
  `retained_bytes_max` per PG; beyond it, records complete at a write quorum are
  dropped, and a segment that still lacked them is "left behind" (logged once):
  the storage nodes' gossip fills it from its peers, and new batches keep going
  to it (storage holds records above a hole until the hole is filled).
  Records above the PGCL are never dropped; the LAL bounds them.
- Stalls. Without a write quorum nothing becomes durable: the writer stops at
  the LAL, and waiters fail after their timeout with Unavailable naming the PG
  that holds the VCL back (`DurabilityTracker.oldest_incomplete`), its segments'
  SCLs and their last errors.
- Epochs. After a recovery, a segment the recovery did not finish (its node was
  down, or it took the new epoch but not the truncation) is checked before the
  first append to it, and so is any segment that refuses the writer's epochs
  (StaleEpoch): GetSegmentState tells which side is behind. A segment behind the
  writer is brought to its epoch with the truncation ranges of
  `epochs.catch_up_truncations` (so records an old writer left above the VDL are
  deleted, never served) and then caught up like any lagging segment.
- Fencing. A segment ahead of the writer (a newer volume or membership epoch) is
  retried at the slowest pace. When that many segments of one PG are ahead that
  no write quorum is left (3 of 6), a newer writer has taken the volume: the
  shipper stops, fails every waiter with WriterFenced, and `fenced` is set so
  that every later admit is refused with it too. Nothing the fenced writer
  commits from then on is acknowledged: a commit is acknowledged only at a write
  quorum at the writer's epoch, which no longer exists.

Everything here runs on one event loop and is not thread-safe; worker threads use
`loop.call_soon_threadsafe` (submit, add_waiter).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from borealis.errors import BorealisError, NotFound, StaleEpoch, Unavailable, WriterFenced
from borealis.ids import LSN_NONE, Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from compute_node.volume.durability import AckRefused, DurabilityTracker, Waiters
from compute_node.volume.epochs import EpochCatchUp, catch_up_truncations
from compute_node.volume.lsn import Assignment
from compute_node.volume.topology import SEGMENTS_PER_PG, WRITE_QUORUM
from storage_node.client import AppendAck, encode_append
from storage_node.segment import Member, SegmentMeta

log = get_logger("compute_node.shipper")

# Segments of a PG that must refuse the writer's epochs before it counts as fenced:
# with that many refusing, no write quorum is left.
FENCING_SEGMENTS = SEGMENTS_PER_PG - WRITE_QUORUM + 1

# Retained records are compacted out of their lists once this many are dropped
# (and they are at least half of the lists), so dropping stays O(1) amortised.
RETAINED_COMPACT_MIN = 1024


class _SegmentAhead(StaleEpoch):
    """The segment is at a newer volume or membership epoch than the writer."""


class ShipperClient(Protocol):
    """The part of storage_node.client.StorageClient the shipper calls."""

    async def append_encoded(self, request: bytes, timeout_s: float | None = None) -> AppendAck: ...

    async def set_membership(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        first_page: int,
        page_count: int,
        members: list[Member],
        timeout_s: float | None = None,
        members_old: list[Member] | None = None,
        hydrate: bool = False,
    ) -> Any: ...

    async def state(self, segment_id: SegmentId, timeout_s: float | None = None) -> SegmentMeta: ...

    async def set_epoch(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        truncate: tuple[int, int] | None = None,
        timeout_s: float | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class ShipperConfig:
    # One batch (storage refuses more than 8192 records or 16 MiB by default).
    batch_records_max: int = 4096
    batch_bytes_max: int = 4 * 2**20
    # Batches of one PG sent and not yet at a write quorum. With 1, a PG's records
    # wait while a batch is in flight and then go together: group commit.
    batches_in_flight_max: int = 1
    # AppendRedo calls in flight to one segment (a slow segment is skipped for new
    # batches beyond this and caught up later).
    requests_per_segment_max: int = 4
    # Deadline of one AppendRedo call.
    rpc_timeout_ms: float = 5000.0
    # Backoff after a failed call: doubles per consecutive failure, up to the max.
    retry_delay_min_ms: float = 20.0
    retry_delay_max_ms: float = 1000.0
    # Records kept per PG for segments that have not acked them yet.
    retained_bytes_max: int = 16 * 2**20
    # How long a waiter (a commit waiting for VDL >= its CPL) waits by default.
    durable_timeout_ms: float = 30_000.0

    def __post_init__(self) -> None:
        assert self.batch_records_max > 0 and self.batch_bytes_max > 0
        assert self.batches_in_flight_max > 0 and self.requests_per_segment_max > 0
        assert self.rpc_timeout_ms > 0 and self.durable_timeout_ms > 0
        assert 0 < self.retry_delay_min_ms <= self.retry_delay_max_ms
        assert self.retained_bytes_max >= 0


@dataclass
class ShipperStats:
    groups: int = 0
    # Pairs (group, PG): a group with records in two PGs counts twice. RPCs per
    # segment per commit = rpcs / (6 * pg_groups).
    pg_groups: int = 0
    records: int = 0
    record_bytes: int = 0
    # Shared batches (encoded once, sent to the 6 segments).
    batches: int = 0
    batch_records: int = 0
    batch_bytes: int = 0
    # Every AppendRedo call, shared batches and catch-ups.
    rpcs: int = 0
    rpc_bytes: int = 0
    rpc_failures: int = 0
    acks: int = 0
    acks_refused: int = 0
    catchup_rpcs: int = 0
    catchup_records: int = 0
    segments_left_behind: int = 0
    segments_recreated: int = 0
    segments_caught_up: int = 0
    stale_epoch_refusals: int = 0
    waiter_timeouts: int = 0

    @property
    def batch_bytes_mean(self) -> float:
        return self.batch_bytes / self.batches if self.batches else 0.0

    @property
    def batch_records_mean(self) -> float:
        return self.batch_records / self.batches if self.batches else 0.0

    def rpcs_per_segment_per_commit(self) -> float:
        return self.rpcs / (SEGMENTS_PER_PG * self.pg_groups) if self.pg_groups else 0.0


SHIPPER_METRICS = (
    ("redo_groups_total", "counter", "Commit groups handed to the shipper."),
    ("redo_records_total", "counter", "Redo records handed to the shipper."),
    ("redo_record_bytes_total", "counter", "Bytes of redo records handed to the shipper."),
    ("redo_batches_total", "counter", "Batches cut (each encoded once, sent to 6 segments)."),
    ("redo_batch_records_total", "counter", "Records in batches."),
    ("redo_batch_bytes_total", "counter", "Bytes of records in batches."),
    ("redo_append_rpcs_total", "counter", "AppendRedo calls (batches and catch-ups)."),
    ("redo_append_rpc_failures_total", "counter", "AppendRedo calls that failed or timed out."),
    ("redo_acks_total", "counter", "AppendRedo answers counted."),
    ("redo_catchup_rpcs_total", "counter", "AppendRedo calls resending to a lagging segment."),
    ("redo_segments_left_behind_total", "counter", "Segments left to gossip to catch up."),
    ("redo_waiter_timeouts_total", "counter", "Commits that timed out waiting for durability."),
    ("redo_retained_bytes", "gauge", "Bytes of records kept for segments that lack them."),
    ("redo_queued_records", "gauge", "Records waiting for the next batch."),
    ("volume_vdl", "gauge", "Volume durable LSN."),
    ("volume_lsn_sent", "gauge", "Highest LSN handed to the shipper."),
)


class _Segment:
    """What the shipper knows of one segment of a PG."""

    __slots__ = (
        "member",
        "node",
        "scl",
        "sent_up_to",
        "in_flight",
        "failures",
        "retry_at_s",
        "retry_timer",
        "missing",
        "check_epoch",
        "stale_epoch",
        "left_behind",
        "last_error",
    )

    def __init__(self, member: Member, sent_up_to: Lsn, missing: bool, check_epoch: bool) -> None:
        self.member = member
        self.node = member.node
        # The highest SCL the segment reported.
        self.scl: Lsn = LSN_NONE
        # Every record up to here is in a call in flight or answered: the next
        # records to send it are above. A failure or a hole moves it back.
        self.sent_up_to: Lsn = sent_up_to
        self.in_flight = 0
        self.failures = 0
        self.retry_at_s = 0.0
        self.retry_timer: asyncio.TimerHandle | None = None
        # The node does not have the segment (not created, or its data is gone).
        self.missing = missing
        # Its epochs (and truncation) must be checked before the next append: it
        # refused the writer's epochs, or recovery did not finish it.
        self.check_epoch = check_epoch
        # It is at a newer epoch than the writer (counts towards fencing).
        self.stale_epoch = False
        self.left_behind = False
        self.last_error = ""


class _Pg:
    """One PG's queue, retained records and segments."""

    def __init__(
        self,
        pg: PgIndex,
        segment_id: SegmentId,
        epochs: Epochs,
        members: Sequence[Member],
        first_page: int,
        page_count: int,
        lsn_last: Lsn,
        missing: Iterable[str],
        unchecked: Iterable[str],
    ) -> None:
        self.pg = pg
        self.segment_id = segment_id
        self.epochs = epochs
        self.members = list(members)
        # During a membership change, the member set being replaced (see
        # DurabilityTracker.set_members); empty otherwise.
        self.members_old: list[Member] = []
        self.first_page = first_page
        self.page_count = page_count
        absent = set(missing)
        check = set(unchecked)
        self.segments = [
            _Segment(m, lsn_last, m.node in absent, m.node in check and m.node not in absent)
            for m in members
        ]
        # Records not yet in a batch, and the bytes they hold.
        self.queue: deque[tuple[Lsn, bytes]] = deque()
        # Records batched and not yet acked by every segment, LSN ascending, as two
        # parallel lists from `retained_start` (bisect needs a list, not a deque).
        self.retained_lsns: list[Lsn] = []
        self.retained_data: list[bytes] = []
        self.retained_start = 0
        self.retained_bytes = 0
        # The PG's record just below the first retained one (the last dropped, or
        # the PG's last record when the shipper started).
        self.retained_floor: Lsn = lsn_last
        # The PG's last record that is in a batch.
        self.lsn_batched: Lsn = lsn_last
        # Last LSNs of the batches not yet at a write quorum.
        self.batches_open: deque[Lsn] = deque()


class _Waiter:
    __slots__ = ("future", "timer")

    def __init__(self, future: Any, timer: asyncio.TimerHandle | None) -> None:
        # An asyncio.Future or a concurrent.futures.Future (a worker thread's).
        self.future = future
        self.timer = timer


class Shipper:
    """Ships redo records to the segments of their PGs; see the module docstring.

    `clients` maps a storage node's name to its client (one per node, shared by
    every PG; the caller owns and closes them).
    """

    def __init__(
        self,
        volume_id: VolumeId,
        tracker: DurabilityTracker,
        clients: Mapping[str, ShipperClient],
        config: ShipperConfig | None = None,
        on_scl: Callable[[PgIndex, str, Lsn], None] | None = None,
        on_vdl: Callable[[Lsn], None] | None = None,
        catch_up: EpochCatchUp | None = None,
    ) -> None:
        """`catch_up`: after a recovery, how to bring segments that missed the new
        epoch or its truncation up to it (None for a new volume)."""
        self.volume_id = volume_id
        self.config = config or ShipperConfig()
        self.tracker = tracker
        self._clients = clients
        self._on_scl = on_scl
        self._on_vdl = on_vdl
        self._pgs: dict[PgIndex, _Pg] = {}
        self._waiters: Waiters[_Waiter] = Waiters()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rpc_timeout_s = self.config.rpc_timeout_ms / 1000
        self._closed = False
        self._epoch_catch_up = catch_up
        self.fenced: WriterFenced | None = None
        # Set when fenced: the instance steps down (compute_node/instance.py).
        self.fenced_event = asyncio.Event()
        self.stats = ShipperStats()

    # -- PGs ---------------------------------------------------------------------------

    def add_pg(
        self,
        pg: PgIndex,
        members: Sequence[Member],
        epochs: Epochs,
        first_page: int,
        page_count: int,
        lsn_last: Lsn = LSN_NONE,
        missing: Iterable[str] = (),
        checked: Iterable[str] | None = None,
    ) -> None:
        """Starts shipping to a PG: its 6 members, the epochs its requests carry, its
        page range (to re-create a segment a node lacks), and its last record
        (`lsn_last`: what its first new record links to; segments are assumed to
        hold up to it until they say otherwise). `missing` names members known not
        to have the segment yet; they get it (SetMembership) before their first
        append. `checked` names the members known to be at the writer's epoch with
        its truncation (recovery's); the others are checked before their first
        append (None: all are, a new PG)."""
        assert pg not in self._pgs, pg
        self.tracker.set_members(pg, [member.node for member in members])
        self._pgs[pg] = _Pg(
            pg,
            SegmentId(self.volume_id, pg),
            epochs,
            members,
            first_page,
            page_count,
            lsn_last,
            missing,
            () if checked is None else {m.node for m in members} - set(checked),
        )

    def has_pg(self, pg: PgIndex) -> bool:
        return pg in self._pgs

    def change_members(
        self,
        pg: PgIndex,
        members: Sequence[Member],
        members_old: Sequence[Member],
        epochs: Epochs,
    ) -> None:
        """Moves a PG to a new membership epoch: `members`, and during a change the
        set being replaced (`members_old`, empty when the change settles). Requests
        carry `epochs` from now on; a segment still at the older membership epoch
        refuses them and is brought to the new one (`_check_epoch`). A segment that
        joins starts with nothing acknowledged and is sent what is retained; one
        that leaves is forgotten (late answers are refused by the tracker)."""
        state = self._pgs[pg]
        state.epochs = epochs
        state.members = list(members)
        state.members_old = list(members_old)
        nodes = {member.node for member in (*members, *members_old)}
        kept = {segment.node: segment for segment in state.segments if segment.node in nodes}
        for segment in state.segments:
            if segment.node not in nodes and segment.retry_timer is not None:
                segment.retry_timer.cancel()
        for member in (*members, *members_old):
            if member.node not in kept:
                kept[member.node] = _Segment(member, state.retained_floor, False, False)
        state.segments = list(kept.values())
        vdl_before = self.tracker.vdl
        self.tracker.set_members(
            pg,
            [member.node for member in members],
            [member.node for member in members_old] if members_old else None,
        )
        if self.tracker.vdl > vdl_before:
            self._release()
        self._pump(state)

    # -- the commit path -----------------------------------------------------------------

    def submit(self, assignments: Sequence[Assignment], records: Sequence[bytes]) -> None:
        """Takes one commit group: its LSN assignments and encoded records, in order.

        Registers the group with the tracker and queues each record for its PG; then
        sends whatever may go now. Groups must arrive in LSN order.
        """
        assert len(assignments) == len(records) > 0
        self.tracker.group_sent(assignments)
        if self._closed or self.fenced is not None:
            # Registered (the tracker stays consistent) but never sent: the group's
            # waiters fail with the reason.
            return
        stats = self.stats
        stats.groups += 1
        stats.records += len(records)
        pgs = self._pgs
        touched: list[_Pg] = []
        for assignment, data in zip(assignments, records, strict=True):
            state = pgs[assignment.pg]
            if not touched or (touched[-1] is not state and state not in touched):
                touched.append(state)
            state.queue.append((assignment.lsn, data))
            stats.record_bytes += len(data)
        stats.pg_groups += len(touched)
        for state in touched:
            self._pump(state)

    # -- waiters -------------------------------------------------------------------------

    @property
    def vdl(self) -> Lsn:
        return self.tracker.vdl

    async def wait_durable(self, lsn: Lsn, timeout_s: float | None = None) -> Lsn:
        """Returns the VDL once it is at or above `lsn`; raises Unavailable (naming the
        PG that holds it back) after the timeout, StaleEpoch if the writer was fenced."""
        if self.tracker.vdl >= lsn:
            return self.tracker.vdl
        future: asyncio.Future[Lsn] = asyncio.get_running_loop().create_future()
        self.add_waiter(lsn, future, timeout_s)
        return await future

    def add_waiter(self, lsn: Lsn, future: Any, timeout_s: float | None = None) -> None:
        """Resolves `future` (asyncio or concurrent.futures) with the VDL once it is at
        or above `lsn`, or fails it after the timeout. On the event loop only."""
        if future.done():
            return
        if self.tracker.vdl >= lsn:
            future.set_result(self.tracker.vdl)
            return
        if self.fenced is not None or self._closed:
            future.set_exception(self._gone_error())
            return
        if timeout_s is None:
            timeout_s = self.config.durable_timeout_ms / 1000
        waiter = _Waiter(future, None)
        waiter.timer = asyncio.get_running_loop().call_later(
            timeout_s, self._time_out, lsn, waiter, timeout_s
        )
        self._waiters.add(lsn, waiter)

    def _time_out(self, lsn: Lsn, waiter: _Waiter, timeout_s: float) -> None:
        waiter.timer = None
        if waiter.future.done():
            return
        self.stats.waiter_timeouts += 1
        error = self.not_durable_error(lsn, timeout_s)
        log.warning("commit not durable in time", **error.context)
        waiter.future.set_exception(error)

    def not_durable_error(self, lsn: Lsn, timeout_s: float) -> Unavailable:
        """Why `lsn` is not durable: the PG holding the VCL back, its segments' SCLs
        and their last errors."""
        oldest = self.tracker.oldest_incomplete()
        if oldest is None:
            return Unavailable(
                "commit is not durable yet", lsn=lsn, vdl=self.tracker.vdl, timeout_s=timeout_s
            )
        lsn_oldest, pg = oldest
        state = self._pgs[pg]
        scls = ",".join(f"{s.node}:{s.scl}" for s in state.segments)
        errors = "; ".join(f"{s.node}: {s.last_error}" for s in state.segments if s.last_error)
        return Unavailable(
            f"commit is not durable: PG {pg} has no write quorum "
            f"({WRITE_QUORUM} of {SEGMENTS_PER_PG} segments) holding its records",
            pg=pg,
            lsn=lsn,
            lsn_incomplete=lsn_oldest,
            vdl=self.tracker.vdl,
            pgcl=self.tracker.pgcl(pg),
            timeout_s=timeout_s,
            scls=scls,
            errors=errors or "none",
        )

    def _release(self) -> None:
        vdl = self.tracker.vdl
        for waiter in self._waiters.release(vdl):
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_result(vdl)
        if self._on_vdl is not None:
            self._on_vdl(vdl)

    def _fail_waiters(self, error: BorealisError) -> None:
        for waiter in self._waiters.take_all():
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _gone_error(self) -> BorealisError:
        if self.fenced is not None:
            return self.fenced
        return Unavailable("the volume is closed; commits in flight may not be durable")

    # -- reads -----------------------------------------------------------------------------

    def lsn_readable(self, pg: PgIndex, lsn: Lsn) -> Lsn:
        """The PG's newest record at or below `lsn`, when the shipper still knows it.

        A read of the PG at `lsn` sees exactly what a read at that record sees, and
        segments serve reads only up to their SCL, which stops at the PG's own
        records: a PG nobody wrote to lately has segments with an SCL far below
        the volume's VDL. Older than the retained records, `lsn` itself is returned:
        then a write quorum of the PG is complete above it anyway (records are
        dropped only when acked by all segments or complete at a write quorum).
        """
        state = self._pgs.get(pg)
        if state is None:
            return lsn
        queue = state.queue
        if queue and queue[0][0] <= lsn:
            # Queued records are above the VDL, reads at or below it: rare.
            best = queue[0][0]
            for record_lsn, _ in queue:
                if record_lsn > lsn:
                    break
                best = record_lsn
            return best
        lsns = state.retained_lsns
        index = bisect.bisect_right(lsns, lsn, lo=state.retained_start)
        if index > state.retained_start:
            return lsns[index - 1]
        if lsn >= state.retained_floor:
            return state.retained_floor
        return lsn

    # -- sending ---------------------------------------------------------------------------

    def _pump(self, state: _Pg) -> None:
        """Cuts the batches that may go now and sends what each segment may take."""
        if self._closed or self.fenced is not None:
            return
        config = self.config
        pgcl = self.tracker.pgcl(state.pg)
        batches_open = state.batches_open
        while batches_open and batches_open[0] <= pgcl:
            batches_open.popleft()
        now_s = time.monotonic()
        while state.queue and len(batches_open) < config.batches_in_flight_max:
            lsn_before = state.lsn_batched
            request, lsn_last = self._cut(state)
            batches_open.append(lsn_last)
            for segment in state.segments:
                if segment.sent_up_to == lsn_before and self._ready(state, segment, now_s):
                    self._send(state, segment, request, lsn_last)
        for segment in state.segments:
            if segment.sent_up_to < state.lsn_batched and self._ready(state, segment, now_s):
                self._catch_up(state, segment)

    def _cut(self, state: _Pg) -> tuple[bytes, Lsn]:
        """Takes the next batch off the PG's queue into the retained records and
        encodes it once; (request, last LSN)."""
        config = self.config
        queue = state.queue
        records: list[bytes] = []
        size = 0
        lsn = state.lsn_batched
        lsns = state.retained_lsns
        datas = state.retained_data
        while queue and len(records) < config.batch_records_max:
            lsn_next, data = queue[0]
            if records and size + len(data) > config.batch_bytes_max:
                break
            queue.popleft()
            records.append(data)
            size += len(data)
            lsns.append(lsn_next)
            datas.append(data)
            lsn = lsn_next
        assert records, "a batch has at least one record"
        state.lsn_batched = lsn
        state.retained_bytes += size
        stats = self.stats
        stats.batches += 1
        stats.batch_records += len(records)
        stats.batch_bytes += size
        return encode_append(state.segment_id, state.epochs, records), lsn

    def _ready(self, state: _Pg, segment: _Segment, now_s: float) -> bool:
        """Whether the segment may be sent a request now; schedules a retry if it is
        only waiting for its backoff."""
        if segment.in_flight >= self.config.requests_per_segment_max:
            return False
        if (segment.missing or segment.check_epoch) and segment.in_flight:
            return False  # one call creates or checks the segment; the others wait
        if now_s >= segment.retry_at_s:
            return True
        if segment.retry_timer is None:
            segment.retry_timer = asyncio.get_running_loop().call_later(
                segment.retry_at_s - now_s, self._retry, state, segment
            )
        return False

    def _retry(self, state: _Pg, segment: _Segment) -> None:
        segment.retry_timer = None
        self._pump(state)

    def _catch_up(self, state: _Pg, segment: _Segment) -> None:
        """Sends a lagging segment the retained records above what it was sent."""
        if segment.sent_up_to < state.retained_floor:
            # It lacks records the shipper no longer has (see _left_behind): send
            # what is retained; storage holds it above the hole until gossip fills it.
            segment.sent_up_to = state.retained_floor
        lsns = state.retained_lsns
        start = bisect.bisect_right(lsns, segment.sent_up_to, lo=state.retained_start)
        end = start
        size = 0
        config = self.config
        datas = state.retained_data
        while (
            end < len(lsns)
            and end - start < config.batch_records_max
            and (end == start or size + len(datas[end]) <= config.batch_bytes_max)
        ):
            size += len(datas[end])
            end += 1
        if end == start:
            # Nothing retained above it: everything it lacks is below the floor.
            segment.sent_up_to = state.lsn_batched
            return
        request = encode_append(state.segment_id, state.epochs, datas[start:end])
        self.stats.catchup_rpcs += 1
        self.stats.catchup_records += end - start
        self._send(state, segment, request, lsns[end - 1])

    def _send(self, state: _Pg, segment: _Segment, request: bytes, lsn_last: Lsn) -> None:
        segment.in_flight += 1
        if lsn_last > segment.sent_up_to:
            segment.sent_up_to = lsn_last
        self.stats.rpcs += 1
        self.stats.rpc_bytes += len(request)
        task = asyncio.get_running_loop().create_task(self._append(state, segment, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, state: _Pg, segment: _Segment, request: bytes) -> None:
        client = self._clients[segment.node]
        try:
            if segment.missing:
                await self._recreate(state, segment, client)
            if segment.check_epoch:
                await self._check_epoch(state, segment, client)
            ack = await client.append_encoded(request, timeout_s=self._rpc_timeout_s)
        except BorealisError as error:
            segment.in_flight -= 1
            self._failed(state, segment, error)
        except asyncio.CancelledError:
            segment.in_flight -= 1
            raise
        except Exception as error:  # noqa: BLE001 - a bug must not kill the shipper silently
            log.error("append failed unexpectedly", exc_info=True, pg=state.pg, node=segment.node)
            segment.in_flight -= 1
            self._failed(state, segment, Unavailable(repr(error)))
        else:
            segment.in_flight -= 1
            self._acked(state, segment, ack)
        self._pump(state)

    async def _recreate(self, state: _Pg, segment: _Segment, client: ShipperClient) -> None:
        """Creates the segment on its node (SetMembership with the PG's current
        epochs and members); it hydrates from its peers."""
        await client.set_membership(
            state.segment_id,
            state.epochs,
            state.first_page,
            state.page_count,
            state.members,
            members_old=state.members_old,
            # It joins a PG whose peers may have garbage-collected old records: it
            # copies their page images first (storage_node/hydration.py).
            hydrate=True,
            timeout_s=self._rpc_timeout_s,
        )
        await self.adopt_truncation(client, state.segment_id, state.epochs)
        segment.missing = False
        self.stats.segments_recreated += 1
        log.info("segment created on its node", pg=state.pg, node=segment.node)

    async def adopt_truncation(
        self, client: ShipperClient, segment_id: SegmentId, epochs: Epochs
    ) -> None:
        """Gives a segment this writer created the truncation range of its recovery,
        which its peers hold: a later epoch check (`_check_epoch`) would otherwise
        take it for one that missed truncations, and delete what it holds."""
        catch_up = self._epoch_catch_up
        if catch_up is not None:
            await client.set_epoch(
                segment_id, epochs, truncate=catch_up.truncation, timeout_s=self._rpc_timeout_s
            )

    async def _check_epoch(self, state: _Pg, segment: _Segment, client: ShipperClient) -> None:
        """Brings a segment behind the writer's epoch (or truncation) up to it;
        raises _SegmentAhead if it is ahead."""
        meta = await client.state(state.segment_id, timeout_s=self._rpc_timeout_s)
        epochs = state.epochs
        if meta.volume_epoch > epochs.volume or meta.membership_epoch > epochs.membership:
            raise _SegmentAhead(
                "segment is at a newer epoch than the writer",
                segment=state.segment_id,
                node=segment.node,
                segment_volume_epoch=meta.volume_epoch,
                segment_membership_epoch=meta.membership_epoch,
                volume_epoch=epochs.volume,
                membership_epoch=epochs.membership,
            )
        if meta.membership_epoch < epochs.membership:
            # A membership change it missed (it was down, or the change's own call
            # to it failed): the writer made the change, so it brings it up to date.
            await client.set_membership(
                state.segment_id,
                Epochs(Epoch(meta.volume_epoch), epochs.membership),
                state.first_page,
                state.page_count,
                state.members,
                members_old=state.members_old,
                timeout_s=self._rpc_timeout_s,
            )
            log.info(
                "segment brought to the PG's membership",
                pg=state.pg,
                node=segment.node,
                segment_membership_epoch=meta.membership_epoch,
                membership_epoch=epochs.membership,
            )
        catch_up = self._epoch_catch_up
        truncation = (Lsn(meta.truncated_above_lsn), Lsn(meta.truncated_up_to_lsn))
        ranges = (
            []
            if catch_up is None
            else catch_up_truncations(meta.volume_epoch, truncation, catch_up)
        )
        if catch_up is None and meta.volume_epoch < epochs.volume:
            raise StaleEpoch("segment is behind a writer that ran no recovery", node=segment.node)
        for truncate in ranges:
            await client.set_epoch(
                state.segment_id, epochs, truncate=truncate, timeout_s=self._rpc_timeout_s
            )
        segment.check_epoch = False
        if ranges:
            self.stats.segments_caught_up += 1
            log.info(
                "segment brought to the writer's epoch",
                pg=state.pg,
                node=segment.node,
                segment_volume_epoch=meta.volume_epoch,
                ranges=ranges,
            )

    def _acked(self, state: _Pg, segment: _Segment, ack: AppendAck) -> None:
        stats = self.stats
        stats.acks += 1
        if segment.failures:
            log.info(
                "segment answers again", pg=state.pg, node=segment.node, failures=segment.failures
            )
        segment.failures = 0
        segment.retry_at_s = 0.0
        segment.stale_epoch = False
        segment.last_error = ""
        scl = ack.scl
        if scl > segment.scl:
            segment.scl = scl
        tracker = self.tracker
        vdl_before = tracker.vdl
        try:
            tracker.ack(state.pg, segment.node, scl)
        except AckRefused as error:
            stats.acks_refused += 1
            log.warning("ack refused", pg=state.pg, node=segment.node, error=error)
            return
        if self._on_scl is not None:
            self._on_scl(state.pg, segment.node, scl)
        if tracker.vdl > vdl_before:
            self._release()
        if segment.scl < state.retained_floor:
            self._left_behind(state, segment)
            if segment.in_flight == 0 and segment.sent_up_to >= state.lsn_batched:
                # Gossip fills it from its peers, and the shipper learns that only
                # from an answer: with nothing new to send, resend what is retained
                # after a while (the timer of _ready) until its SCL shows the hole
                # filled. Without that, a quorum waiting on it would wait forever.
                segment.sent_up_to = state.retained_floor
                segment.retry_at_s = time.monotonic() + self.config.retry_delay_max_ms / 1000
        else:
            segment.left_behind = False
            if segment.in_flight == 0 and segment.scl < segment.sent_up_to:
                # Its last answer and still short of what it was sent: a hole (an
                # earlier call failed). Resend from its SCL.
                segment.sent_up_to = segment.scl
        self._trim(state)

    def _left_behind(self, state: _Pg, segment: _Segment) -> None:
        """Notes (once, until it catches up) a segment that lacks records the shipper
        no longer keeps: only gossip from its peers can fill it."""
        if segment.left_behind:
            return
        segment.left_behind = True
        self.stats.segments_left_behind += 1
        log.warning(
            "segment left behind: records it lacks are no longer retained by the writer; "
            "gossip from its peers fills it",
            pg=state.pg,
            node=segment.node,
            scl=segment.scl,
            retained_floor=state.retained_floor,
            last_error=segment.last_error or "none",
        )

    def _failed(self, state: _Pg, segment: _Segment, error: BorealisError) -> None:
        stats = self.stats
        stats.rpc_failures += 1
        segment.failures += 1
        segment.last_error = str(error)
        # What arrived is unknown: resend everything above its SCL (or above the
        # floor when it lacks more than the shipper kept).
        segment.sent_up_to = max(segment.scl, state.retained_floor)
        config = self.config
        delay_ms = min(
            config.retry_delay_max_ms,
            config.retry_delay_min_ms * 2 ** min(segment.failures - 1, 30),
        )
        if isinstance(error, _SegmentAhead):
            stats.stale_epoch_refusals += 1
            segment.stale_epoch = True
            delay_ms = config.retry_delay_max_ms
        elif isinstance(error, StaleEpoch):
            # Which side is behind is learned from the segment's state next time.
            stats.stale_epoch_refusals += 1
            segment.check_epoch = True
            if segment.failures > 1:
                delay_ms = config.retry_delay_max_ms
        elif isinstance(error, NotFound):
            segment.missing = True
        segment.retry_at_s = time.monotonic() + delay_ms / 1000
        # One line on the first failure and then at powers of two, not one per call.
        if segment.failures & (segment.failures - 1) == 0:
            log.warning(
                "segment append failed; retrying",
                pg=state.pg,
                node=segment.node,
                failures=segment.failures,
                scl=segment.scl,
                error=error,
            )
        if isinstance(error, _SegmentAhead):
            ahead = sum(1 for s in state.segments if s.stale_epoch)
            if ahead >= FENCING_SEGMENTS:
                self._fence(state, error)

    def _fence(self, state: _Pg, error: StaleEpoch) -> None:
        if self.fenced is not None:
            return
        self.fenced = WriterFenced(
            "the writer is fenced: this instance is no longer the writer (segments are "
            "at a newer volume epoch: another writer took over the volume); reconnect "
            "through the writer endpoint",
            pg=state.pg,
            epochs=state.epochs,
            error=error.message,
        )
        log.error("writer fenced", **self.fenced.context)
        self.fenced_event.set()
        self._cancel_timers()
        self._fail_waiters(self.fenced)

    def _trim(self, state: _Pg) -> None:
        """Drops retained records every segment has, and beyond the bound those
        complete at a write quorum."""
        start = state.retained_start
        lsns = state.retained_lsns
        if start == len(lsns):
            return
        scl_min = min(segment.scl for segment in state.segments)
        over = state.retained_bytes > self.config.retained_bytes_max
        pgcl = self.tracker.pgcl(state.pg) if over else LSN_NONE
        datas = state.retained_data
        index = start
        end = len(lsns)
        retained_bytes = state.retained_bytes
        limit = self.config.retained_bytes_max
        while index < end:
            lsn = lsns[index]
            if lsn > scl_min and not (retained_bytes > limit and lsn <= pgcl):
                break
            retained_bytes -= len(datas[index])
            datas[index] = b""
            index += 1
        if index == start:
            return
        state.retained_bytes = retained_bytes
        state.retained_floor = lsns[index - 1]
        state.retained_start = index
        if over:
            for segment in state.segments:
                if segment.scl < state.retained_floor:
                    self._left_behind(state, segment)
        if index >= RETAINED_COMPACT_MIN and 2 * index >= end:
            del lsns[:index]
            del datas[:index]
            state.retained_start = 0

    # -- lifecycle and observation ----------------------------------------------------------

    def _cancel_timers(self) -> None:
        for state in self._pgs.values():
            for segment in state.segments:
                if segment.retry_timer is not None:
                    segment.retry_timer.cancel()
                    segment.retry_timer = None

    async def close(self) -> None:
        """Stops shipping: cancels calls in flight and fails the waiters left."""
        self._closed = True
        self._cancel_timers()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_waiters(self._gone_error())

    def waiters(self) -> int:
        return len(self._waiters)

    def retained_bytes(self) -> int:
        return sum(state.retained_bytes for state in self._pgs.values())

    def queued_records(self) -> int:
        return sum(len(state.queue) for state in self._pgs.values())

    def segment_view(self, pg: PgIndex) -> dict[str, dict[str, object]]:
        """Per segment of `pg`: SCL, sent_up_to, calls in flight, failures, last error."""
        return {
            segment.node: {
                "scl": segment.scl,
                "sent_up_to": segment.sent_up_to,
                "in_flight": segment.in_flight,
                "failures": segment.failures,
                "left_behind": segment.left_behind,
                "last_error": segment.last_error,
            }
            for segment in self._pgs[pg].segments
        }

    def register_metrics(self, metrics: Metrics) -> None:
        for name, kind, help_text in SHIPPER_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)

    def samples(self) -> list[Sample]:
        stats = self.stats
        return [
            ("redo_groups_total", {}, stats.groups),
            ("redo_records_total", {}, stats.records),
            ("redo_record_bytes_total", {}, stats.record_bytes),
            ("redo_batches_total", {}, stats.batches),
            ("redo_batch_records_total", {}, stats.batch_records),
            ("redo_batch_bytes_total", {}, stats.batch_bytes),
            ("redo_append_rpcs_total", {}, stats.rpcs),
            ("redo_append_rpc_failures_total", {}, stats.rpc_failures),
            ("redo_acks_total", {}, stats.acks),
            ("redo_catchup_rpcs_total", {}, stats.catchup_rpcs),
            ("redo_segments_left_behind_total", {}, stats.segments_left_behind),
            ("redo_waiter_timeouts_total", {}, stats.waiter_timeouts),
            ("redo_retained_bytes", {}, self.retained_bytes()),
            ("redo_queued_records", {}, self.queued_records()),
            ("volume_vdl", {}, self.tracker.vdl),
            ("volume_lsn_sent", {}, self.tracker.lsn_sent),
        ]
