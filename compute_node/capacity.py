"""An instance's capacity in Borealis capacity units (BCU), applied in place, and the
load signals the control plane's autoscaler reads (DESIGN.md section 10).

The unit. 1 BCU = 128 MiB of volume buffer cache (BufferCache capacity) + 2 SQL
reader connections (the Engine's reader worker threads). The writer instance also
keeps its one writing connection, which is not counted. Capacity moves in 0.5 BCU
steps (0.5 BCU = 64 MiB and 1 reader connection) between 0.5 and 16 BCU; a reader
instance counts the same. A cluster's own min and max lie inside these bounds and
are the control plane's business.

In place. SetCapacity resizes the cache (a shrink evicts pages at or below the VDL,
least recently used first; pinned pages above the VDL stay, and the cache is over
its bound until the VDL passes them, see compute_node/volume/cache.py) and adds or
drains reader connections (a draining connection takes no new work and closes once
its queued statements ran and no transaction holds it, see
compute_node/engine/sessions.py). Nothing restarts and no client connection drops.

Hot pages. HotPages lists the instance's hottest cached pages (BufferCache.hot_pages);
a new reader asks its writer for them and prewarms its own cache before it serves
(`fetch_hot_pages`, compute_node/replication/replica.py ReplicaVolume.prewarm).

Signals. Every second the instance samples its CPU time from /proc/self/stat
(utime + stime, in clock ticks) and its cache's hit and miss counters; the CPU
fraction and hit ratio over that second are what GetCapacity reports, with the
engine's sessions and queues and the PostgreSQL connection count as they are at
the call. The samplers are sans-IO: they are fed readings and a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from grpc import aio

from borealis import rpc
from borealis.errors import InvalidRequest
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.rpc import handler
from compute_node.engine.sessions import Engine
from compute_node.volume.cache import HOT_PAGES_MAX, BufferCache
from proto import capacity_pb2, capacity_pb2_grpc

log = get_logger("capacity")

SERVICE_NAME = "borealis.capacity.Capacity"

BCU_CACHE_BYTES = 128 * 2**20
BCU_READER_CONNECTIONS = 2
BCU_STEP = 0.5
BCU_MIN = 0.5
BCU_MAX = 16.0
BCU_DEFAULT = 1.0
# One step's share of the unit: 64 MiB and 1 reader connection.
STEP_CACHE_BYTES = int(BCU_CACHE_BYTES * BCU_STEP)
STEP_READER_CONNECTIONS = int(BCU_READER_CONNECTIONS * BCU_STEP)

# A HotPages answer holds at most HOT_PAGES_MAX varints of up to 10 bytes each.
HOT_PAGES_MESSAGE_BYTES_MAX = 1 * 2**20

# The signals are rates over this window (the control plane polls every second).
SAMPLE_INTERVAL_S = 1.0
PROC_STAT_PATH = Path("/proc/self/stat")
# /proc/<pid>/stat fields 14 and 15 (1-based): utime and stime, in clock ticks. The
# text after the command name's closing parenthesis starts at field 3.
_UTIME_INDEX = 14 - 3
_STIME_INDEX = 15 - 3

CAPACITY_METRICS = (
    ("capacity_bcu", "gauge", "Capacity now, in BCUs (1 BCU = 128 MiB cache + 2 readers)."),
    ("capacity_sql_workers", "gauge", "SQL reader connections taking new work."),
    ("capacity_sql_workers_draining", "gauge", "SQL reader connections draining."),
    ("capacity_changes_total", "counter", "Capacity changes applied."),
    ("capacity_cpu_fraction", "gauge", "CPU used over the last second (1.0 = one core)."),
    ("capacity_cache_hit_ratio", "gauge", "Buffer cache hits per lookup over the last second."),
    ("sql_sessions_active", "gauge", "Sessions running a statement now."),
    ("sql_statements_queued", "gauge", "Statements waiting for a connection or in a queue."),
    ("sql_statements_total", "counter", "Statements finished."),
)


# -- the unit ---------------------------------------------------------------------------


def bcu_problem(bcu: float) -> str | None:
    """Why `bcu` is not a capacity an instance can take, or None if it is one."""
    if not math.isfinite(bcu) or not BCU_MIN <= bcu <= BCU_MAX:
        return f"capacity must be between {BCU_MIN} and {BCU_MAX} BCU"
    if bcu / BCU_STEP != round(bcu / BCU_STEP):
        return f"capacity must be a multiple of {BCU_STEP} BCU"
    return None


def check_bcu(bcu: float) -> float:
    """`bcu` if it is on the grid and within bounds; InvalidRequest otherwise."""
    problem = bcu_problem(bcu)
    if problem is not None:
        raise InvalidRequest(problem, bcu=bcu)
    return bcu


def _steps_of(bcu: float) -> int:
    assert bcu_problem(bcu) is None, bcu
    return round(bcu / BCU_STEP)


def cache_bytes_of(bcu: float) -> int:
    """The buffer cache capacity `bcu` BCUs give."""
    return _steps_of(bcu) * STEP_CACHE_BYTES


def reader_connections_of(bcu: float) -> int:
    """The SQL reader connections `bcu` BCUs give (the writing connection aside)."""
    return _steps_of(bcu) * STEP_READER_CONNECTIONS


# -- sans-IO samplers ---------------------------------------------------------------------


def cpu_ticks_of(stat_text: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/<pid>/stat. The command
    name (field 2) may hold spaces and parentheses: fields are counted after the
    last ')'."""
    fields = stat_text[stat_text.rindex(")") + 1 :].split()
    return int(fields[_UTIME_INDEX]) + int(fields[_STIME_INDEX])


def read_cpu_ticks() -> int:
    """This process's CPU time so far, in clock ticks."""
    return cpu_ticks_of(PROC_STAT_PATH.read_text())


class CpuSampler:
    """CPU use between consecutive readings of a process's CPU ticks: ticks spent /
    clock ticks per second / wall seconds (1.0 = one core busy all the time)."""

    def __init__(self, clock_ticks_per_s: int) -> None:
        assert clock_ticks_per_s > 0, clock_ticks_per_s
        self._clock_ticks_per_s = clock_ticks_per_s
        self._last: tuple[int, float] | None = None
        self.cpu_fraction = 0.0

    def observe(self, ticks: int, time_s: float) -> float:
        """Takes a reading (`time_s` from a monotonic clock); the CPU fraction since
        the previous one (0.0 at the first reading: no interval yet)."""
        assert ticks >= 0, ticks
        if self._last is not None:
            ticks_before, time_before_s = self._last
            assert ticks >= ticks_before, (ticks, ticks_before)
            assert time_s >= time_before_s, (time_s, time_before_s)
            if time_s == time_before_s:
                return self.cpu_fraction
            spent_s = (ticks - ticks_before) / self._clock_ticks_per_s
            self.cpu_fraction = spent_s / (time_s - time_before_s)
        self._last = (ticks, time_s)
        return self.cpu_fraction


class HitRatioSampler:
    """The buffer cache hit ratio between consecutive readings of its cumulative
    hit and miss counters (1.0 when nothing was looked up)."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None
        self.hit_ratio = 1.0

    def observe(self, hits: int, misses: int) -> float:
        if self._last is not None:
            hits_before, misses_before = self._last
            assert hits >= hits_before and misses >= misses_before, (hits, misses, self._last)
            hits_new = hits - hits_before
            lookups_new = hits_new + misses - misses_before
            self.hit_ratio = hits_new / lookups_new if lookups_new else 1.0
        self._last = (hits, misses)
        return self.hit_ratio


# -- the instance side ----------------------------------------------------------------------


class InstanceCapacity:
    """One instance's capacity: its cache and engine, resized together in place, and
    its load signals. Used on the event loop only."""

    def __init__(
        self,
        bcu: float,
        role: str,
        cache: BufferCache,
        engine: Engine,
        connections: Callable[[], int],
        clock_ticks_per_s: int | None = None,
    ) -> None:
        self.bcu = check_bcu(bcu)
        self.role = role
        self._cache = cache
        self._engine = engine
        self._connections = connections
        self._cpu = CpuSampler(clock_ticks_per_s or os.sysconf("SC_CLK_TCK"))
        self._hits = HitRatioSampler()
        # One change at a time: a second SetCapacity waits for the first.
        self._changing = asyncio.Lock()
        self.changes = 0

    async def set(self, bcu: float) -> None:
        """Applies `bcu` in place: cache capacity, then reader connections."""
        check_bcu(bcu)
        async with self._changing:
            bcu_before = self.bcu
            cache_bytes = cache_bytes_of(bcu)
            # A large shrink evicts many pages (in chunks, under the cache's lock):
            # off the event loop, which keeps serving meanwhile.
            await asyncio.to_thread(self._cache.resize, cache_bytes)
            await self._engine.set_readers(reader_connections_of(bcu))
            self.bcu = bcu
            self.changes += 1
            log.info(
                "capacity set",
                bcu_before=bcu_before,
                bcu=bcu,
                cache_bytes=cache_bytes,
                sql_workers=self._engine.readers,
                draining=self._engine.readers_draining,
            )

    def sample(self, ticks: int, time_s: float) -> None:
        """Takes one reading of CPU ticks (at monotonic `time_s`) and cache counters."""
        self._cpu.observe(ticks, time_s)
        stats = self._cache.stats()
        self._hits.observe(stats.hits, stats.misses)

    async def run_sampler(self) -> None:
        """Samples every SAMPLE_INTERVAL_S until cancelled."""
        while True:
            self.sample(read_cpu_ticks(), time.monotonic())
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def signals(self) -> capacity_pb2.Signals:
        load = self._engine.load()
        return capacity_pb2.Signals(
            cpu_fraction=self._cpu.cpu_fraction,
            cache_hit_ratio=self._hits.hit_ratio,
            cache_evictions_total=self._cache.stats().evictions,
            active_sessions=load.active_sessions,
            queued_statements=load.queued_statements,
            connections=self._connections(),
            statements_total=load.statements_total,
        )

    def state(self) -> capacity_pb2.CapacityState:
        return capacity_pb2.CapacityState(
            bcu=self.bcu,
            cache_bytes=self._cache.capacity_bytes,
            sql_workers=self._engine.readers,
            signals=self.signals(),
            role=self.role,
        )

    def hot_pages(self, pages_max: int) -> list[int]:
        """The cache's hottest pages, at most `pages_max` (clamped to HOT_PAGES_MAX)."""
        return self._cache.hot_pages(min(pages_max, HOT_PAGES_MAX))

    def register_metrics(self, metrics: Metrics) -> None:
        for name, kind, help_text in CAPACITY_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)

    def samples(self) -> list[Sample]:
        load = self._engine.load()
        return [
            ("capacity_bcu", {}, self.bcu),
            ("capacity_sql_workers", {}, self._engine.readers),
            ("capacity_sql_workers_draining", {}, self._engine.readers_draining),
            ("capacity_changes_total", {}, self.changes),
            ("capacity_cpu_fraction", {}, self._cpu.cpu_fraction),
            ("capacity_cache_hit_ratio", {}, self._hits.hit_ratio),
            ("sql_sessions_active", {}, load.active_sessions),
            ("sql_statements_queued", {}, load.queued_statements),
            ("sql_statements_total", {}, load.statements_total),
        ]


def start_sampler(capacity: InstanceCapacity) -> asyncio.Task[None]:
    """Runs the capacity's sampler in the background; cancel the task to stop it."""
    return asyncio.ensure_future(capacity.run_sampler())


async def fetch_hot_pages(address: str, pages_max: int, timeout_s: float) -> list[int]:
    """The hottest cached pages of the instance at `address` (its HotPages), at most
    `pages_max`; raises a BorealisError if it cannot answer within `timeout_s`."""
    assert 0 <= pages_max <= HOT_PAGES_MAX, pages_max
    async with rpc.channel(address, HOT_PAGES_MESSAGE_BYTES_MAX) as channel:
        response = await rpc.call(
            capacity_pb2_grpc.CapacityStub(channel).HotPages(
                capacity_pb2.HotPagesRequest(max_pages=pages_max), timeout=timeout_s
            ),
            address=address,
        )
    pages = list(response.pages)
    # The server clamps as this side does: a longer answer is a broken peer.
    assert len(pages) <= pages_max, (len(pages), pages_max)
    return pages


async def stop_sampler(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class CapacityService(capacity_pb2_grpc.CapacityServicer):
    def __init__(self, capacity: InstanceCapacity) -> None:
        self._capacity = capacity

    @handler
    async def SetCapacity(
        self, request: capacity_pb2.SetCapacityRequest, context: aio.ServicerContext
    ) -> capacity_pb2.CapacityState:
        await self._capacity.set(request.bcu)
        return self._capacity.state()

    @handler
    async def GetCapacity(
        self, request: capacity_pb2.GetCapacityRequest, context: aio.ServicerContext
    ) -> capacity_pb2.CapacityState:
        return self._capacity.state()

    @handler
    async def HotPages(
        self, request: capacity_pb2.HotPagesRequest, context: aio.ServicerContext
    ) -> capacity_pb2.HotPagesResponse:
        # Built under the cache's lock in one go: HOT_PAGES_MAX bounds it to a few
        # milliseconds of the event loop.
        return capacity_pb2.HotPagesResponse(pages=self._capacity.hot_pages(request.max_pages))
