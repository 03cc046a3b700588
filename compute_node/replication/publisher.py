"""The writer's side of replication: the redo stream to readers, and the PGMRPL.

`Publisher` observes the writer's Volume (VolumeObserver: every commit group, VDL
advance and new PG, on the volume's event loop, in LSN order) and copies each
event into every subscriber's bounded queue (core.SubscriberQueue). The writer
never waits for a reader: a subscriber whose queue is full is marked overflowed,
its stream ends with `resync_reason`, and it subscribes again from the writer's
then-current state (a new Hello). Records are forwarded as the shipper encoded
them, so the reader checks the same CRC32C storage does.

A new subscriber's Hello names the newest commit that reached the loop
(`lsn_start`), the page count there and each PG's newest record at or below it,
the volume and membership epochs and each PG's members: everything the reader
needs to read storage at `lsn_start` once the VDL passes it. Every commit group
after `lsn_start` follows in the stream.

PGMRPL. Readers report their oldest pinned read point (ReportReadPoint); a
subscriber counts at its `lsn_start` until its first report. Every
`pgmrpl_interval_ms` the writer derives PGMRPL = min(its own oldest pinned read
point, the readers' read points, VDL) and, when it moved, sends each PG the LSN of
its newest record at or below it (core.pgmrpl_by_pg): reads of a PG are mapped to
that record, so it is what storage must keep readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from borealis.ids import LSN_NONE, Epoch, Lsn, PgIndex
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from compute_node.replication.core import (
    Event,
    PgLsnHistory,
    ReadPoints,
    SubscriberQueue,
    derive_pgmrpl,
    pgmrpl_by_pg,
)
from compute_node.volume.volume import Volume
from proto import replication_pb2, replication_pb2_grpc
from storage_node.segment import Member

log = get_logger("compute_node.replication")

SERVICE_NAME = "borealis.replication.Replication"

# Per subscriber: what may wait to be sent, in bytes and events; one event (a
# commit group) at most; one stream message.
QUEUE_BYTES_MAX = 64 * 2**20
QUEUE_EVENTS_MAX = 100_000
EVENT_BYTES_MAX = 8 * 2**20
MESSAGE_BYTES_MAX = 4 * 2**20
MESSAGE_EVENTS_MAX = 1024
SUBSCRIBERS_MAX = 64
PGMRPL_INTERVAL_MS = 500
PGMRPL_RPC_TIMEOUT_S = 2.0
VDL_EVENT_BYTES = 16

PUBLISHER_METRICS = (
    ("replication_subscribers", "gauge", "Readers subscribed to the redo stream."),
    ("replication_groups_published_total", "counter", "Commit groups put on the stream."),
    ("replication_resyncs_total", "counter", "Subscribers told to resynchronise."),
    ("replication_pgmrpl", "gauge", "The PGMRPL last sent to storage."),
)


class Subscriber:
    def __init__(self, subscriber_id: int, name: str) -> None:
        self.subscriber_id = subscriber_id
        self.name = name
        self.queue = SubscriberQueue(QUEUE_BYTES_MAX, QUEUE_EVENTS_MAX, EVENT_BYTES_MAX)
        self.wake = asyncio.Event()


class Publisher:
    """The writer's redo stream. Build on the volume's loop before the engine commits."""

    def __init__(self, volume: Volume, read_point_oldest: Callable[[], Lsn] | None = None) -> None:
        self._volume = volume
        self._read_point_oldest = read_point_oldest
        lsn_newest, page_count, lsn_last_by_pg = volume.replication_start()
        self.lsn_newest = lsn_newest
        self.page_count = page_count
        self._history = PgLsnHistory(lsn_last_by_pg)
        self._pgs: dict[PgIndex, tuple[Epoch, list[Member]]] = volume.pg_members()
        self._subscribers: dict[int, Subscriber] = {}
        self._serial = itertools.count(1)
        self.read_points = ReadPoints()
        self.pgmrpl_sent: Lsn = LSN_NONE
        self._pgmrpl_sent_by_pg: dict[PgIndex, Lsn] = {}
        self._task: asyncio.Task[None] | None = None
        # Set by close: every stream ends, so the server's stop does not wait out its
        # grace period for streams that would never end by themselves.
        self._closed = False
        self.groups_published = 0
        self.resyncs = 0
        volume.add_observer(self)

    def set_read_point_oldest(self, read_point_oldest: Callable[[], Lsn]) -> None:
        """The engine's oldest pinned read point (VolumeState.read_point_oldest)."""
        self._read_point_oldest = read_point_oldest

    # -- VolumeObserver (on the loop) -----------------------------------------------------

    def on_commit(self, assignments: list[Any], records: list[bytes], commit_time_us: int) -> None:
        history = self._history
        for assignment in assignments:
            history.add(assignment.pg, assignment.lsn)
            if assignment.size:
                self.page_count = assignment.page
        cpl = assignments[-1].lsn
        self.lsn_newest = cpl
        self.groups_published += 1
        if not self._subscribers:
            return
        group = replication_pb2.CommitGroup(cpl=cpl, commit_time_us=commit_time_us, records=records)
        self._push(Event("group", group, sum(len(record) for record in records)))

    def on_vdl(self, vdl: Lsn) -> None:
        if self._subscribers:
            self._push(Event("vdl", vdl, VDL_EVENT_BYTES))

    def on_pg_members(self, pg: PgIndex, membership_epoch: Epoch, members: list[Member]) -> None:
        kind = "members" if pg in self._pgs else "pg"
        self._pgs[pg] = (membership_epoch, list(members))
        if self._subscribers:
            self._push(Event(kind, pg_info(pg, membership_epoch, members), 64 * len(members)))

    def _push(self, event: Event) -> None:
        for subscriber in self._subscribers.values():
            subscriber.queue.push(event)
            subscriber.wake.set()

    # -- subscribers ------------------------------------------------------------------------

    def subscribe(self, name: str) -> tuple[Subscriber, replication_pb2.Hello]:
        if len(self._subscribers) >= SUBSCRIBERS_MAX:
            raise RuntimeError("too many subscribers")
        subscriber = Subscriber(next(self._serial), name)
        self._subscribers[subscriber.subscriber_id] = subscriber
        self.read_points.subscribed(subscriber.subscriber_id, self.lsn_newest)
        lsn_last_by_pg = self._history.lsn_last_by_pg()
        hello = replication_pb2.Hello(
            subscriber_id=subscriber.subscriber_id,
            volume_id=self._volume.volume_id,
            volume_epoch=self._volume.volume_epoch,
            pages_per_pg=self._volume.pages_per_pg,
            lsn_start=self.lsn_newest,
            page_count=self.page_count,
            vdl=self._volume.vdl,
            pgs=[
                pg_info(pg, epoch, members, lsn_last_by_pg.get(pg, LSN_NONE))
                for pg, (epoch, members) in sorted(self._pgs.items())
            ],
        )
        log.info(
            "reader subscribed",
            reader=name,
            subscriber=subscriber.subscriber_id,
            lsn_start=self.lsn_newest,
        )
        return subscriber, hello

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.pop(subscriber.subscriber_id, None)
        self.read_points.gone(subscriber.subscriber_id)
        log.info("reader unsubscribed", reader=subscriber.name, subscriber=subscriber.subscriber_id)

    async def stream(self, name: str) -> AsyncIterator[replication_pb2.ReplicationMessage]:
        subscriber, hello = self.subscribe(name)
        try:
            yield replication_pb2.ReplicationMessage(hello=hello)
            queue = subscriber.queue
            while not self._closed:
                await subscriber.wake.wait()
                subscriber.wake.clear()
                if self._closed:
                    return
                if queue.overflowed:
                    self.resyncs += 1
                    log.warning("reader fell behind; told to resynchronise", reader=name)
                    yield replication_pb2.ReplicationMessage(
                        resync_reason="the reader fell too far behind the writer's redo stream"
                    )
                    return
                while len(queue):
                    events = queue.take(MESSAGE_EVENTS_MAX, MESSAGE_BYTES_MAX)
                    yield replication_pb2.ReplicationMessage(events=[_event(e) for e in events])
        finally:
            self.unsubscribe(subscriber)

    def report(self, subscriber_id: int, read_point: Lsn) -> bool:
        return self.read_points.report(subscriber_id, read_point)

    # -- PGMRPL -----------------------------------------------------------------------------

    def pgmrpl(self) -> Lsn:
        own = self._read_point_oldest() if self._read_point_oldest else self.lsn_newest
        return derive_pgmrpl(own, self.read_points.values(), self._volume.vdl)

    async def send_pgmrpl_once(self) -> Lsn:
        pgmrpl = self.pgmrpl()
        if pgmrpl <= self.pgmrpl_sent:
            return self.pgmrpl_sent
        by_pg = pgmrpl_by_pg(pgmrpl, self._history, list(self._pgs))
        changed = {
            pg: lsn
            for pg, lsn in by_pg.items()
            if lsn != LSN_NONE and lsn > self._pgmrpl_sent_by_pg.get(pg, LSN_NONE)
        }
        if changed:
            await self._volume.send_pgmrpl(changed, PGMRPL_RPC_TIMEOUT_S)
            self._pgmrpl_sent_by_pg.update(changed)
        self.pgmrpl_sent = pgmrpl
        self._history.prune(pgmrpl)
        return pgmrpl

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._pgmrpl_loop())

    async def _pgmrpl_loop(self) -> None:
        while True:
            await asyncio.sleep(PGMRPL_INTERVAL_MS / 1000)
            try:
                await self.send_pgmrpl_once()
            except Exception as error:  # noqa: BLE001 - retried next interval
                log.warning("sending PGMRPL failed", error=repr(error))

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for subscriber in list(self._subscribers.values()):
            subscriber.wake.set()

    # -- metrics ----------------------------------------------------------------------------

    def register_metrics(self, metrics: Metrics) -> None:
        for name, kind, help_text in PUBLISHER_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)

    def samples(self) -> list[Sample]:
        return [
            ("replication_subscribers", {}, len(self._subscribers)),
            ("replication_groups_published_total", {}, self.groups_published),
            ("replication_resyncs_total", {}, self.resyncs),
            ("replication_pgmrpl", {}, self.pgmrpl_sent),
        ]


def _event(event: Event) -> replication_pb2.Event:
    if event.kind == "group":
        return replication_pb2.Event(group=event.value)  # type: ignore[arg-type]
    if event.kind == "vdl":
        return replication_pb2.Event(vdl=event.value)  # type: ignore[arg-type]
    if event.kind == "members":
        return replication_pb2.Event(pg_members=event.value)  # type: ignore[arg-type]
    return replication_pb2.Event(pg_added=event.value)  # type: ignore[arg-type]


def pg_info(
    pg: PgIndex, membership_epoch: Epoch, members: list[Member], lsn_last: Lsn = LSN_NONE
) -> replication_pb2.PgInfo:
    return replication_pb2.PgInfo(
        pg=pg,
        membership_epoch=membership_epoch,
        nodes=[member.node for member in members],
        addresses=[member.address for member in members],
        azs=[member.az for member in members],
        lsn_last=lsn_last,
    )


class ReplicationService(replication_pb2_grpc.ReplicationServicer):
    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def Subscribe(  # noqa: N802 - gRPC method name
        self, request: replication_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[replication_pb2.ReplicationMessage]:
        stream = self._publisher.stream(request.reader_name)
        try:
            async for message in stream:
                yield message
        except RuntimeError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))

    async def ReportReadPoint(  # noqa: N802 - gRPC method name
        self, request: replication_pb2.ReadPointReport, context: grpc.aio.ServicerContext
    ) -> replication_pb2.ReadPointAck:
        known = self._publisher.report(request.subscriber_id, Lsn(request.read_point))
        return replication_pb2.ReadPointAck(known=known, pgmrpl=self._publisher.pgmrpl_sent)
