"""A database instance process: the volume, the engine and its services.

The writer creates the volume on first start (when no storage node holds a segment
of it) and otherwise reopens it, which runs recovery (fencing any older writer).
It serves the PostgreSQL protocol (borealis/pgwire, one SqlSession per client
connection), gRPC health and the Admin API (failpoints, metrics). Health turns
SERVING only once the PostgreSQL endpoint accepts connections.
"""

from __future__ import annotations

import contextlib
import json

from borealis import rpc
from borealis.admin import AdminService
from borealis.errors import AlreadyExists, InvalidRequest
from borealis.ids import VolumeId
from borealis.log import get_logger
from borealis.metrics import Metrics
from borealis.pgwire.backend import Startup
from borealis.pgwire.server import PgServer, ServerSettings, start_server
from borealis.serving import Serving, until_stopped
from compute_node.config import ComputeNodeConfig
from compute_node.engine.sessions import Engine
from compute_node.sql.session import InstanceSql, SqlSession
from compute_node.volume.config import VolumeConfig
from compute_node.volume.volume import Volume
from proto import admin_pb2_grpc
from storage_node.segment import Member

log = get_logger("compute_node")

SERVICE_NAMES = ["borealis.admin.Admin"]
SERVER_VERSION = "15.8 (Borealis 0.1.0)"


def storage_members(config: ComputeNodeConfig) -> list[Member]:
    """The storage nodes named in the cluster file."""
    document = json.loads(config.cluster_file.read_text())
    return [Member(node["name"], node["address"], node["az"]) for node in document["storage_nodes"]]


async def open_volume(config: ComputeNodeConfig) -> Volume:
    """Creates the volume if no storage node holds it yet, else reopens it as its writer."""
    volume_id = VolumeId(config.volume_id)
    nodes = storage_members(config)
    volume_config = VolumeConfig(
        pages_per_pg=config.pages_per_pg,
        lal_lsns=config.lal_lsns,
        cache_capacity_bytes=config.buffer_cache_bytes,
    )
    try:
        return await Volume.create(volume_id, nodes, volume_config)
    except AlreadyExists:
        return await Volume.open(volume_id, nodes, volume_config)


class Instance:
    def __init__(self, config: ComputeNodeConfig) -> None:
        if config.role != "writer":
            raise InvalidRequest("only the writer role exists so far", role=config.role)
        self.config = config
        self.metrics = Metrics("borealis_instance")

    async def run(self) -> None:
        volume = await open_volume(self.config)
        volume.register_metrics(self.metrics)
        engine = await Engine.open(
            volume, volume.wait_durable, readers=self.config.reader_connections
        )
        log.info("volume open", volume=self.config.volume_id, vdl=volume.vdl, pgs=volume.pg_count)
        postgres = await self._serve_postgres(engine)

        server = rpc.server(16 * 2**20)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self.metrics, {}), server)
        config = self.config
        serving = await Serving.start(
            server,
            SERVICE_NAMES,
            config.host,
            config.port,
            config.data_dir,
            self.metrics,
            config.metrics_port,
        )
        log.info("instance serving", name=config.name, role=config.role, port=serving.port)
        await until_stopped()

        log.info("instance stopping", name=config.name)
        await postgres.close()
        await serving.stop(config.shutdown_grace_ms / 1000)
        await engine.close()
        # Whatever was acknowledged is durable already; wait for the rest so a clean
        # stop leaves nothing for the next writer's recovery to truncate.
        with contextlib.suppress(Exception):
            await volume.wait_durable(volume.lsn_newest(), self.config.shutdown_grace_ms / 1000)
        await volume.close()
        log.info("instance stopped", name=self.config.name)

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

        settings = ServerSettings(
            server_version=SERVER_VERSION,
            connections_max=config.pg_connections_max,
            query_bytes_max=config.pg_statement_bytes_max,
            read_only=shared.read_only,
        )
        server = await start_server(
            config.host, config.pg_port, backend, self._verifier_of, settings
        )
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
