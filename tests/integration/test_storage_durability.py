"""Must-hold 2: acked records survive kill -9 of every node and a restart, byte for byte.

A node that dies inside a group commit (failpoint `storage.writer.before_commit` set
to `exit`) comes back holding exactly what it acked before, and gossip then fills in
what its peers acked without it.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from borealis import faults
from borealis.errors import Unavailable
from borealis.wait import wait_until, wait_until_async
from deploy.local import LocalCluster
from storage_node.client import StorageClient
from tests.support.redo_model import RedoModel
from tests.support.storage import (
    EPOCHS,
    append_all,
    clients,
    close_all,
    create_segment,
    node_metric,
    page_mismatches,
    read_all_records,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

# pg -> (first_page, page_count): distinct, adjacent page ranges as a volume lays them out.
PG_PAGES = {0: (0, 32), 1: (32, 32), 2: (64, 16)}
CATCH_UP_TIMEOUT_S = 20.0


def pg_models() -> dict[int, RedoModel]:
    # PG 1 leaves gaps between its LSNs (other PGs' records would take them), and
    # PG 2 starts high, so no test can pass by assuming LSNs are 1, 2, 3, ...
    return {
        0: RedoModel(first_page=0, page_count=8, seed=11),
        1: RedoModel(first_page=32, page_count=8, seed=12, lsn_stride=3),
        2: RedoModel(first_page=64, page_count=4, seed=13, lsn_start=1000),
    }


async def append_acked(all_clients: list[StorageClient], pg: int, batch: list[bytes], scl: int):
    """Appends one batch to all six; every node must ack it with SCL `scl`."""
    acks = await append_all(all_clients, pg, batch)
    assert [(ack.scl, ack.highest_lsn) for ack in acks] == [(scl, scl)] * len(all_clients)
    # Usually all new, but a node's gossip may have copied some of the batch from a
    # faster peer before this append reached it.
    assert all(0 <= ack.records_new <= len(batch) for ack in acks)


async def check_segment(client: StorageClient, pg: int, model: RedoModel) -> None:
    """The node holds exactly the model's records of the PG and serves its pages."""
    state = await client.state(segment_id(pg))
    assert (state.scl, state.highest_lsn) == (model.lsn, model.lsn), client.address
    assert state.records == len(model.encoded)
    assert state.record_bytes == sum(len(record) for record in model.encoded)
    records = await read_all_records(client, pg)
    assert len(records) == len(model.encoded), client.address
    assert records == model.encoded, f"{client.address} pg {pg}: records differ after restart"
    lsns = sorted(random.Random(pg).sample(range(1, model.lsn + 1), 12) + [model.lsn])
    assert await page_mismatches(client, pg, model, sorted(model.pages), lsns) == []


def test_acked_records_survive_kill_9_of_every_node(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        models = pg_models()
        all_clients = clients(storage_cluster)
        try:
            for pg, (first_page, page_count) in PG_PAGES.items():
                await create_segment(all_clients, storage_cluster, pg, first_page, page_count)
            sizes = random.Random(5)
            for _round in range(4):
                batches = {pg: model.records(sizes.randint(10, 60)) for pg, model in models.items()}
                await asyncio.gather(
                    *(
                        append_acked(all_clients, pg, batch, models[pg].lsn)
                        for pg, batch in batches.items()
                    )
                )
        finally:
            await close_all(all_clients)

        # No clean shutdown: every node dies right after its last ack.
        for node in storage_cluster.storage_nodes:
            node.kill()
            assert not node.is_running()
        await asyncio.to_thread(storage_cluster.start)

        all_clients = clients(storage_cluster)
        try:
            for client in all_clients:
                for pg, model in models.items():
                    await check_segment(client, pg, model)
        finally:
            await close_all(all_clients)

    run(scenario)


def failpoint_hits(log_text: str, name: str) -> int:
    return sum(
        1 for line in log_text.splitlines() if "failpoint hit" in line and f"name={name}" in line
    )


def test_node_dying_in_commit_keeps_only_acked_records_then_gossip_fills_it(
    storage_cluster: LocalCluster,
) -> None:
    victim = storage_cluster.node("s3")
    victim_index = storage_cluster.storage_nodes.index(victim)

    async def scenario() -> None:
        model = RedoModel(first_page=0, page_count=6, seed=21, lsn_stride=2)
        all_clients = clients(storage_cluster)
        try:
            await create_segment(all_clients, storage_cluster, 0, 0, 16)
            for size in (30, 25, 40):
                await append_acked(all_clients, 0, model.records(size), model.lsn)
            acked_lsn, acked = model.lsn, list(model.encoded)

            await all_clients[victim_index].set_failpoint("storage.writer.before_commit", "exit")
            batch = model.records(35)
            results = await asyncio.gather(
                *(c.append(segment_id(0), EPOCHS, batch) for c in all_clients),
                return_exceptions=True,
            )
            for index, result in enumerate(results):
                if index == victim_index:
                    assert isinstance(result, Unavailable), result
                else:
                    assert not isinstance(result, BaseException), result
                    assert (result.scl, result.highest_lsn) == (model.lsn, model.lsn)
        finally:
            await close_all(all_clients)

        # The failpoint ended the process, with its own exit status, before the commit.
        await asyncio.to_thread(
            wait_until, lambda: not victim.is_running(), 10.0, what="s3 to exit"
        )
        assert victim.process is not None and victim.process.returncode == faults.EXIT_STATUS
        victim.stop()

        # Restart with gossip's writes held at a pause, to see what the node kept on its own.
        victim.env["BOREALIS_FAILPOINTS"] = "storage.append.before_write=pause"
        try:
            await asyncio.to_thread(victim.start)
        finally:
            del victim.env["BOREALIS_FAILPOINTS"]
        async with StorageClient(victim.address) as client:
            state = await client.state(segment_id(0))
            assert (state.scl, state.highest_lsn) == (acked_lsn, acked_lsn)
            assert state.records == len(acked)
            assert await read_all_records(client, 0) == acked
            with pytest.raises(Unavailable):
                await client.get_page(segment_id(0), EPOCHS, 0, model.lsn)
            # Gossip found the missing batch on a peer and is waiting to write it.
            await asyncio.to_thread(
                wait_until,
                lambda: failpoint_hits(victim.log_path.read_text(), "storage.append.before_write"),
                CATCH_UP_TIMEOUT_S,
                what="gossip on s3 to try to fill its segment",
            )
            assert (await client.state(segment_id(0))).scl == acked_lsn

            await client.set_failpoint("storage.append.before_write", "off")

            async def caught_up() -> bool:
                return (await client.state(segment_id(0))).scl == model.lsn

            await wait_until_async(caught_up, CATCH_UP_TIMEOUT_S, what="s3 to catch up by gossip")
            assert await read_all_records(client, 0) == model.encoded
            assert await node_metric(client, "gossip_records_filled_total") == len(batch)
            lsns = list(range(acked_lsn - 5, model.lsn + 1))
            assert await page_mismatches(client, 0, model, sorted(model.pages), lsns) == []

    run(scenario)
