"""Storage node replacement on real processes (issue 6, must hold 4): the control
plane (its Supervisor and gRPC API, run in this process as `python -m control_plane`
runs them) supervises a LocalCluster with a writer and the router, while the bank
workload (tests/fault/bank.py) runs through the writer endpoint.

1. `borealis replace-storage-node s2` (the CLI) under load: it completes, no error
   reaches a client, cluster.json lists s7 instead of s2 (whose directory is gone),
   s7 holds the moved PGs' segments with the SCLs of their peers and serves GetPage
   with their images, the bank checks hold, and again after the writer restarts
   (recovery on the new member set).
2. The same through the ControlPlane RPC with s2 lost first (its disk deleted and
   its process killed -9, so it stays down); an unknown node is NOT_FOUND.
3. Automatic: with storage_replace_after_s = 2, a lost node is replaced without
   any command.
4. Without a running writer a replacement is refused (UNAVAILABLE) and starts nothing.
5. The launcher adds a storage node (a name never given before, the others'
   settings) and removes one (process, directory, cluster.json entry).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from borealis import config as config_module
from borealis import rpc
from borealis.errors import Unavailable
from borealis.ids import Epochs, PgIndex, SegmentId, VolumeId
from borealis.wait import wait_until
from control_plane.storage_replacement import ReplacementSettings, StorageReplacementPolicy
from control_plane.supervisor import RestartPolicy, Supervisor
from deploy.local import LocalCluster, StorageNodeProcess
from deploy.ports import PortAllocator
from proto import control_pb2, control_pb2_grpc
from storage_node.client import StorageClient
from storage_node.config import StorageNodeConfig
from storage_node.segment import SegmentMeta
from tests.conftest import FAST_STORAGE
from tests.fault.bank import BankWorkload, check_bank, connector, create_bank
from tests.support.supervised import supervised

pytestmark = pytest.mark.integration

VOLUME = VolumeId(1)
# Small PGs, so the bank's few dozen pages span several PGs and a replacement moves
# more than one.
INSTANCE = {"pages_per_pg": 4}
ROUTER = {"health_interval_ms": 100, "topology_poll_ms": 100}
WARM_UP_ACKS = 20
FILLER_ROWS = 40
ACKS_AFTER = 20
ACKS_TIMEOUT_S = 30.0
REPLACE_TIMEOUT_S = 40.0
CLI_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S = 20.0
RESTART_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 5.0
# The automatic test's limit: small, but two checks of a node at least.
AUTO = ReplacementSettings(
    replace_after_s=2.0, retry_after_s=2.0, check_interval_s=0.25, replace_timeout_s=40.0
)
NEVER = ReplacementSettings(replace_after_s=0)
# Errors the tests cause on purpose: a killed node's peers and the writer lose it;
# a killed writer's router loses it.
EXPECTED_ERRORS = ("redo stream ended", "heartbeat failed", "StaleEpoch", "fenced")


@dataclass
class Running:
    cluster: LocalCluster
    supervisor: Supervisor
    control_plane_port: int

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.cluster.data_dir / "cluster.json").read_text())
        return document

    def storage_names(self) -> list[str]:
        return [node["name"] for node in self.document()["storage_nodes"]]

    def connect(self) -> Callable[[], Any]:
        return connector(self.document()["endpoints"]["writer"], self.cluster.password)

    def control_plane(self) -> control_pb2_grpc.ControlPlaneStub:
        channel = rpc.sync_channel(f"127.0.0.1:{self.control_plane_port}")
        return control_pb2_grpc.ControlPlaneStub(channel)


def start_running(
    tmp_path: Path, ports: PortAllocator, settings: ReplacementSettings, writer: bool = True
) -> Iterator[Running]:
    cluster = LocalCluster(
        tmp_path / "cluster",
        ports=ports,
        writer=writer,
        router=writer,
        storage_overrides=FAST_STORAGE,
        instance_overrides=INSTANCE,
        router_overrides=ROUTER,
    )
    port = ports.allocate()
    # Restarts quickly, and no give-up while a lost node keeps failing to start.
    restarts = RestartPolicy(backoff_initial_s=0.2, backoff_max_s=2.0, restarts_max=50)
    supervisor = Supervisor(
        cluster, port, policy=restarts, replacement=StorageReplacementPolicy(settings)
    )
    with supervised(cluster, supervisor, port, EXPECTED_ERRORS):
        yield Running(cluster, supervisor, port)


@pytest.fixture
def running(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, NEVER)


@pytest.fixture
def running_auto(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, AUTO)


@pytest.fixture
def storage_only(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Running]:
    yield from start_running(tmp_path, port_allocator, NEVER, writer=False)


# --- helpers -------------------------------------------------------------------------


def lose_node(node: StorageNodeProcess) -> None:
    """The node's host is lost: its disk (directory) goes, then kill -9. Supervision's
    restarts fail (no config), so it stays down, unlike after a bare kill -9."""
    shutil.rmtree(node.directory)
    assert node.pid is not None
    os.kill(node.pid, signal.SIGKILL)


def segments_on(address: str) -> list[SegmentMeta]:
    async def listing() -> list[SegmentMeta]:
        async with StorageClient(address, RPC_TIMEOUT_S) as client:
            return [m for m in await client.list_segments() if m.volume_id == VOLUME]

    return asyncio.run(listing())


def page_image(address: str, meta: SegmentMeta, lsn: int) -> bytes:
    """GetPage of the segment's first page at `lsn`, with the segment's own epochs."""

    async def read() -> bytes:
        async with StorageClient(address, RPC_TIMEOUT_S) as client:
            segment = SegmentId(VOLUME, PgIndex(meta.pg))
            epochs = Epochs(meta.volume_epoch, meta.membership_epoch)  # type: ignore[arg-type]
            image, _ = await client.get_page(segment, epochs, meta.first_page, lsn)
            return image

    return asyncio.run(read())


def check_new_node_serves(running: Running, old: str, new: str, pgs: set[int]) -> None:
    """`new` holds a segment of every moved PG, a member of the new set alone, with
    the SCL of its peers, and serves the same page images as a peer; no segment
    anywhere names the old node (PGs created after the change are placed on the new
    set too)."""
    cluster = running.cluster
    address = cluster.node(new).address
    held = {meta.pg for meta in segments_on(address)}
    assert held >= pgs, f"{new} holds PGs {sorted(held)}, the writer moved {sorted(pgs)}"
    peers = [node for node in cluster.storage_nodes if node.name != new]
    for node in peers:
        for meta in segments_on(node.address):
            names = {member.node for member in meta.members}
            assert old not in names, f"PG {meta.pg} on {node.name} still names {old}"

    def converged() -> list[tuple[SegmentMeta, StorageNodeProcess, SegmentMeta]]:
        pairs = []
        for meta in segments_on(address):
            names = {member.node for member in meta.members}
            assert new in names and old not in names, (meta.pg, sorted(names))
            peer_metas = {
                node.name: each
                for node in peers
                if node.name in names
                for each in segments_on(node.address)
                if each.pg == meta.pg
            }
            assert len(peer_metas) == 5, (meta.pg, sorted(peer_metas))
            scls = {each.scl for each in peer_metas.values()}
            if scls != {meta.scl}:
                return []
            peer = next(node for node in peers if node.name in peer_metas)
            pairs.append((meta, peer, peer_metas[peer.name]))
        return pairs

    pairs = wait_until(converged, CONVERGE_TIMEOUT_S, 0.2, f"{new}'s SCLs to equal its peers'")
    for meta, peer, peer_meta in pairs:
        mine = page_image(address, meta, meta.scl)
        theirs = page_image(peer.address, peer_meta, meta.scl)
        assert mine == theirs, f"PG {meta.pg}: {new} and {peer.name} serve different pages"
    print(f"{new}: {len(pairs)} segments at their peers' SCLs, pages equal")


def check_cluster_file(running: Running, old: str, new: str) -> None:
    document = running.document()
    names = [node["name"] for node in document["storage_nodes"]]
    assert old not in names and new in names, names
    assert len(names) == 6, names
    assert document["storage_replacements"] == {}
    assert not (running.cluster.data_dir / old).exists(), f"{old}'s directory is still there"
    entry = next(node for node in document["storage_nodes"] if node["name"] == new)
    assert entry["state"] == "running"
    # A reopened cluster (a control plane restart) has the same set.
    reopened = LocalCluster.reopen(running.cluster.data_dir)
    assert [node.name for node in reopened.storage_nodes] == names


def restart_writer_and_check(running: Running, acknowledged: set[str]) -> None:
    """kill -9 the writer; supervision restarts it (no reader to promote); its
    recovery runs on the new member set and the bank is all there."""
    writer = running.cluster.writer()
    assert writer.pid is not None
    old_pid = writer.pid
    os.kill(old_pid, signal.SIGKILL)

    def bank_ok() -> bool:
        if writer.pid == old_pid:
            return False
        with running.connect()() as connection:
            check_bank(connection, acknowledged, "the restarted writer")
        return True

    wait_until(bank_ok, RESTART_TIMEOUT_S, 0.2, "the restarted writer to serve the bank")


def create_filler(connect: Callable[[], Any]) -> None:
    """Rows enough for a dozen pages, so the volume spans several PGs before the
    replacement and it moves more than one."""
    with connect() as connection:
        connection.execute("CREATE TABLE filler (id integer PRIMARY KEY, body text)")
        with connection.transaction():
            for row in range(FILLER_ROWS):
                connection.execute("INSERT INTO filler VALUES (%s, %s)", (row, "x" * 1000))


@contextmanager
def bank_under_load(running: Running) -> Iterator[BankWorkload]:
    """The bank created and its clients running, warmed up; stopped on exit (also
    when the test fails: stopping twice is harmless)."""
    connect = running.connect()
    create_bank(connect)
    create_filler(connect)
    workload = BankWorkload(connect, seed=6).start()
    try:
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "the bank to warm up")
        yield workload
    finally:
        workload.stop()


def finish_bank(running: Running, workload: BankWorkload) -> set[str]:
    """More transfers after the change, then stop; no error reached a client."""
    try:
        workload.wait_for_acks(ACKS_AFTER, ACKS_TIMEOUT_S, "transfers after the replacement")
    finally:
        workload.stop()
        print("bank:", workload.summary())
    errors = workload.fault_errors()
    assert not errors, f"{len(errors)} errors reached clients:\n" + "\n".join(map(str, errors[:20]))
    acknowledged = workload.acknowledged()
    with running.connect()() as connection:
        check_bank(connection, acknowledged, "the writer endpoint")
    return acknowledged


def borealis_cli(*args: str) -> subprocess.CompletedProcess[str]:
    borealis = Path(sys.executable).with_name("borealis")
    return subprocess.run(
        [str(borealis), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )


# --- tests ---------------------------------------------------------------------------


def test_replace_under_load_through_the_cli(running: Running) -> None:
    data_dir = str(running.cluster.data_dir)
    with bank_under_load(running) as workload:
        done = borealis_cli(
            "replace-storage-node", "s2", "--data-dir", data_dir, "--timeout-s", "40"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        print(done.stdout.strip())
        match = re.search(r"s2 replaced by (s\d+): (\d+) PGs moved \(([\d,]+)\)", done.stdout)
        assert match is not None, done.stdout
        acknowledged = finish_bank(running, workload)
    new = match.group(1)
    assert new == "s7", "a new name, after the highest ever given"
    pgs = {int(each) for each in match.group(3).split(",")}
    assert len(pgs) == int(match.group(2)) >= 2
    check_cluster_file(running, "s2", new)
    check_new_node_serves(running, "s2", new, pgs)
    status = borealis_cli("status", "--data-dir", data_dir)
    assert re.search(r"^s7 +storage +az-a .* up ", status.stdout, re.MULTILINE), status.stdout
    assert not re.search(r"^s2 ", status.stdout, re.MULTILINE), status.stdout
    restart_writer_and_check(running, acknowledged)


def test_replace_a_lost_node_through_the_rpc(running: Running) -> None:
    stub = running.control_plane()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReplaceStorageNode(
            control_pb2.ReplaceStorageNodeRequest(name="s99"), timeout=RPC_TIMEOUT_S
        )
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    with bank_under_load(running) as workload:
        lose_node(running.cluster.node("s4"))
        workload.wait_for_acks(5, ACKS_TIMEOUT_S, "transfers with s4 lost")
        request = control_pb2.ReplaceStorageNodeRequest(
            name="s4", timeout_ms=round(REPLACE_TIMEOUT_S * 1000)
        )
        done = stub.ReplaceStorageNode(request, timeout=REPLACE_TIMEOUT_S * 2)
        print(f"{done.old_node} -> {done.new_node}: PGs {list(done.pgs)} in {done.duration_ms} ms")
        acknowledged = finish_bank(running, workload)
    assert (done.old_node, done.new_node) == ("s4", "s7")
    assert len(done.pgs) >= 2
    assert running.cluster.node("s7").az == "az-b", "the new node is in the old one's AZ"
    check_cluster_file(running, "s4", "s7")
    check_new_node_serves(running, "s4", "s7", set(done.pgs))
    restart_writer_and_check(running, acknowledged)


def test_a_node_down_too_long_is_replaced_automatically(running_auto: Running) -> None:
    running = running_auto
    with bank_under_load(running) as workload:
        lost_at = time.monotonic()
        lose_node(running.cluster.node("s5"))
        wait_until(
            lambda: "s5" not in running.storage_names() and "s7" in running.storage_names(),
            REPLACE_TIMEOUT_S,
            0.2,
            "s5 to be replaced automatically",
        )
        replaced_after_s = time.monotonic() - lost_at
        print(f"s5 replaced by s7 {replaced_after_s:.1f} s after it was lost")
        finish_bank(running, workload)
    assert replaced_after_s >= AUTO.replace_after_s
    assert running.supervisor.replacements_total == 1
    check_cluster_file(running, "s5", "s7")
    assert running.cluster.node("s7").az == "az-c"
    assert segments_on(running.cluster.node("s7").address), "s7 holds segments"


def test_without_a_writer_a_replacement_is_refused(storage_only: Running) -> None:
    stub = storage_only.control_plane()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReplaceStorageNode(
            control_pb2.ReplaceStorageNodeRequest(name="s1"), timeout=RPC_TIMEOUT_S
        )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no running writer" in (refused.value.details() or "")
    assert storage_only.storage_names() == [f"s{index}" for index in range(1, 7)]
    assert not (storage_only.cluster.data_dir / "s7").exists(), "no new node was started"
    # The supervisor refuses the same way when called directly.
    with pytest.raises(Unavailable):
        storage_only.supervisor.replace_storage_node("s1", timeout_s=1.0)


def test_storage_nodes_are_added_and_removed_under_new_names(
    storage_cluster: LocalCluster,
) -> None:
    cluster = storage_cluster
    added = cluster.add_storage_node("az-b")
    assert (added.name, added.az, added.state) == ("s7", "az-b", "running")
    assert asyncio.run(rpc.health_status(added.address, RPC_TIMEOUT_S)) == "SERVING"
    template = config_module.load(
        StorageNodeConfig, cluster.node("s1").directory / "storage_node.toml", table="storage_node"
    )
    config = config_module.load(
        StorageNodeConfig, added.directory / "storage_node.toml", table="storage_node"
    )
    assert (
        config.gossip_interval_ms
        == template.gossip_interval_ms
        == FAST_STORAGE["gossip_interval_ms"]
    )
    cluster.remove_storage_node("s7")
    assert not added.is_running() and not added.directory.exists()
    document = json.loads((cluster.data_dir / "cluster.json").read_text())
    assert [node["name"] for node in document["storage_nodes"]] == [f"s{i}" for i in range(1, 7)]
    # s7 existed: the next node is s8, also in a reopened cluster.
    assert LocalCluster.reopen(cluster.data_dir).storage_number_max == 7
    assert cluster.add_storage_node("az-c").name == "s8"
    reopened = LocalCluster.from_cluster_file(cluster.data_dir)
    assert reopened.node("s8").pid == cluster.node("s8").pid
    assert reopened.node("s8").az == "az-c"
