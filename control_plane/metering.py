"""Metering: counts what a bill would count, for the cost report (control_plane/cost.py).

The control plane samples the cluster every `interval_s` (a few seconds) and appends
one record per sample to DATA_DIR/metering/usage.jsonl:

- Capacity-unit-seconds per instance: the instance's capacity in BCUs (1 BCU = 128 MiB
  of buffer cache + 2 SQL reader connections; Capacity.GetCapacity) times the time
  since the previous sample, for every instance whose process runs. An instance that
  does not answer is counted at its last reported capacity while its process runs;
  one that has never reported one (an instance without the Capacity service) at its
  configured capacity: `capacity_bcu` of its compute_node.toml, else its buffer cache
  size in BCUs. A stopped (or paused) instance is not counted.
- Storage bytes over time: each storage node's LMDB bytes in use (metric
  lmdb_used_bytes), summed and divided by the copies of each PG (segments per PG, from
  the segment metrics), as Aurora bills one copy of the volume; times the interval.
- Storage I/O requests, counted at the storage nodes: reads are GetPage calls
  (pages_read_total), writes AppendRedo calls (append_requests_total, else records
  appended, see WRITE_COUNTERS). Counters are per process: a reading below the last
  one, or from a new pid, is a restarted node counting from 0 again. A node's first
  reading counts in full (its process started with the cluster, and was metered from
  its start); requests a node answered between its last sample and a crash are lost.
- Backup bytes: 0 until backups exist.

Each record keeps the counter readings it was computed from, so a restarted control
plane continues from them. The file is bounded by compaction: past `file_bytes_max`,
records older than an hour are merged into one record per hour, and records older
than `retention_s` are dropped.

The Meter (sampling arithmetic) and the record functions are sans-IO; the Sampler
and UsageFile do the I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from borealis import metrics as metrics_format
from borealis import rpc
from borealis.errors import BorealisError, grpc_status_of
from borealis.log import get_logger
from control_plane import cost
from proto import capacity_pb2, capacity_pb2_grpc, metering_pb2, metering_pb2_grpc

log = get_logger("control_plane.metering")

BCU_CACHE_BYTES = 128 * 2**20
BCU_MIN = 0.5
BCU_MAX = 16.0
# ComputeNodeConfig.buffer_cache_bytes's default, for a config file that omits it.
CACHE_BYTES_DEFAULT = 256 * 2**20
READS_COUNTER = "borealis_storage_pages_read_total"
# The first one a node exports is used: AppendRedo calls, else (a node without that
# counter) the redo records it persisted.
WRITE_COUNTERS = (
    "borealis_storage_append_requests_total",
    "borealis_storage_records_appended_total",
)
STORAGE_BYTES_GAUGE = "borealis_storage_lmdb_used_bytes"
# One series per segment the node holds; its labels name the (volume, PG).
SEGMENT_SERIES_PREFIX = "borealis_storage_segment_scl{"
# The cluster's price table, when it has one (else cost.DEFAULT_PRICES).
PRICES_FILE = "prices.json"
USAGE_DIRECTORY = "metering"
USAGE_FILE = "usage.jsonl"
INTERVAL_S_DEFAULT = 2.0
# One look at a process (metrics or capacity), at most.
RPC_TIMEOUT_S = 1.0
FILE_BYTES_MAX_DEFAULT = 8 * 2**20
BUCKET_S = 3600.0
RETENTION_S_DEFAULT = 400 * 86400.0
# A usage line longer than this is not one the sampler wrote.
LINE_BYTES_MAX = 1 * 2**20

REPORTED = "reported"
LAST_REPORTED = "last_reported"
CONFIGURED = "configured"


# -- sans-IO ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceLook:
    """An instance at a sample: its process, and the capacity it reported (None: no
    answer)."""

    name: str
    running: bool
    reported_bcu: float | None
    configured_bcu: float


@dataclass(frozen=True)
class StorageLook:
    """A storage node at a sample: its process, and its metrics (None: no answer)."""

    name: str
    pid: int | None
    running: bool
    metrics: dict[str, float] | None


@dataclass
class Record:
    """What one sample (or, after compaction, one hour) counted, over [start, end]."""

    start_unix_s: float
    end_unix_s: float
    capacity_unit_seconds: dict[str, float] = field(default_factory=dict)
    capacity_sources: dict[str, str] = field(default_factory=dict)
    storage_byte_seconds: float = 0.0
    storage_bytes: float = 0.0
    io_reads: float = 0.0
    io_writes: float = 0.0
    write_counter: str = ""
    backup_byte_seconds: float = 0.0
    # node -> [pid, reads, writes]: the readings the deltas were taken from (only on
    # a sample's record; a restarted control plane continues from the last one).
    counters: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Record:
        values = json.loads(line)
        assert isinstance(values, dict)
        return cls(**values)


@dataclass(frozen=True)
class Usage:
    """The records over a period, added up (prorated at its edges)."""

    since_unix_s: float
    until_unix_s: float
    seconds: float
    capacity_unit_seconds: dict[str, float]
    capacity_sources: dict[str, str]
    storage_byte_seconds: float
    storage_bytes_last: float
    io_reads: float
    io_writes: float
    write_counter: str
    backup_byte_seconds: float


@dataclass
class _NodeStorage:
    bytes_used: float
    segments: frozenset[str]


class Meter:
    """Turns successive looks at the cluster into records (the counting rules are in
    the module doc). Not thread-safe: one sampler owns it."""

    def __init__(self) -> None:
        self.last_unix_s: float | None = None
        # node -> (pid, reads, writes): the last readings of each node's counters.
        self._counters: dict[str, tuple[int | None, float, float]] = {}
        self._storage: dict[str, _NodeStorage] = {}
        self._reported_bcu: dict[str, float] = {}
        self._write_counter = ""

    def restore(self, last: Record) -> None:
        """Continues from the last record a previous control plane wrote."""
        for node, (pid, reads, writes) in last.counters.items():
            self._counters[node] = (int(pid), reads, writes)
        self._write_counter = last.write_counter

    def sample(
        self, now_unix_s: float, instances: Iterable[InstanceLook], nodes: Iterable[StorageLook]
    ) -> Record:
        previous = self.last_unix_s
        # The first sample only sets the time base for capacity (there is no interval
        # yet); I/O done before it is counted, it happened.
        interval_s = max(0.0, now_unix_s - previous) if previous is not None else 0.0
        self.last_unix_s = now_unix_s if previous is None else max(previous, now_unix_s)
        nodes = list(nodes)
        reads, writes = self._io(nodes)
        storage_bytes = self._storage_bytes(nodes)
        record = Record(
            start_unix_s=now_unix_s - interval_s,
            end_unix_s=now_unix_s,
            storage_byte_seconds=storage_bytes * interval_s,
            storage_bytes=storage_bytes,
            io_reads=reads,
            io_writes=writes,
            write_counter=self._write_counter,
            counters={node: list(values) for node, values in self._counters.items()},
        )
        for look in instances:
            capacity = self._capacity(look)
            if capacity is not None:
                bcu, source = capacity
                record.capacity_unit_seconds[look.name] = bcu * interval_s
                record.capacity_sources[look.name] = source
        return record

    def _capacity(self, look: InstanceLook) -> tuple[float, str] | None:
        if not look.running:
            self._reported_bcu.pop(look.name, None)
            return None
        if look.reported_bcu is not None:
            self._reported_bcu[look.name] = look.reported_bcu
            return look.reported_bcu, REPORTED
        if look.name in self._reported_bcu:
            return self._reported_bcu[look.name], LAST_REPORTED
        return look.configured_bcu, CONFIGURED

    def _io(self, nodes: list[StorageLook]) -> tuple[float, float]:
        reads_total = writes_total = 0.0
        for look in nodes:
            if look.metrics is None or look.pid is None:
                # Its counters keep counting; the next answer brings what it did.
                continue
            write_counter = next((name for name in WRITE_COUNTERS if name in look.metrics), "")
            self._write_counter = self._write_counter or write_counter
            reads = look.metrics.get(READS_COUNTER, 0.0)
            writes = look.metrics.get(write_counter, 0.0) if write_counter else 0.0
            last_pid, last_reads, last_writes = self._counters.get(look.name, (None, 0.0, 0.0))
            reads_total += counter_delta(last_pid, last_reads, look.pid, reads)
            writes_total += counter_delta(last_pid, last_writes, look.pid, writes)
            self._counters[look.name] = (look.pid, reads, writes)
        return reads_total, writes_total

    def _storage_bytes(self, nodes: list[StorageLook]) -> float:
        for look in nodes:
            if not look.running:
                self._storage.pop(look.name, None)
            elif look.metrics is not None:
                segments = frozenset(
                    name[len(SEGMENT_SERIES_PREFIX) - 1 :]
                    for name in look.metrics
                    if name.startswith(SEGMENT_SERIES_PREFIX)
                )
                used = look.metrics.get(STORAGE_BYTES_GAUGE, 0.0)
                self._storage[look.name] = _NodeStorage(used, segments)
            # A running node that did not answer keeps its last known bytes.
        present = {look.name for look in nodes}
        for gone in set(self._storage) - present:
            del self._storage[gone]
        return billed_storage_bytes(list(self._storage.values()))


def counter_delta(last_pid: int | None, last_value: float, pid: int, value: float) -> float:
    """What a counter counted since its last reading: all of it when the process is
    new (another pid, or none read before) or restarted (a reading below the last)."""
    if last_pid != pid or value < last_value:
        return value
    return value - last_value


def billed_storage_bytes(nodes: list[_NodeStorage]) -> float:
    """The bytes of one copy of the volume: all the nodes' bytes over the copies per PG."""
    segments = sum(len(node.segments) for node in nodes)
    if segments == 0:
        return 0.0
    pgs = len(frozenset().union(*(node.segments for node in nodes)))
    return sum(node.bytes_used for node in nodes) * pgs / segments


def aggregate(records: Iterable[Record], since_unix_s: float, until_unix_s: float) -> Usage:
    """The usage in [since, until]: records wholly inside count in full, records across
    an edge by the share of their interval inside (a sample's counts are spread evenly
    over its interval)."""
    assert since_unix_s <= until_unix_s, (since_unix_s, until_unix_s)
    capacity: dict[str, float] = {}
    sources: dict[str, str] = {}
    seconds = storage = reads = writes = backup = 0.0
    storage_last = 0.0
    write_counter = ""
    for record in sorted(records, key=lambda each: each.end_unix_s):
        share = _share_inside(record, since_unix_s, until_unix_s)
        if share == 0:
            continue
        seconds += (record.end_unix_s - record.start_unix_s) * share
        for name, value in record.capacity_unit_seconds.items():
            capacity[name] = capacity.get(name, 0.0) + value * share
        sources.update(record.capacity_sources)
        storage += record.storage_byte_seconds * share
        backup += record.backup_byte_seconds * share
        reads += record.io_reads * share
        writes += record.io_writes * share
        storage_last = record.storage_bytes
        write_counter = record.write_counter or write_counter
    return Usage(
        since_unix_s=since_unix_s,
        until_unix_s=until_unix_s,
        seconds=seconds,
        capacity_unit_seconds=capacity,
        capacity_sources=sources,
        storage_byte_seconds=storage,
        storage_bytes_last=storage_last,
        io_reads=reads,
        io_writes=writes,
        write_counter=write_counter,
        backup_byte_seconds=backup,
    )


def _share_inside(record: Record, since_unix_s: float, until_unix_s: float) -> float:
    span_s = record.end_unix_s - record.start_unix_s
    if span_s <= 0:
        # A first sample has no interval: inside or not.
        return 1.0 if since_unix_s <= record.end_unix_s <= until_unix_s else 0.0
    inside_s = min(record.end_unix_s, until_unix_s) - max(record.start_unix_s, since_unix_s)
    return max(0.0, min(1.0, inside_s / span_s))


def compact(
    records: list[Record],
    now_unix_s: float,
    bucket_s: float = BUCKET_S,
    retention_s: float = RETENTION_S_DEFAULT,
    recent_s: float = BUCKET_S,
) -> list[Record]:
    """Records older than `recent_s` merged into one per bucket (aligned, by the bucket
    their interval ends in), and those older than the retention dropped; recent ones,
    and always the last one (whose counter readings a restart continues from), are
    kept as they are."""
    merged: dict[int, Record] = {}
    kept = []
    for index, record in enumerate(records):
        if record.end_unix_s < now_unix_s - retention_s:
            continue
        if record.end_unix_s >= now_unix_s - recent_s or index == len(records) - 1:
            kept.append(record)
            continue
        bucket = int(record.end_unix_s // bucket_s)
        into = merged.get(bucket)
        if into is None:
            merged[bucket] = _bucket_of(record)
        else:
            _merge(into, record)
    return [merged[bucket] for bucket in sorted(merged)] + kept


def _bucket_of(record: Record) -> Record:
    copy = Record.from_json(record.to_json())
    copy.counters = {}
    return copy


def _merge(into: Record, record: Record) -> None:
    into.start_unix_s = min(into.start_unix_s, record.start_unix_s)
    into.end_unix_s = max(into.end_unix_s, record.end_unix_s)
    for name, value in record.capacity_unit_seconds.items():
        into.capacity_unit_seconds[name] = into.capacity_unit_seconds.get(name, 0.0) + value
    into.capacity_sources.update(record.capacity_sources)
    into.storage_byte_seconds += record.storage_byte_seconds
    into.storage_bytes = record.storage_bytes
    into.io_reads += record.io_reads
    into.io_writes += record.io_writes
    into.backup_byte_seconds += record.backup_byte_seconds
    into.write_counter = record.write_counter or into.write_counter


def configured_bcu(config_text: str) -> float:
    """An instance's configured capacity from its compute_node.toml: `capacity_bcu`,
    else its buffer cache in BCUs (on the 0.5 grid, within the bounds)."""
    table = tomllib.loads(config_text).get("compute_node", {})
    if "capacity_bcu" in table:
        return float(table["capacity_bcu"])
    cache_bytes = int(table.get("buffer_cache_bytes", CACHE_BYTES_DEFAULT))
    steps = cache_bytes // (BCU_CACHE_BYTES // 2)
    return min(BCU_MAX, max(BCU_MIN, steps / 2))


# -- I/O ------------------------------------------------------------------------------------


class UsageFile:
    """The append-only JSON-lines file of records; safe to use from several threads."""

    def __init__(self, data_dir: Path, file_bytes_max: int = FILE_BYTES_MAX_DEFAULT) -> None:
        self.path = Path(data_dir) / USAGE_DIRECTORY / USAGE_FILE
        self.file_bytes_max = file_bytes_max
        self._lock = threading.Lock()

    def append(self, record: Record) -> None:
        line = record.to_json() + "\n"
        assert len(line) < LINE_BYTES_MAX, len(line)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as file:
                file.write(line)
            if self.path.stat().st_size > self.file_bytes_max:
                self._compact(record.end_unix_s)

    def read(self) -> list[Record]:
        with self._lock:
            return self._read()

    def _read(self) -> list[Record]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        records = []
        for line in text.split("\n"):
            if not line:
                continue
            try:
                records.append(Record.from_json(line))
            except (ValueError, TypeError, AssertionError):
                # A line cut short by a crash mid-write, or not one of ours.
                log.warning("skipping an unreadable usage record", path=str(self.path))
        return records

    def _compact(self, now_unix_s: float) -> None:
        """Merges old records; if that is not enough (many recent records), merges
        the recent ones too. Past the bound even then (only the retention's hourly
        records are left), the next compaction waits for the file to double."""
        before = self.path.stat().st_size
        records = self._read()
        for recent_s in (BUCKET_S, 0.0):
            records = compact(records, now_unix_s, recent_s=recent_s)
            text = "".join(record.to_json() + "\n" for record in records)
            if len(text) <= self.file_bytes_max:
                break
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)
        log.info("usage records compacted", bytes_before=before, bytes_after=len(text))
        if len(text) > self.file_bytes_max:
            log.warning(
                "usage records over their bound after compaction",
                bytes=len(text),
                bytes_max=self.file_bytes_max,
            )
            self.file_bytes_max = 2 * len(text)


@dataclass(frozen=True)
class ProcessLook:
    """What the sampler reads of a process in the cluster (a snapshot, lock-free)."""

    name: str
    address: str
    pid: int | None
    running: bool
    config_path: Path | None = None


class Sampler:
    """Samples the cluster every interval into the usage file, until `stopping`."""

    def __init__(
        self, cluster: Any, usage: UsageFile, interval_s: float = INTERVAL_S_DEFAULT
    ) -> None:
        # deploy.local.LocalCluster; typed loosely so this module does not import deploy.
        self.cluster = cluster
        self.usage = usage
        self.interval_s = interval_s
        self.meter = Meter()
        self._configured: dict[str, float] = {}
        self.samples_total = 0
        records = usage.read()
        if records:
            self.meter.restore(records[-1])

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.interval_s):
            try:
                self.sample_once()
            except Exception as error:  # noqa: BLE001 - metering must not stop the control plane
                log.warning("metering sample failed", error=repr(error)[:300])

    def sample_once(self) -> Record:
        instances, nodes = self._snapshot()
        instance_looks, storage_looks = asyncio.run(self._look(instances, nodes))
        record = self.meter.sample(time.time(), instance_looks, storage_looks)
        self.usage.append(record)
        self.samples_total += 1
        return record

    def _snapshot(self) -> tuple[list[ProcessLook], list[ProcessLook]]:
        # Without the supervisor's lock, which a failover holds for seconds: copying a
        # list is atomic under the GIL, and a process changing meanwhile is seen as it
        # is at the next sample.
        instances = [
            ProcessLook(
                each.name,
                each.address,
                each.pid,
                each.is_running(),
                each.directory / "compute_node.toml",
            )
            for each in list(self.cluster.instances)
        ]
        nodes = [
            ProcessLook(each.name, each.address, each.pid, each.is_running())
            for each in list(self.cluster.storage_nodes)
        ]
        return instances, nodes

    async def _look(
        self, instances: list[ProcessLook], nodes: list[ProcessLook]
    ) -> tuple[list[InstanceLook], list[StorageLook]]:
        capacities = await asyncio.gather(*(self._capacity(each) for each in instances))
        node_metrics = await asyncio.gather(*(self._metrics(each) for each in nodes))
        instance_looks = [
            InstanceLook(each.name, each.running, bcu, self._configured_bcu(each))
            for each, bcu in zip(instances, capacities, strict=True)
        ]
        storage_looks = [
            StorageLook(each.name, each.pid, each.running, values)
            for each, values in zip(nodes, node_metrics, strict=True)
        ]
        return instance_looks, storage_looks

    async def _capacity(self, process: ProcessLook) -> float | None:
        if not process.running:
            return None
        async with rpc.channel(process.address) as channel:
            try:
                state = await capacity_pb2_grpc.CapacityStub(channel).GetCapacity(
                    capacity_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT_S
                )
            except aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    log.info("no capacity from instance", instance=process.name, code=error.code())
                return None
        return float(state.bcu)

    async def _metrics(self, process: ProcessLook) -> dict[str, float] | None:
        if not process.running:
            return None
        try:
            text = await rpc.metrics_text(process.address, RPC_TIMEOUT_S)
        except aio.AioRpcError as error:
            log.info("no metrics from storage node", node=process.name, code=error.code())
            return None
        return metrics_format.parse(text)

    def _configured_bcu(self, process: ProcessLook) -> float:
        if process.name not in self._configured:
            try:
                text = process.config_path.read_text() if process.config_path else ""
                self._configured[process.name] = configured_bcu(text)
            except (OSError, tomllib.TOMLDecodeError, ValueError) as error:
                log.warning("cannot read an instance's capacity", name=process.name, error=error)
                return configured_bcu("")
        return self._configured[process.name]


def usage_since(usage: UsageFile, since_unix_s: float, until_unix_s: float) -> Usage:
    return aggregate(usage.read(), since_unix_s, until_unix_s)


def prices_of(data_dir: Path, prices_json: str = "") -> cost.PriceTable:
    """The price table given, else the cluster's (DATA_DIR/prices.json), else the defaults."""
    if prices_json:
        return cost.load_prices(prices_json)
    path = Path(data_dir) / PRICES_FILE
    if path.exists():
        return cost.load_prices(path.read_text())
    return cost.DEFAULT_PRICES


def report(
    usage: UsageFile, data_dir: Path, since_unix_s: float, prices_json: str = ""
) -> metering_pb2.CostReport:
    """The cost report since `since_unix_s`, priced, as the Metering service answers it."""
    until_unix_s = time.time()
    since_unix_s = min(max(0.0, since_unix_s), until_unix_s)
    table = prices_of(data_dir, prices_json)
    return report_to_proto(cost.price(usage_since(usage, since_unix_s, until_unix_s), table))


def report_to_proto(priced: cost.CostReport) -> metering_pb2.CostReport:
    usage = priced.usage
    return metering_pb2.CostReport(
        usage=metering_pb2.Usage(
            since_unix_s=usage.since_unix_s,
            until_unix_s=usage.until_unix_s,
            seconds=usage.seconds,
            capacity_unit_seconds=usage.capacity_unit_seconds,
            capacity_sources=usage.capacity_sources,
            storage_byte_seconds=usage.storage_byte_seconds,
            storage_bytes_last=usage.storage_bytes_last,
            io_reads=usage.io_reads,
            io_writes=usage.io_writes,
            write_counter=usage.write_counter,
            backup_byte_seconds=usage.backup_byte_seconds,
        ),
        options=[
            metering_pb2.OptionCost(
                name=option.name,
                title=option.title,
                lines=[metering_pb2.CostLine(**asdict(line)) for line in option.lines],
                total=option.total,
                io_share=option.io_share,
                monthly_total=option.monthly_total,
            )
            for option in priced.options
        ],
        currency=priced.currency,
        cheaper=priced.cheaper,
        reason=priced.reason,
        io_share_threshold=priced.io_share_threshold,
        notes=priced.notes,
    )


class MeteringService(metering_pb2_grpc.MeteringServicer):
    """proto/metering.proto on the control plane's (synchronous) gRPC server."""

    def __init__(self, usage: UsageFile, data_dir: Path) -> None:
        self._usage = usage
        self._data_dir = data_dir

    def GetCost(  # noqa: N802 - gRPC's method name
        self, request: metering_pb2.GetCostRequest, context: grpc.ServicerContext
    ) -> metering_pb2.CostReport:
        try:
            return report(self._usage, self._data_dir, request.since_unix_s, request.prices_json)
        except BorealisError as error:
            context.abort(grpc_status_of(error), str(error))
            raise  # abort raises; this line is for the type checker


def start_metering(supervisor: Any, interval_s: float = INTERVAL_S_DEFAULT) -> MeteringService:
    """Starts sampling the supervisor's cluster (a thread, until it stops) and returns
    the Metering service to serve. `supervisor`: control_plane.supervisor.Supervisor."""
    data_dir = Path(supervisor.cluster.data_dir)
    usage = UsageFile(data_dir)
    sampler = Sampler(supervisor.cluster, usage, interval_s)
    thread = threading.Thread(
        target=sampler.run, args=(supervisor.stopping,), name="metering", daemon=True
    )
    thread.start()
    log.info("metering", interval_s=interval_s, path=str(usage.path))
    return MeteringService(usage, data_dir)
