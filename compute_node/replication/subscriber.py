"""The reader's side of the redo stream: subscribe, buffer, apply, report, lag.

`Subscription.run` keeps one Subscribe stream to the writer open, and opens a new
one whenever it ends (writer restarted or unreachable, or the writer told the
reader to resynchronise because it fell behind). Each stream starts with a Hello:
ReplicaVolume.begin drops the cache (records before the Hello were never seen) and
the reader jumps to the Hello's starting point once the VDL covers it.

Commit groups wait in an MtrBuffer (bounded in bytes; a full buffer makes the
reader resubscribe) until a VDL advance covers their CPL; then each is applied
whole, in order (ReplicaVolume.apply), which moves the read point to its CPL.

Every `report_interval_ms` the reader sends its oldest pinned read point to the
writer (ReportReadPoint), for the PGMRPL.

Lag. `lag_lsns` is the writer's VDL (as last streamed) minus the reader's read
point. `lag_ms` is how long the oldest commit group received but not applied has
waited since the writer committed it (its CPL's commit time; both clocks are the
machine's wall clock, as instances of one cluster share hosts or NTP), or 0.
`apply_delay_ms_last` is the same for the last group applied.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from borealis import rpc
from borealis.errors import InvalidRequest
from borealis.ids import LSN_NONE, Epoch, Lsn, PgIndex
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from compute_node.replication.core import Group, MtrBuffer
from compute_node.replication.replica import ReplicaVolume, StartPoint
from proto import replication_pb2, replication_pb2_grpc
from storage_node.segment import Member

log = get_logger("compute_node.replication")

MESSAGE_BYTES_MAX = 16 * 2**20
BUFFER_BYTES_MAX = 128 * 2**20
REPORT_INTERVAL_MS = 200
REPORT_TIMEOUT_S = 2.0
RETRY_DELAY_MIN_S = 0.1
RETRY_DELAY_MAX_S = 2.0

SUBSCRIPTION_METRICS = (
    ("replica_lag_lsns", "gauge", "Writer VDL minus the reader's read point, in LSNs."),
    (
        "replica_lag_ms",
        "gauge",
        "How long the oldest commit received but not yet visible has waited, in ms.",
    ),
    ("replica_apply_delay_ms", "gauge", "Writer commit to reader apply of the last group, in ms."),
    ("replica_writer_vdl", "gauge", "The writer's VDL as last streamed."),
    ("replica_subscriptions_total", "counter", "Subscribe streams opened."),
)


def writer_address_from(cluster_file: Path) -> str | None:
    """The writer's gRPC address named in cluster.json, if any."""
    try:
        document = json.loads(cluster_file.read_text())
    except (OSError, ValueError):
        return None
    for instance in document.get("instances", []):
        if instance.get("role") == "writer" and instance.get("address"):
            return str(instance["address"])
    return None


class Subscription:
    def __init__(
        self,
        replica: ReplicaVolume,
        name: str,
        writer_address: Callable[[], str | None],
        read_point_oldest: Callable[[], Lsn] | None = None,
    ) -> None:
        self._replica = replica
        self._name = name
        self._writer_address = writer_address
        self._read_point_oldest = read_point_oldest
        self._buffer = MtrBuffer(BUFFER_BYTES_MAX)
        self._subscriber_id = 0
        self.writer_vdl: Lsn = LSN_NONE
        self.apply_delay_ms_last = 0.0
        self.subscriptions = 0
        self.started = asyncio.Event()

    def set_read_point_oldest(self, read_point_oldest: Callable[[], Lsn]) -> None:
        self._read_point_oldest = read_point_oldest

    # -- the stream ------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribes and applies until cancelled; resubscribes whenever a stream ends."""
        delay_s = RETRY_DELAY_MIN_S
        while True:
            address = self._writer_address()
            if address is None:
                log.info("no writer known yet", reader=self._name)
            else:
                try:
                    await self._follow(address)
                    delay_s = RETRY_DELAY_MIN_S
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - any stream failure: start over
                    log.warning("redo stream ended", writer=address, error=repr(error))
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_DELAY_MAX_S)

    async def _follow(self, address: str) -> None:
        channel = rpc.channel(address, MESSAGE_BYTES_MAX)
        reporter: asyncio.Task[None] | None = None
        try:
            stub = replication_pb2_grpc.ReplicationStub(channel)
            call = stub.Subscribe(replication_pb2.SubscribeRequest(reader_name=self._name))
            self.subscriptions += 1
            async for message in call:
                if message.HasField("hello"):
                    self._hello(message.hello)
                    if reporter is None:
                        reporter = asyncio.ensure_future(self._report_loop(stub))
                for event in message.events:
                    if not self._event(event):
                        log.warning("reader buffer full; resubscribing", reader=self._name)
                        call.cancel()
                        return
                if message.resync_reason:
                    log.warning("writer asked to resynchronise", reason=message.resync_reason)
                    return
        finally:
            if reporter is not None:
                reporter.cancel()
            await channel.close()

    def _hello(self, hello: replication_pb2.Hello) -> None:
        replica = self._replica
        if replica.volume_id != hello.volume_id:
            raise RuntimeError(f"the writer serves volume {hello.volume_id}")
        replica.set_volume(Epoch(hello.volume_epoch), hello.pages_per_pg)
        for info in hello.pgs:
            replica.set_pg(PgIndex(info.pg), Epoch(info.membership_epoch), members_of(info))
        lsn_start = Lsn(hello.lsn_start)
        self._buffer = MtrBuffer(BUFFER_BYTES_MAX, lsn_applied=lsn_start)
        self._subscriber_id = hello.subscriber_id
        replica.begin(
            StartPoint(
                lsn_start,
                hello.page_count,
                {PgIndex(info.pg): Lsn(info.lsn_last) for info in hello.pgs},
            )
        )
        log.info("subscribed", writer_vdl=hello.vdl, lsn_start=lsn_start, pgs=len(hello.pgs))
        self._vdl(Lsn(hello.vdl))

    def _event(self, event: replication_pb2.Event) -> bool:
        kind = event.WhichOneof("kind")
        if kind == "group":
            group = event.group
            return self._buffer.add(
                Group(Lsn(group.cpl), group.commit_time_us, tuple(group.records))
            )
        if kind == "vdl":
            self._vdl(Lsn(event.vdl))
        elif kind in ("pg_added", "pg_members"):
            info = getattr(event, kind)
            self._replica.set_pg(PgIndex(info.pg), Epoch(info.membership_epoch), members_of(info))
        return True

    def _vdl(self, vdl: Lsn) -> None:
        self.writer_vdl = max(self.writer_vdl, vdl)
        buffer = self._buffer
        buffer.advance_vdl(vdl)
        replica = self._replica
        if not replica.start_if_durable(vdl):
            return
        for group in buffer.ready():
            replica.apply(group)
            self.apply_delay_ms_last = max(0.0, time.time() * 1000 - group.commit_time_us / 1000)
        self.started.set()

    async def _report_loop(self, stub: replication_pb2_grpc.ReplicationStub) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_MS / 1000)
            if not self._replica.started:
                continue
            read_point = (
                self._read_point_oldest()
                if self._read_point_oldest is not None
                else self._replica.lsn_applied
            )
            try:
                await stub.ReportReadPoint(
                    replication_pb2.ReadPointReport(
                        subscriber_id=self._subscriber_id, read_point=read_point
                    ),
                    timeout=REPORT_TIMEOUT_S,
                )
            except Exception as error:  # noqa: BLE001 - the stream notices a lost writer
                log.warning("read point report failed", error=repr(error))

    # -- lag and metrics ---------------------------------------------------------------------

    @property
    def lag_lsns(self) -> int:
        return max(0, self.writer_vdl - self._replica.lsn_applied)

    def lag_ms(self, now_us: int | None = None) -> float:
        oldest = self._buffer.oldest_commit_time_us()
        if oldest is None or self.lag_lsns == 0:
            return 0.0
        now = time.time_ns() // 1000 if now_us is None else now_us
        return max(0.0, (now - oldest) / 1000)

    def register_metrics(self, metrics: Metrics) -> None:
        for name, kind, help_text in SUBSCRIPTION_METRICS:
            metrics.declare(name, kind, help_text)
        metrics.collector(self.samples)

    def samples(self) -> list[Sample]:
        return [
            ("replica_lag_lsns", {}, self.lag_lsns),
            ("replica_lag_ms", {}, self.lag_ms()),
            ("replica_apply_delay_ms", {}, self.apply_delay_ms_last),
            ("replica_writer_vdl", {}, self.writer_vdl),
            ("replica_subscriptions_total", {}, self.subscriptions),
        ]


def members_of(info: replication_pb2.PgInfo) -> list[Member]:
    """A PG's members as the writer names them, with their addresses."""
    if len(info.addresses) != len(info.nodes) or len(info.azs) != len(info.nodes):
        raise InvalidRequest("a PG's member nodes, addresses and AZs differ in number", pg=info.pg)
    return [
        Member(node, address, az)
        for node, address, az in zip(info.nodes, info.addresses, info.azs, strict=True)
    ]
