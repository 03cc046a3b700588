"""The admin side of a storage node: failpoints, metrics, and the `borealis` CLI.

Failpoints are set by BOREALIS_FAILPOINTS at start or by the admin RPC at run time,
and every hit is logged. Metrics are Prometheus text. `borealis up/status/down`
runs a cluster of real processes that outlive the command that started them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from borealis import faults, metrics, rpc
from borealis.errors import BorealisError, InvalidRequest
from borealis.wait import wait_until
from deploy.local import LocalCluster
from proto import admin_pb2, admin_pb2_grpc
from storage_node.client import StorageClient
from tests.support.redo_model import RedoModel
from tests.support.storage import (
    EPOCHS,
    VOLUME,
    append_all,
    clients,
    close_all,
    create_segment,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

PG = 0
PAGE_COUNT = 8
BEFORE_ACK = "storage.append.before_ack"
BEFORE_WRITE = "storage.append.before_write"
BEFORE_COMMIT = "storage.writer.before_commit"
CLI_TIMEOUT_S = 120.0


async def list_failpoints(address: str) -> dict[str, str]:
    async with rpc.channel(address, 2**20) as channel:
        response = await admin_pb2_grpc.AdminStub(channel).ListFailpoints(
            admin_pb2.ListFailpointsRequest(), timeout=5.0
        )
    return dict(response.failpoints)


def failpoint_hits(log_path: Path, name: str) -> list[str]:
    return [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if 'event="failpoint hit"' in line and f"name={name} " in f"{line} "
    ]


def test_failpoint_from_environment_until_cleared_by_rpc(cluster_builder) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_builder(env={"BOREALIS_FAILPOINTS": f"{BEFORE_ACK}=error"}).start()

    async def scenario() -> None:
        all_clients = clients(cluster)
        try:
            await create_segment(all_clients, cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=31)
            batch = model.records(10)
            for node, client in zip(cluster.storage_nodes, all_clients, strict=True):
                assert await list_failpoints(node.address) == {BEFORE_ACK: "error"}
                with pytest.raises(BorealisError, match="failpoint fired"):
                    await client.append(segment_id(PG), EPOCHS, batch)
                assert failpoint_hits(node.log_path, BEFORE_ACK)

            for node, client in zip(cluster.storage_nodes, all_clients, strict=True):
                await client.set_failpoint(BEFORE_ACK, "off")
                assert await list_failpoints(node.address) == {}
            acks = await append_all(all_clients, PG, batch)
            assert {ack.scl for ack in acks} == {model.lsn}
            # A bad action is refused and changes nothing.
            with pytest.raises(InvalidRequest):
                await all_clients[0].set_failpoint(BEFORE_ACK, "explode")
            assert await list_failpoints(cluster.storage_nodes[0].address) == {}
        finally:
            await close_all(all_clients)

    run(scenario)


def test_failpoint_sleep_delays_an_append(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        client = all_clients[0]
        address = storage_cluster.storage_nodes[0].address
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=32)
            await client.set_failpoint(BEFORE_WRITE, "sleep(300)")
            assert await list_failpoints(address) == {BEFORE_WRITE: "sleep(300)"}
            started = time.monotonic()
            ack = await client.append(segment_id(PG), EPOCHS, model.records(5))
            elapsed_s = time.monotonic() - started
            assert ack.scl == model.lsn
            assert elapsed_s >= 0.3
            await client.set_failpoint(BEFORE_WRITE, "off")
            assert await list_failpoints(address) == {}
            ack = await client.append(segment_id(PG), EPOCHS, model.records(5))
            assert ack.scl == model.lsn
            assert failpoint_hits(storage_cluster.storage_nodes[0].log_path, BEFORE_WRITE)
        finally:
            await close_all(all_clients)

    run(scenario)


def test_failpoint_exit_kills_the_node_before_its_commit(storage_cluster: LocalCluster) -> None:
    node = storage_cluster.node("s1")

    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        client = all_clients[storage_cluster.storage_nodes.index(node)]
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=33)
            await append_all(all_clients, PG, model.records(10))
            committed = list(model.encoded)
            scl_committed = model.lsn

            await client.set_failpoint(BEFORE_COMMIT, "exit")
            # Only this node gets the batch, so no peer can gossip it back.
            lost = model.records(5)
            with pytest.raises(BorealisError):
                await client.append(segment_id(PG), EPOCHS, lost)
            wait_until(lambda: not node.is_running(), 10.0, what="s1 to exit")
            assert node.process is not None and node.process.wait() == faults.EXIT_STATUS
            assert failpoint_hits(node.log_path, BEFORE_COMMIT)

            await asyncio.to_thread(node.restart)
            async with StorageClient(node.address) as restarted:
                # Failpoints set by RPC do not outlive the process.
                assert await list_failpoints(node.address) == {}
                state = await restarted.state(segment_id(PG))
                assert (state.scl, state.highest_lsn, state.records) == (
                    scl_committed,
                    scl_committed,
                    len(committed),
                )
                records, _, _ = await restarted.read_records(segment_id(PG), EPOCHS, 0, 2**63)
                assert records == committed
                ack = await restarted.append(segment_id(PG), EPOCHS, lost)
                assert (ack.scl, ack.records_new) == (model.lsn, len(lost))
        finally:
            await close_all(all_clients)

    run(scenario)


def test_metrics_are_prometheus_text(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=34)
            batch = model.records(25)
            acks = await append_all(all_clients, PG, batch)
            for client, ack in zip(all_clients, acks, strict=True):
                text = await client.metrics()
                samples = metrics.parse(text)
                prefix = "borealis_storage_"
                assert samples[f"{prefix}records_appended_total"] == 25
                assert samples[f"{prefix}record_bytes_appended_total"] == sum(map(len, batch))
                assert samples[f"{prefix}fsyncs_total"] >= 2  # the segment's creation, the batch
                assert samples[f'{prefix}segment_scl{{pg="{PG}",volume="{VOLUME}"}}'] == ack.scl
                assert ack.scl == model.lsn
                assert samples[f"{prefix}crc_failures_total"] == 0
                for name in ("records_appended_total", "crc_failures_total", "segment_scl"):
                    assert f"# TYPE {prefix}{name} " in text
                    assert f"# HELP {prefix}{name} " in text
        finally:
            await close_all(all_clients)

    run(scenario)
