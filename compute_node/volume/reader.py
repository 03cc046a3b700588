"""Page reads from storage: one segment at a time, chosen by latency, hedged to a second.

DESIGN.md section 5: on a cache miss the instance asks ONE segment of the page's
PG whose SCL is at or above the read point; no quorum read is needed, because
a segment with SCL >= L holds every record of its PG up to L. The reader keeps the
highest SCL it has seen per segment (from the shipper's acks via `note_scl`, from
successful reads, and from `state()` calls when it knows of no segment complete
to the read point), and orders the six segments by what it knows:

1. complete to the read point, node healthy, fastest first by an EWMA of latency
   (nodes never measured go first, so each is tried once; and now and then a
   random other one goes first, so a node that got faster is noticed);
2. SCL unknown or behind, node healthy (its SCL may have moved on since);
3. nodes that failed within the last `node_cooldown_ms`.

An attempt that has not answered within the hedge delay gets company: the next
segment in that order is asked too, and the first good answer wins; the other
call is cancelled. Hedges are budgeted (about one per ten reads, with a burst),
so an overloaded cluster where every call is slow is not sent twice the load.
A cancelled call counts as a slow sample of its node, so a stalled node drops
down the order instead of costing every read a hedge delay.

A refusal moves on to the next segment at once: Unavailable (segment behind,
node down, deadline), Corruption, NotFound, StaleEpoch (during a membership
change the segments move to the new membership epoch one by one) and any other
server-side error. VersionGone and InvalidRequest are the caller's problem (a
read point below the PGMRPL, a page outside the PG) and are raised at once. When
every segment has refused, the read fails with StaleEpoch if they all refused
the epochs (the caller's are old), else with Unavailable naming the page, the
LSN and each node's error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from borealis.errors import (
    BorealisError,
    Corruption,
    InvalidRequest,
    StaleEpoch,
    Unavailable,
    VersionGone,
)
from borealis.ids import LSN_NONE, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.redo import PAGE_SIZE_BYTES
from storage_node.client import StorageClient

log = get_logger("compute_node.reader")

# Errors that say the request itself is wrong: no other segment would answer it.
CALLER_ERRORS: tuple[type[BorealisError], ...] = (VersionGone, InvalidRequest)


class MemberLike(Protocol):
    """What the reader needs of a placement entry (storage_node.segment.Member fits)."""

    @property
    def node(self) -> str: ...

    @property
    def address(self) -> str: ...


class SegmentStateLike(Protocol):
    @property
    def scl(self) -> int: ...


class StorageClientLike(Protocol):
    """The part of StorageClient the reader calls (tests pass in-process fakes)."""

    async def get_page(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        page: int,
        lsn: int,
        timeout_s: float | None = None,
    ) -> tuple[bytes, Lsn]: ...

    async def state(
        self, segment_id: SegmentId, timeout_s: float | None = None
    ) -> SegmentStateLike: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class PageReaderConfig:
    # Deadline of one GetPage call to one segment.
    attempt_timeout_ms: float = 2000.0
    # Deadline of a whole read, all attempts and SCL refreshes included.
    read_timeout_ms: float = 10_000.0
    # Deadline of the GetSegmentState calls that refresh SCLs.
    state_timeout_ms: float = 1000.0
    # A fixed hedge delay if set; otherwise the p95 of recent read latencies,
    # clamped to [hedge_delay_min_ms, hedge_delay_max_ms], and hedge_delay_initial_ms
    # until hedge_samples_min reads have been measured.
    hedge_delay_ms: float | None = None
    hedge_delay_initial_ms: float = 50.0
    hedge_delay_min_ms: float = 5.0
    hedge_delay_max_ms: float = 500.0
    hedge_percentile: float = 0.95
    hedge_samples_min: int = 20
    # Recent latencies kept for the percentile, and how often it is recomputed.
    latency_window: int = 256
    hedge_recompute_every: int = 32
    # Hedges are budgeted so that an overloaded cluster (every call slow) does not
    # get twice the load: each read earns hedge_budget_ratio of a hedge, up to
    # hedge_budget_burst saved; a hedge spends one. Retries after a refusal are free.
    hedge_budget_ratio: float = 0.1
    hedge_budget_burst: float = 10.0
    # Calls of one read in flight at once: the first and one hedge.
    attempts_in_flight_max: int = 2
    # Reads in flight at once over the whole reader (a bound on RPCs in flight).
    reads_in_flight_max: int = 256
    # Weight of a new sample in a node's latency EWMA.
    latency_ewma_weight: float = 0.2
    # Share of reads that try a random complete segment first instead of the fastest.
    explore_ratio: float = 0.05
    # How long a node that failed goes to the back of the order.
    node_cooldown_ms: float = 1000.0

    def __post_init__(self) -> None:
        assert self.attempt_timeout_ms > 0 and self.read_timeout_ms > 0
        assert self.state_timeout_ms > 0
        assert self.hedge_delay_ms is None or self.hedge_delay_ms >= 0
        assert 0 < self.hedge_delay_min_ms <= self.hedge_delay_max_ms
        assert 0 < self.hedge_percentile <= 1
        assert self.latency_window >= self.hedge_samples_min >= 1
        assert self.hedge_recompute_every >= 1
        assert 0 <= self.hedge_budget_ratio <= 1 and self.hedge_budget_burst >= 1
        assert self.attempts_in_flight_max >= 1 and self.reads_in_flight_max >= 1
        assert 0 < self.latency_ewma_weight <= 1
        assert 0 <= self.explore_ratio <= 1


@dataclass
class NodeStats:
    """What the reader has observed of one storage node."""

    address: str
    latency_ewma_s: float | None = None
    requests: int = 0
    successes: int = 0
    failures: int = 0
    last_failure: str = ""
    cooldown_until_s: float = 0.0


@dataclass
class ReaderStats:
    reads: int = 0
    # Reads that asked a second segment because the first was slow.
    hedged_reads: int = 0
    # Hedged reads the hedge answered first.
    hedge_wins: int = 0
    # Hedges not sent because the hedge budget was spent.
    hedges_denied: int = 0
    # Attempts started after another refused (node down, segment behind, ...).
    retries: int = 0
    # Reads that failed: every segment refused, or the caller's error.
    failed_reads: int = 0
    scl_refreshes: int = 0
    # Answers that failed the reader's own checks (wrong size, page_lsn above L).
    bad_answers: int = 0
    nodes: dict[str, NodeStats] = field(default_factory=dict)


READER_METRICS = (
    ("page_reads_total", "counter", "Page reads from storage (cache misses)."),
    ("page_reads_hedged_total", "counter", "Page reads that asked a second segment."),
    ("page_read_hedge_wins_total", "counter", "Hedged page reads the hedge answered first."),
    ("page_read_hedges_denied_total", "counter", "Hedges not sent: the budget was spent."),
    ("page_read_retries_total", "counter", "GetPage calls made after another was refused."),
    ("page_reads_failed_total", "counter", "Page reads that failed."),
    ("page_read_scl_refreshes_total", "counter", "Rounds of GetSegmentState to learn SCLs."),
    ("page_read_bad_answers_total", "counter", "GetPage answers that failed local checks."),
    ("page_read_hedge_delay_seconds", "gauge", "Current hedge delay."),
    ("page_read_node_requests_total", "counter", "GetPage calls per storage node."),
    ("page_read_node_failures_total", "counter", "Failed GetPage calls per storage node."),
    ("page_read_node_latency_seconds", "gauge", "EWMA of GetPage latency per storage node."),
)

PgOf = Callable[[int], PgIndex]
PlacementOf = Callable[[PgIndex], Sequence[MemberLike]]
EpochsOf = Callable[[PgIndex], Epochs]
ClientOf = Callable[[MemberLike], StorageClientLike]


class PageReader:
    """Reads page images at a read point from one segment at a time, with hedging.

    `pg_of(page)` names the page's PG, `placement(pg)` its six members (node and
    address), `epochs_of(pg)` the epochs requests carry. `client_of(member)` gives
    the shared client of a storage node; without it the reader opens one
    StorageClient per address itself and closes them in `close()` (clients passed
    in belong to the caller). Use from one event loop; SQLite worker threads call
    it through `asyncio.run_coroutine_threadsafe`.
    """

    def __init__(
        self,
        volume_id: VolumeId,
        pg_of: PgOf,
        placement: PlacementOf,
        epochs_of: EpochsOf,
        client_of: ClientOf | None = None,
        config: PageReaderConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.volume_id = volume_id
        self.config = config or PageReaderConfig()
        self._pg_of = pg_of
        self._placement = placement
        self._epochs_of = epochs_of
        self._client_of = client_of
        self._owned_clients: dict[str, StorageClient] = {}
        self._rng = rng or random.Random()
        # Highest SCL seen per (pg, node); bounded by PGs x members.
        self._scl: dict[tuple[PgIndex, str], Lsn] = {}
        self._latencies_s: deque[float] = deque(maxlen=self.config.latency_window)
        self._latency_samples = 0
        self._hedge_delay_s = self.config.hedge_delay_initial_ms / 1000
        self._hedge_tokens = self.config.hedge_budget_burst
        self._reads_in_flight = asyncio.Semaphore(self.config.reads_in_flight_max)
        # Losing attempts (cancelled) and SCL refreshes finish in the background, so
        # a read returns without waiting for them; close() cancels and awaits them.
        self._background: set[asyncio.Future[Any]] = set()
        self._refreshes: dict[PgIndex, list[asyncio.Task[None]]] = {}
        self._closed = False
        self.stats = ReaderStats()

    # -- inputs from the rest of the volume client ---------------------------------------

    def note_scl(self, pg: PgIndex, node: str, scl: Lsn) -> None:
        """Records that `node`'s segment of `pg` is complete up to `scl` (an ack)."""
        key = (pg, node)
        if scl > self._scl.get(key, LSN_NONE):
            self._scl[key] = scl

    def scl_of(self, pg: PgIndex, node: str) -> Lsn | None:
        return self._scl.get((pg, node))

    @property
    def hedge_delay_s(self) -> float:
        if self.config.hedge_delay_ms is not None:
            return self.config.hedge_delay_ms / 1000
        return self._hedge_delay_s

    # -- reads -----------------------------------------------------------------------------

    async def read_page(self, page: int, lsn: Lsn) -> tuple[bytes, Lsn]:
        """(image, page_lsn) of `page` as of read point `lsn`.

        Raises Unavailable when no segment could answer within the read deadline,
        StaleEpoch when every segment refused its epochs, VersionGone / InvalidRequest
        when the request itself is wrong.
        """
        assert not self._closed, "read_page after close"
        assert page >= 0 and lsn >= 0, (page, lsn)
        self.stats.reads += 1
        self._hedge_tokens = min(
            self.config.hedge_budget_burst, self._hedge_tokens + self.config.hedge_budget_ratio
        )
        pg = self._pg_of(page)
        try:
            async with asyncio.timeout(self.config.read_timeout_ms / 1000):
                async with self._reads_in_flight:
                    return await self._read(pg, page, lsn)
        except TimeoutError:
            self.stats.failed_reads += 1
            raise Unavailable(
                "page read timed out",
                page=page,
                lsn=lsn,
                pg=pg,
                timeout_ms=self.config.read_timeout_ms,
            ) from None
        except BorealisError:
            self.stats.failed_reads += 1
            raise

    async def _read(self, pg: PgIndex, page: int, lsn: Lsn) -> tuple[bytes, Lsn]:
        members = list(self._placement(pg))
        assert members, f"PG {pg} has no placement"
        if not any(self._complete(pg, m.node, lsn) for m in members):
            await self._refresh_scls(pg, members, lsn)
        order = self._order(pg, members, lsn)
        request = (SegmentId(self.volume_id, pg), self._epochs_of(pg), page, lsn)
        errors: dict[str, str] = {}
        stale: list[StaleEpoch] = []
        in_flight: dict[asyncio.Task[tuple[bytes, Lsn]], MemberLike] = {}
        hedges: set[asyncio.Task[tuple[bytes, Lsn]]] = set()
        attempts_max = self.config.attempts_in_flight_max
        hedge_denied = False
        self._start(in_flight, order.pop(0), request)
        try:
            while True:
                can_hedge = bool(order) and len(in_flight) < attempts_max and not hedge_denied
                # Without a segment to hedge to, wait for the calls' own deadlines.
                done, _ = await asyncio.wait(
                    in_flight,
                    timeout=self.hedge_delay_s if can_hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    # The calls in flight are slow: ask the next segment as well.
                    if self._hedge_tokens < 1:
                        hedge_denied = True
                        self.stats.hedges_denied += 1
                        continue
                    self._hedge_tokens -= 1
                    if not hedges:
                        self.stats.hedged_reads += 1
                    hedges.add(self._start(in_flight, order.pop(0), request))
                    continue
                for task in done:
                    member = in_flight.pop(task)
                    error = task.exception()
                    if error is None:
                        self.note_scl(pg, member.node, lsn)
                        if task in hedges:
                            self.stats.hedge_wins += 1
                        return task.result()
                    if isinstance(error, CALLER_ERRORS) or not isinstance(error, BorealisError):
                        # The request is wrong (or a bug): no other segment would do better.
                        raise error
                    errors[member.node] = str(error)
                    if isinstance(error, StaleEpoch):
                        stale.append(error)
                if order and len(in_flight) < attempts_max:
                    # A refusal: try the next segment at once, not after the hedge delay.
                    self.stats.retries += 1
                    self._start(in_flight, order.pop(0), request)
                elif not in_flight and len(stale) == len(errors):
                    raise stale[0]
                elif not in_flight:
                    raise Unavailable(
                        "no segment could serve the page",
                        page=page,
                        lsn=lsn,
                        pg=pg,
                        errors="; ".join(f"{node}: {error}" for node, error in errors.items()),
                    )
        finally:
            self._abandon(in_flight)

    def _abandon(self, tasks: Iterable[asyncio.Future[Any]]) -> None:
        """Cancels calls whose answer is no longer needed, without waiting for them."""
        for task in tasks:
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: a second answer nobody needs
            else:
                task.cancel()
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    def _start(
        self,
        in_flight: dict[asyncio.Task[tuple[bytes, Lsn]], MemberLike],
        member: MemberLike,
        request: tuple[SegmentId, Epochs, int, Lsn],
    ) -> asyncio.Task[tuple[bytes, Lsn]]:
        task = asyncio.ensure_future(self._attempt(member, *request))
        in_flight[task] = member
        return task

    async def _attempt(
        self, member: MemberLike, segment_id: SegmentId, epochs: Epochs, page: int, lsn: Lsn
    ) -> tuple[bytes, Lsn]:
        """One GetPage call, measured; failures put the node in cooldown."""
        node = self._node(member)
        node.requests += 1
        client = self._client(member)
        started_s = time.monotonic()
        try:
            image, page_lsn = await client.get_page(
                segment_id, epochs, page, lsn, timeout_s=self.config.attempt_timeout_ms / 1000
            )
            if len(image) != PAGE_SIZE_BYTES or page_lsn > lsn:
                # The node broke its contract; another segment may still be right.
                self.stats.bad_answers += 1
                raise Corruption(
                    "storage answered with a bad page",
                    node=member.node,
                    page=page,
                    lsn=lsn,
                    page_lsn=page_lsn,
                    image_bytes=len(image),
                )
        except asyncio.CancelledError:
            # A hedge won (or the read gave up): this node was at least this slow.
            # Without the sample a stalled node would keep its old, fast average and
            # stay first in line, costing every read a hedge delay.
            self._slow(node, time.monotonic() - started_s)
            raise
        except BorealisError as error:
            if not isinstance(error, CALLER_ERRORS):
                log.info("page read refused", node=member.node, page=page, lsn=lsn, error=error)
                self._fail(node, error)
            raise
        self._succeed(node, time.monotonic() - started_s)
        return image, page_lsn

    async def _refresh_scls(self, pg: PgIndex, members: list[MemberLike], lsn: Lsn) -> None:
        """Asks every member of `pg` for its SCL; returns when one is complete to `lsn`
        or all have answered or failed (each call has the state deadline).

        Calls still running when this returns are left to finish, so every SCL is
        learned, not only the first; concurrent reads of the PG share one refresh.
        """
        tasks = self._refreshes.get(pg)
        if tasks is None:
            self.stats.scl_refreshes += 1
            tasks = [self._spawn(self._ask_state(pg, member)) for member in members]
            self._refreshes[pg] = tasks
            finished = asyncio.gather(*tasks, return_exceptions=True)
            finished.add_done_callback(lambda _: self._refreshes.pop(pg, None))
        pending = {task for task in tasks if not task.done()}
        while pending and not any(self._complete(pg, m.node, lsn) for m in members):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error  # _ask_state handles BorealisErrors: this is a bug

    async def _ask_state(self, pg: PgIndex, member: MemberLike) -> None:
        segment_id = SegmentId(self.volume_id, pg)
        try:
            state = await self._client(member).state(
                segment_id, timeout_s=self.config.state_timeout_ms / 1000
            )
        except BorealisError as error:
            self._fail(self._node(member), error)
            return
        self.note_scl(pg, member.node, Lsn(state.scl))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task that close() cancels and awaits."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- choosing -----------------------------------------------------------------------------

    def _complete(self, pg: PgIndex, node: str, lsn: Lsn) -> bool:
        return self._scl.get((pg, node), LSN_NONE) >= lsn

    def _order(self, pg: PgIndex, members: list[MemberLike], lsn: Lsn) -> list[MemberLike]:
        """The members in the order to ask them (see the module docstring)."""
        now_s = time.monotonic()

        def key(member: MemberLike) -> tuple[int, float]:
            node = self._node(member)
            if node.cooldown_until_s > now_s:
                tier = 2
            elif self._complete(pg, member.node, lsn):
                tier = 0
            else:
                tier = 1
            # Unmeasured nodes first within their tier: each is measured once.
            return tier, node.latency_ewma_s if node.latency_ewma_s is not None else -1.0

        keyed = sorted(((key(member), index, member) for index, member in enumerate(members)))
        order = [member for _, _, member in keyed]
        complete_count = sum(1 for (tier, _), _, _ in keyed if tier == 0)
        if complete_count > 1 and self._rng.random() < self.config.explore_ratio:
            explored = order.pop(self._rng.randrange(1, complete_count))
            order.insert(0, explored)
        return order

    def forget_scls(self, pg: PgIndex | None = None) -> None:
        """Drops what is known of SCLs (of one PG, or all): after a truncation or a
        membership change the old values no longer hold."""
        if pg is None:
            self._scl.clear()
        else:
            for key in [key for key in self._scl if key[0] == pg]:
                del self._scl[key]

    # -- metrics ------------------------------------------------------------------------------

    def register_metrics(self, metrics: Metrics) -> None:
        """Declares the reader's metrics in `metrics` and reports them at render time."""
        for name, kind, help_text in READER_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)

    def samples(self) -> list[Sample]:
        stats = self.stats
        samples: list[Sample] = [
            ("page_reads_total", {}, stats.reads),
            ("page_reads_hedged_total", {}, stats.hedged_reads),
            ("page_read_hedge_wins_total", {}, stats.hedge_wins),
            ("page_read_hedges_denied_total", {}, stats.hedges_denied),
            ("page_read_retries_total", {}, stats.retries),
            ("page_reads_failed_total", {}, stats.failed_reads),
            ("page_read_scl_refreshes_total", {}, stats.scl_refreshes),
            ("page_read_bad_answers_total", {}, stats.bad_answers),
            ("page_read_hedge_delay_seconds", {}, self.hedge_delay_s),
        ]
        for name, node in stats.nodes.items():
            samples.append(("page_read_node_requests_total", {"node": name}, node.requests))
            samples.append(("page_read_node_failures_total", {"node": name}, node.failures))
            if node.latency_ewma_s is not None:
                samples.append(
                    ("page_read_node_latency_seconds", {"node": name}, node.latency_ewma_s)
                )
        return samples

    # -- bookkeeping --------------------------------------------------------------------------

    def _node(self, member: MemberLike) -> NodeStats:
        node = self.stats.nodes.get(member.node)
        if node is None:
            node = self.stats.nodes[member.node] = NodeStats(member.address)
        return node

    def _succeed(self, node: NodeStats, latency_s: float) -> None:
        node.successes += 1
        node.cooldown_until_s = 0.0
        weight = self.config.latency_ewma_weight
        node.latency_ewma_s = (
            latency_s
            if node.latency_ewma_s is None
            else (1 - weight) * node.latency_ewma_s + weight * latency_s
        )
        self._latencies_s.append(latency_s)
        self._latency_samples += 1
        if (
            self._latency_samples >= self.config.hedge_samples_min
            and self._latency_samples % self.config.hedge_recompute_every == 0
        ) or self._latency_samples == self.config.hedge_samples_min:
            self._hedge_delay_s = self._percentile_delay_s()

    def _percentile_delay_s(self) -> float:
        ordered = sorted(self._latencies_s)
        index = min(len(ordered) - 1, int(self.config.hedge_percentile * len(ordered)))
        delay_s = ordered[index]
        return min(
            max(delay_s, self.config.hedge_delay_min_ms / 1000),
            self.config.hedge_delay_max_ms / 1000,
        )

    def _slow(self, node: NodeStats, elapsed_s: float) -> None:
        """A censored sample: the call took at least `elapsed_s` and was cancelled.
        It moves the node's average only up, and not into the hedge percentile
        (which would then chase the hedge delay itself)."""
        if node.latency_ewma_s is None:
            node.latency_ewma_s = elapsed_s
        elif elapsed_s > node.latency_ewma_s:
            weight = self.config.latency_ewma_weight
            node.latency_ewma_s = (1 - weight) * node.latency_ewma_s + weight * elapsed_s

    def _fail(self, node: NodeStats, error: BorealisError) -> None:
        node.failures += 1
        node.last_failure = error.message
        node.cooldown_until_s = time.monotonic() + self.config.node_cooldown_ms / 1000

    def _client(self, member: MemberLike) -> StorageClientLike:
        if self._client_of is not None:
            return self._client_of(member)
        client = self._owned_clients.get(member.address)
        if client is None:
            client = self._owned_clients[member.address] = StorageClient(
                member.address, timeout_s=self.config.attempt_timeout_ms / 1000
            )
        return client

    # -- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancels abandoned attempts and closes the clients this reader opened."""
        self._closed = True
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        clients, self._owned_clients = list(self._owned_clients.values()), {}
        for client in clients:
            await client.close()

    async def __aenter__(self) -> PageReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
