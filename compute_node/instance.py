"""A database instance process: the volume, the engine and its services.

The writer creates the volume on first start (when no storage node holds a segment
of it) and otherwise reopens it, which runs recovery (fencing any older writer).
It serves the PostgreSQL protocol (borealis/pgwire, one SqlSession per client
connection), gRPC health, the Admin API (failpoints, metrics) and the redo stream to
readers (compute_node/replication/publisher.py). Health turns SERVING only once the
PostgreSQL endpoint accepts connections.

A reader (`--role reader`) opens the same volume read-only (ReplicaVolume: no epoch
bump, no recovery, no shipping), subscribes to the writer's redo stream
(`writer_address`, or the writer named in the cluster file), waits until it has a
read point, then opens a read-only engine and serves PostgreSQL; writes get SQLSTATE
25006 in the SQL layer, and SQLite connections are all read-only underneath. Before
it serves (PostgreSQL, health SERVING, heartbeats) it prewarms its buffer cache with
the writer's hottest pages (Capacity.HotPages, as many as its own cache holds), for
at most `prewarm_timeout_ms`; the `prewarm` switch turns this off.

Both serve the Capacity service (compute_node/capacity.py): the control plane reads
their load signals and resizes their buffer cache and reader connections in place.
The instance starts at `capacity_bcu` (unless buffer_cache_bytes or
reader_connections are set explicitly), and a promoted reader keeps the capacity it
had.

Both send heartbeats to the control plane once serving (compute_node/replication/
heartbeat.py). Failover changes an instance's role in its config file (for every
later start) and promotes the reader in place: on SIGUSR1 a reader stops serving,
closes its replica, and goes on in the same process as the writer, whose
Volume.open runs recovery and fences the old writer with a new volume epoch. The
process is not restarted because starting one (imports alone) takes longer than the
rest of the promotion. A demoted writer is restarted as a reader. A reader follows
the writer cluster.json names (so it finds a promoted writer), and only before
cluster.json names one, the configured `writer_address`.

Pause parks the writer (SIGUSR2, control_plane/pause.py): it closes its endpoints,
engine and volume as on a clean stop, writes `parked` in its directory, and waits
in the same process, holding no cache and no connection. SIGUSR1 opens the volume
again (recovery, a new volume epoch) and serves; SIGTERM ends it. Resuming a warm
process skips the interpreter's start and imports, most of a cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
from collections.abc import Callable

from grpc import aio

from borealis import rpc, tls
from borealis.admin import AdminService
from borealis.errors import AlreadyExists, BorealisError, InvalidRequest, WriterFenced
from borealis.ids import VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics
from borealis.pgwire.backend import Startup
from borealis.pgwire.server import PgServer, ServerSettings, start_server
from borealis.redo import PAGE_SIZE_BYTES
from borealis.serving import Serving, until_stopped
from compute_node.capacity import SERVICE_NAME as CAPACITY_SERVICE
from compute_node.capacity import (
    CapacityService,
    InstanceCapacity,
    cache_bytes_of,
    fetch_hot_pages,
    reader_connections_of,
    start_sampler,
    stop_sampler,
)
from compute_node.config import PARKED_FILE, ComputeNodeConfig
from compute_node.engine.sessions import Engine
from compute_node.replication.heartbeat import Heartbeats, Status
from compute_node.replication.publisher import SERVICE_NAME as REPLICATION_SERVICE
from compute_node.replication.publisher import Publisher, ReplicationService
from compute_node.replication.replica import ReplicaVolume
from compute_node.replication.subscriber import Subscription, writer_address_from
from compute_node.sql.session import InstanceSql, SqlSession
from compute_node.volume.cache import HOT_PAGES_MAX, BufferCache
from compute_node.volume.config import VolumeConfig
from compute_node.volume.membership import SERVICE_NAME as MEMBERSHIP_SERVICE
from compute_node.volume.membership import MembershipService
from compute_node.volume.volume import Volume
from proto import admin_pb2_grpc, capacity_pb2_grpc, membership_pb2_grpc, replication_pb2_grpc
from storage_node.segment import Member

log = get_logger("compute_node")

SERVICE_NAMES = ["borealis.admin.Admin", CAPACITY_SERVICE]
SERVER_VERSION = "15.8 (Borealis 0.1.0)"
CONNECTIONS_METRIC = "pg_connections"
# A fenced writer keeps its connections this long before it exits (see
# Instance._until_stopped_or_fenced).
STEP_DOWN_DRAIN_S = 1.0


def storage_members(config: ComputeNodeConfig) -> list[Member]:
    """The storage nodes named in the cluster file."""
    document = json.loads(config.cluster_file.read_text())
    return [Member(node["name"], node["address"], node["az"]) for node in document["storage_nodes"]]


def volume_config_of(config: ComputeNodeConfig, bcu: float) -> VolumeConfig:
    """The volume settings for an instance starting at `bcu` BCUs."""
    cache_bytes = config.buffer_cache_bytes
    return VolumeConfig(
        pages_per_pg=config.pages_per_pg,
        lal_lsns=config.lal_lsns,
        cache_capacity_bytes=cache_bytes_of(bcu) if cache_bytes is None else cache_bytes,
    )


def readers_at_start(config: ComputeNodeConfig, bcu: float) -> int:
    """The reader connections of an instance starting at `bcu` BCUs."""
    readers = config.reader_connections
    return reader_connections_of(bcu) if readers is None else readers


async def open_volume(config: ComputeNodeConfig, bcu: float) -> Volume:
    """Creates the volume if no storage node holds it yet, else reopens it as its writer."""
    volume_id = VolumeId(config.volume_id)
    nodes = storage_members(config)
    volume_config = volume_config_of(config, bcu)
    try:
        return await Volume.create(volume_id, nodes, volume_config)
    except AlreadyExists:
        return await Volume.open(volume_id, nodes, volume_config)


class Instance:
    def __init__(self, config: ComputeNodeConfig) -> None:
        if config.role not in ("writer", "reader"):
            raise InvalidRequest("unknown role", role=config.role)
        self.config = config
        self.metrics = Metrics("borealis_instance")
        # The capacity now: the configured one at start, then what SetCapacity set
        # (kept across a promotion).
        self.capacity_bcu = config.capacity_bcu
        self._promote = asyncio.Event()
        self._park = asyncio.Event()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Set by the control plane's SIGUSR1: a reader becomes the writer in place.
        loop.add_signal_handler(signal.SIGUSR1, self._promote.set)
        # Set by the control plane's SIGUSR2: the writer parks (the cluster pauses).
        loop.add_signal_handler(signal.SIGUSR2, self._park.set)
        if self.config.role == "reader":
            if not await self._run_reader():
                return
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self._become_writer()
        while await self._run_writer():
            if not await self._until_unparked():
                return

    async def _until_unparked(self) -> bool:
        """Parked (see the module docstring): nothing open but the process, until
        SIGUSR1 (True: open the volume again) or SIGTERM/SIGINT (False)."""
        marker = self.config.data_dir / PARKED_FILE
        self._promote.clear()
        marker.write_text("parked\n")
        log.info("instance parked", name=self.config.name)
        stopped = asyncio.ensure_future(until_stopped())
        unparked = asyncio.ensure_future(self._promote.wait())
        try:
            await asyncio.wait({stopped, unparked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            unparked.cancel()
            marker.unlink(missing_ok=True)
        if not unparked.done() or unparked.cancelled():
            return False
        log.info("instance unparked: opening the volume again", name=self.config.name)
        self.metrics = Metrics("borealis_instance")
        return True

    def _become_writer(self) -> None:
        """After a reader's promotion: the writer's config (the control plane has written
        the same role to the config file, for later starts) and fresh metrics."""
        self.config = dataclasses.replace(self.config, role="writer", writer_address="")
        self.metrics = Metrics("borealis_instance")
        log.info("promoted: opening the volume as its writer", name=self.config.name)

    async def _run_writer(self) -> bool:
        """The writer until SIGTERM (False), or until it parks (True)."""
        volume = await open_volume(self.config, self.capacity_bcu)
        volume.register_metrics(self.metrics)
        publisher = Publisher(volume)
        publisher.register_metrics(self.metrics)
        engine = await Engine.open(
            volume, volume.wait_durable, readers=readers_at_start(self.config, self.capacity_bcu)
        )
        publisher.set_read_point_oldest(engine.vfs.state.read_point_oldest)
        engine.vfs.state.start_durable_reads(volume.vdl)
        volume.add_vdl_listener(engine.vfs.state.note_vdl)
        publisher.start()
        log.info("volume open", volume=self.config.volume_id, vdl=volume.vdl, pgs=volume.pg_count)
        postgres = await self._serve_postgres(engine)
        capacity = self._capacity(volume.cache, engine, postgres)
        sampler = start_sampler(capacity)

        config = self.config

        def add_services(server: aio.Server) -> None:
            replication_pb2_grpc.add_ReplicationServicer_to_server(
                ReplicationService(publisher), server
            )
            membership_pb2_grpc.add_MembershipServicer_to_server(MembershipService(volume), server)

        serving = await self._serve_grpc(
            [*SERVICE_NAMES, REPLICATION_SERVICE, MEMBERSHIP_SERVICE], capacity, add_services
        )
        heartbeats = self._heartbeats(lambda: Status(lsn=volume.vdl))
        fenced, parked = await self._until_stopped_fenced_or_parked(volume)

        log.info("instance stopping", name=config.name, parked=parked)
        heartbeats.cancel()
        await stop_sampler(sampler)
        await postgres.close()
        await publisher.close()
        await serving.stop(config.shutdown_grace_ms / 1000)
        await engine.close()
        # Whatever was acknowledged is durable already; wait for the rest so a clean
        # stop leaves nothing for the next writer's recovery to truncate.
        with contextlib.suppress(Exception):
            await volume.wait_durable(volume.lsn_newest(), self.config.shutdown_grace_ms / 1000)
        await volume.close()
        log.info("instance stopped", name=self.config.name)
        if fenced is not None:
            # Exits non-zero: the supervisor starts it again as its config says
            # (a reader, after a failover).
            raise fenced
        return parked

    async def _until_stopped_fenced_or_parked(
        self, volume: Volume
    ) -> tuple[WriterFenced | None, bool]:
        """Waits for SIGTERM/SIGINT, for SIGUSR2 (park: the second result is True), or
        for storage to fence this writer (a newer writer took over the volume: this
        one was partitioned or paused). Fenced, it steps down by itself rather than
        answer 25006 to every write: after a short drain, so that the clients of the
        commits it failed get their error."""
        self._park.clear()
        stopped = asyncio.ensure_future(until_stopped())
        fenced = asyncio.ensure_future(volume.until_fenced())
        park = asyncio.ensure_future(self._park.wait())
        await asyncio.wait({stopped, fenced, park}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, fenced, park):
            waiter.cancel()
        if fenced.done() and not fenced.cancelled():
            log.error("fenced by a newer writer: stepping down", name=self.config.name)
            await asyncio.sleep(STEP_DOWN_DRAIN_S)
            return fenced.result(), False
        return None, park.done() and not park.cancelled() and not stopped.done()

    async def _run_reader(self) -> bool:
        """A reader instance (see the module docstring) until SIGTERM or promotion;
        True when it is to go on as the writer."""
        config = self.config
        replica = ReplicaVolume(
            VolumeId(config.volume_id),
            storage_members(config),
            volume_config_of(config, self.capacity_bcu),
        )
        replica.register_metrics(self.metrics)

        def writer_address() -> str | None:
            return writer_address_from(config.cluster_file) or config.writer_address or None

        subscription = Subscription(replica, config.name, writer_address)
        subscription.register_metrics(self.metrics)
        following = asyncio.ensure_future(subscription.run())
        engine: Engine | None = None
        capacity: InstanceCapacity | None = None
        promoted = False
        try:
            await subscription.started.wait()
            engine = await Engine.open(
                replica,
                _durable_already,
                readers=readers_at_start(config, self.capacity_bcu),
                read_only=True,
            )
            state = engine.vfs.state
            replica.attach(state.advance, state.read_point_oldest)
            subscription.set_read_point_oldest(state.read_point_oldest)
            log.info("reader has a read point", name=config.name, lsn=replica.lsn_applied)
            await self._prewarm(replica, writer_address())
            postgres = await self._serve_postgres(engine)
            capacity = self._capacity(replica.cache, engine, postgres)
            sampler = start_sampler(capacity)
            serving = await self._serve_grpc(SERVICE_NAMES, capacity)
            heartbeats = self._heartbeats(
                lambda: Status(
                    lsn=replica.lsn_applied,
                    lag_lsns=subscription.lag_lsns,
                    lag_ms=subscription.lag_ms(),
                )
            )
            promoted = await self._until_stopped_or_promoted()
            log.info("instance stopping", name=config.name, promoted=promoted)
            heartbeats.cancel()
            await stop_sampler(sampler)
            await postgres.close()
            await serving.stop(config.shutdown_grace_ms / 1000)
        finally:
            if capacity is not None:
                # A promoted reader goes on at the capacity it had.
                self.capacity_bcu = capacity.bcu
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await following
            if engine is not None:
                await engine.close()
            await replica.close()
        log.info("instance stopped", name=config.name)
        return promoted and not self._stopping.is_set()

    async def _prewarm(self, replica: ReplicaVolume, writer_address: str | None) -> None:
        """Reads the writer's hottest pages into the reader's cache (see the module
        docstring). Asking the writer and reading share one time bound; a writer
        that cannot answer leaves the cache cold, as does `prewarm = false`."""
        config = self.config
        if not config.prewarm or writer_address is None:
            log.info("prewarm off", name=config.name, writer=writer_address)
            return
        deadline_s = asyncio.get_running_loop().time() + config.prewarm_timeout_ms / 1000
        pages_max = min(replica.cache.capacity_bytes // PAGE_SIZE_BYTES, HOT_PAGES_MAX)
        try:
            pages = await fetch_hot_pages(
                writer_address, pages_max, config.prewarm_timeout_ms / 1000
            )
        except BorealisError as error:
            log.warning("prewarm skipped: no hot pages", writer=writer_address, error=repr(error))
            return
        remaining_s = deadline_s - asyncio.get_running_loop().time()
        if remaining_s <= 0:
            log.warning("prewarm skipped: the hot pages came too late", pages=len(pages))
            return
        result = await replica.prewarm(pages, config.prewarm_concurrency, remaining_s)
        log.info(
            "prewarm done",
            name=config.name,
            pages_listed=result.pages_listed,
            pages=result.pages_cached,
            pages_read=result.pages_read,
            failures=result.failures,
            seconds=round(result.seconds, 3),
            timed_out=result.timed_out,
            lsn=replica.lsn_applied,
        )

    async def _until_stopped_or_promoted(self) -> bool:
        """Waits for SIGTERM/SIGINT or a promotion; True for a promotion. A SIGTERM
        during the reader's teardown still counts (see `_stopping`); after it the
        default action applies again, as for any instance starting."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        waiters = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._promote.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not self._stopping.is_set()

    def _heartbeats(self, status: Callable[[], Status]) -> asyncio.Future[None]:
        """Starts the heartbeats to the control plane; cancel the result to stop them."""
        config = self.config
        sender = Heartbeats(config.name, config.role, config.cluster_file, status)
        return asyncio.ensure_future(sender.run())

    def _capacity(self, cache: BufferCache, engine: Engine, postgres: PgServer) -> InstanceCapacity:
        """The instance's capacity at `capacity_bcu`, its metrics registered."""
        capacity = InstanceCapacity(
            self.capacity_bcu,
            self.config.role,
            cache,
            engine,
            lambda: postgres.connection_count,
        )
        capacity.register_metrics(self.metrics)
        return capacity

    async def _serve_grpc(
        self,
        services: list[str],
        capacity: InstanceCapacity,
        add: Callable[[aio.Server], None] | None = None,
    ) -> Serving:
        """Health, the Admin API, Capacity, /metrics, and the role's own services (`add`)."""
        config = self.config
        server = rpc.server(16 * 2**20)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self.metrics, {}), server)
        capacity_pb2_grpc.add_CapacityServicer_to_server(CapacityService(capacity), server)
        if add is not None:
            add(server)
        serving = await Serving.start(
            server,
            services,
            config.host,
            config.port,
            config.data_dir,
            self.metrics,
            config.metrics_port,
        )
        log.info("instance serving", name=config.name, role=config.role, port=serving.port)
        return serving

    async def _serve_postgres(self, engine: Engine) -> PgServer:
        config = self.config
        shared = InstanceSql(
            SERVER_VERSION,
            read_only=config.role != "writer",
            database=config.database,
            statement_cache_entries=config.statement_cache_entries,
        )

        async def backend(startup: Startup) -> SqlSession:
            return SqlSession(shared, engine.session(), startup)

        proxy_secret = None
        if config.proxy_secret_file is not None:
            proxy_secret = config.proxy_secret_file.read_text().strip()
        ssl_context = None
        if config.pg_tls_cert_file is not None and config.pg_tls_key_file is not None:
            ssl_context = tls.endpoint_ssl_context(config.pg_tls_cert_file, config.pg_tls_key_file)
        settings = ServerSettings(
            server_version=SERVER_VERSION,
            connections_max=config.pg_connections_max,
            query_bytes_max=config.pg_statement_bytes_max,
            read_only=config.role != "writer",
            proxy_secret=proxy_secret,
            ssl_context=ssl_context,
        )
        server = await start_server(
            config.host, config.pg_port, backend, self._verifier_of, settings
        )
        self.metrics.declare(CONNECTIONS_METRIC, "gauge", "PostgreSQL client connections open now")
        self.metrics.collector(lambda: [(CONNECTIONS_METRIC, {}, server.connection_count)])
        log.info("postgres endpoint serving", host=config.host, port=server.port)
        return server

    def _verifier_of(self, user: str) -> str | None:
        """The user's stored SCRAM verifier, read at each login so that a user added
        to the file is known without a restart."""
        if self.config.users_file is None:
            return None
        try:
            users = json.loads(self.config.users_file.read_text())
        except (OSError, ValueError):
            log.error("users file unreadable", path=str(self.config.users_file))
            return None
        verifier = users.get(user)
        return verifier if isinstance(verifier, str) else None


async def _durable_already(lsn: object) -> None:
    """A reader reads only at or below the writer's VDL: everything it shows is durable."""
