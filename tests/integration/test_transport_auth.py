"""Issue 8, must hold 4: unauthenticated gRPC calls to storage nodes, instances, the
router and the control plane are refused; TLS client connections verify.

One real cluster (six storage nodes, a writer, the router, an in-process control
plane) started as `borealis up --tls` starts one: mutual TLS between its processes
from its CA, and TLS on its PostgreSQL endpoints. Callers without the cluster's
credentials try real calls (AppendRedo, GetPage, Admin.GetMetrics) three ways: in
plain text, over TLS without a client certificate, and with a certificate of
another CA. Each is refused at the handshake (UNAVAILABLE), and nothing they sent
reached a segment: the same append with the cluster's credentials afterwards is
new on the node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from borealis import config as config_module
from borealis import rpc, tls
from borealis.ids import Epoch, Epochs, PgIndex, SegmentId, VolumeId
from borealis.wait import wait_until
from control_plane.supervisor import Supervisor
from deploy.local import ADMIN_USER, DATABASE, LocalCluster, NodeProcess
from deploy.ports import PortAllocator
from proto import admin_pb2, admin_pb2_grpc, storage_pb2, storage_pb2_grpc
from router.config import RouterConfig
from storage_node.client import StorageClient
from storage_node.convert import segment_ref
from tests.conftest import FAST_STORAGE
from tests.support.redo_model import RedoModel
from tests.support.storage import members, run
from tests.support.supervised import supervised

pytestmark = pytest.mark.integration

RPC_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 20.0
PSQL_TIMEOUT_S = 20.0
SEGMENT = SegmentId(VolumeId(77), PgIndex(0))
EPOCHS = Epochs(Epoch(1), Epoch(1))
PAGES = 16
RECORDS = 20


@dataclass
class Secured:
    cluster: LocalCluster
    control_plane_address: str
    # A router over the same cluster without a certificate (a cluster without --tls).
    plain_router_port: int
    model: RedoModel
    foreign: tls.TransportSecurity

    @property
    def security(self) -> tls.TransportSecurity:
        return tls.load(self.cluster.tls_dir)

    @property
    def ca_file(self) -> Path:
        return self.cluster.tls_dir / tls.CA_CERT_FILE


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, port_allocator: PortAllocator
) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("transport")
    cluster = LocalCluster(
        directory / "cluster",
        ports=port_allocator,
        storage_overrides=FAST_STORAGE,
        writer=True,
        router=True,
        client_tls=True,
    )
    port = port_allocator.allocate()
    supervisor = Supervisor(cluster, port)
    # Another CA, as a stranger to the cluster would have one.
    foreign = tls.ensure_cluster_tls(directory / "foreign")
    with supervised(cluster, supervisor, port, expected_errors=()):
        run(lambda: _create_segment(cluster))
        plain_router, plain_port = _start_plain_router(cluster, directory, port_allocator)
        try:
            yield Secured(
                cluster, f"127.0.0.1:{port}", plain_port, RedoModel(0, PAGES, seed=8), foreign
            )
        finally:
            plain_router.stop(immediate=True)


async def _create_segment(cluster: LocalCluster) -> None:
    """The test's segment on every node, made with the cluster's credentials."""
    for node in cluster.storage_nodes:
        async with StorageClient(node.address, RPC_TIMEOUT_S) as client:
            await client.set_membership(SEGMENT, EPOCHS, 0, PAGES, members(cluster))


def _start_plain_router(
    cluster: LocalCluster, directory: Path, ports: PortAllocator
) -> tuple[NodeProcess, int]:
    """A second router process over the cluster, without an endpoint certificate
    (it still speaks mutual TLS to the instances' gRPC)."""
    router_dir = directory / "plain_router"
    router_dir.mkdir()
    config = config_module.build(
        RouterConfig,
        {
            "name": "plain_router",
            "data_dir": router_dir,
            "cluster_file": cluster.data_dir / "cluster.json",
            "users_file": cluster.data_dir / "users.json",
            "proxy_secret_file": cluster.data_dir / "proxy_secret",
            "port": ports.allocate(),
            "writer_port": ports.allocate(),
            "reader_port": ports.allocate(),
        },
    )
    config_path = router_dir / "router.toml"
    config_path.write_text("[router]\n" + config_module.to_toml(config))
    process = NodeProcess(
        name=config.name,
        argv=[sys.executable, "-m", "router", "--config", str(config_path)],
        directory=router_dir,
        address=f"{config.host}:{config.port}",
        env=cluster.process_env(),
    )
    process.start()
    return process, config.writer_port


# --- gRPC -----------------------------------------------------------------------------


def _channels(secured: Secured) -> dict[str, Callable[[str], grpc.Channel]]:
    """Every way to open a channel that lacks the cluster's credentials. The TLS
    ones trust the cluster's CA, so that what fails is the server refusing the
    client, not the client refusing the server."""
    ca = secured.security.ca_pem
    foreign = secured.foreign
    without_certificate = grpc.ssl_channel_credentials(root_certificates=ca)
    other_ca = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=foreign.node_key_pem,
        certificate_chain=foreign.node_cert_pem,
    )
    return {
        "plain text": grpc.insecure_channel,
        "TLS without a client certificate": lambda a: grpc.secure_channel(a, without_certificate),
        "a certificate of another CA": lambda a: grpc.secure_channel(a, other_ca),
    }


def _calls(secured: Secured) -> dict[str, tuple[str, Callable[[grpc.Channel], Any]]]:
    """Name -> (address, call on a channel to it)."""
    cluster = secured.cluster
    storage = cluster.storage_nodes[0].address
    model = secured.model
    append = storage_pb2.AppendRedoRequest(
        segment=segment_ref(SEGMENT, EPOCHS), records=model.records(RECORDS)
    )
    page = storage_pb2.GetPageRequest(segment=segment_ref(SEGMENT, EPOCHS), page=1, lsn=model.lsn)

    def metrics(channel: grpc.Channel) -> Any:
        return admin_pb2_grpc.AdminStub(channel).GetMetrics(
            admin_pb2.GetMetricsRequest(), timeout=RPC_TIMEOUT_S
        )

    assert cluster.router is not None
    return {
        "storage AppendRedo": (
            storage,
            lambda ch: storage_pb2_grpc.StorageStub(ch).AppendRedo(append, timeout=RPC_TIMEOUT_S),
        ),
        "storage GetPage": (
            storage,
            lambda ch: storage_pb2_grpc.StorageStub(ch).GetPage(page, timeout=RPC_TIMEOUT_S),
        ),
        "storage Admin.GetMetrics": (storage, metrics),
        "writer Admin.GetMetrics": (cluster.writer().address, metrics),
        "router Admin.GetMetrics": (cluster.router.address, metrics),
        "control plane Admin.GetMetrics": (secured.control_plane_address, metrics),
    }


def test_only_the_cluster_credentials_open_storage_instances_router_and_control_plane(
    secured: Secured,
) -> None:
    calls = _calls(secured)
    for how, open_channel in _channels(secured).items():
        for name, (address, call) in calls.items():
            with open_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
                call(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (how, name, refused.value)
            # Refused for want of credentials, not for being down: it serves the cluster.
            assert _serving(address), (how, name)

    responses = {}
    for name, (address, call) in calls.items():
        # A loaded machine may make a process miss a heartbeat and be restarted:
        # an UNAVAILABLE here is tried again (a refused append reached nothing).
        responses[name] = wait_until(
            lambda a=address, c=call: _call_with_credentials(a, c), CALL_TIMEOUT_S, what=name
        )
    # Nothing a refused caller sent reached the segment: the append is new here.
    assert responses["storage AppendRedo"].records_new == RECORDS
    assert responses["storage AppendRedo"].scl == secured.model.lsn
    page = responses["storage GetPage"]
    assert (page.image, page.page_lsn) == secured.model.page_at(1, secured.model.lsn)
    assert "borealis_storage" in responses["storage Admin.GetMetrics"].text
    for name in ("writer", "router", "control plane"):
        assert responses[f"{name} Admin.GetMetrics"].text, name


def _serving(address: str) -> bool:
    return run(lambda: rpc.health_status(address, RPC_TIMEOUT_S)) == "SERVING"


def _call_with_credentials(address: str, call: Callable[[grpc.Channel], Any]) -> Any:
    with rpc.sync_channel(address) as channel:
        return call(channel)


def test_every_process_listens_with_mutual_tls(secured: Secured) -> None:
    """Health, the launcher's readiness check, answers only with the credentials."""
    for process in secured.cluster.processes():
        channel = grpc.insecure_channel(process.address)
        with channel, pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(channel).GetMetrics(
                admin_pb2.GetMetricsRequest(), timeout=RPC_TIMEOUT_S
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, process.name
        assert _serving(process.address), process.name


# --- PostgreSQL endpoints -------------------------------------------------------------


def _psql(port: int, password: str, *options: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    conninfo = " ".join(
        [f"host=localhost port={port} user={ADMIN_USER} dbname={DATABASE}", *options]
    )
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10", "PSQLRC": os.devnull}
    return subprocess.run(
        [binary, "-X", "--no-password", "-At", "-d", conninfo, "-c", "SELECT 40 + 2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PSQL_TIMEOUT_S,
        check=False,
    )


def _writer_port(secured: Secured) -> int:
    return secured.cluster.router_ports["writer"]


def test_psql_verifies_the_endpoint_with_the_cluster_ca(secured: Secured) -> None:
    done = _psql(
        _writer_port(secured),
        secured.cluster.password,
        "sslmode=verify-full",
        f"sslrootcert={secured.ca_file}",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


def test_psql_verifies_an_instance_endpoint(secured: Secured) -> None:
    writer = secured.cluster.writer()
    done = _psql(
        writer.pg_port,
        secured.cluster.password,
        "sslmode=verify-full",
        f"sslrootcert={secured.ca_file}",
    )
    assert done.returncode == 0, done.stderr


def test_the_endpoint_urls_in_cluster_json_verify_and_use_tls(secured: Secured) -> None:
    """What `borealis sql` and users read: endpoints.writer asks for verify-full."""
    url = secured.cluster.endpoints()["writer"]
    assert "sslmode=verify-full" in url and f"sslrootcert={secured.ca_file}" in url
    with psycopg.connect(url, password=secured.cluster.password, connect_timeout=10) as connection:
        assert connection.pgconn.ssl_in_use
        assert connection.execute("SELECT 1").fetchone() == (1,)
    borealis = Path(sys.executable).with_name("borealis")
    done = subprocess.run(
        [str(borealis), "sql", "--data-dir", str(secured.cluster.data_dir), "-c", "SELECT 40 + 2"],
        capture_output=True,
        text=True,
        timeout=PSQL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout


def test_psql_refuses_an_endpoint_its_ca_file_did_not_sign(secured: Secured) -> None:
    done = _psql(
        _writer_port(secured),
        secured.cluster.password,
        "sslmode=verify-full",
        f"sslrootcert={secured.foreign.tls_dir / tls.CA_CERT_FILE}",
    )
    assert done.returncode != 0
    assert "certificate verify failed" in done.stderr, done.stderr


def test_without_tls_sslmode_require_is_refused_as_postgresql_refuses_it(
    secured: Secured,
) -> None:
    password = secured.cluster.password
    refused = _psql(secured.plain_router_port, password, "sslmode=require")
    assert refused.returncode != 0
    assert "server does not support SSL, but SSL was required" in refused.stderr, refused.stderr
    plain = _psql(secured.plain_router_port, password, "sslmode=prefer")
    assert plain.returncode == 0 and plain.stdout.strip() == "42", plain.stderr
