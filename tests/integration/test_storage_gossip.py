"""Must-hold 4: a node that was down during appends, or missed a batch, fills the hole by
gossip with its peers, and its SCL catches up within a bounded time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from borealis import redo
from borealis.errors import Unavailable
from borealis.wait import wait_until_async
from deploy.local import LocalCluster
from storage_node.client import AppendAck, StorageClient
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

CATCH_UP_TIMEOUT_S = 20.0
# pg -> (first_page, page_count)
PG_PAGES = {0: (0, 16), 1: (16, 16)}
NEVER_MS = 3_600_000


async def append_to_live(
    all_clients: list[StorageClient], pg: int, batch: list[bytes], down: int
) -> list[AppendAck | BaseException]:
    """Appends a batch to all six; every node but `down` (which may be dead) must ack it."""
    results = list(
        await asyncio.gather(
            *(c.append(segment_id(pg), EPOCHS, batch, timeout_s=2.0) for c in all_clients),
            return_exceptions=True,
        )
    )
    for index, result in enumerate(results):
        if index != down:
            assert isinstance(result, AppendAck), (index, result)
        elif isinstance(result, BaseException):
            assert isinstance(result, Unavailable), result
    return results


async def wait_caught_up(
    client: StorageClient, models: dict[int, RedoModel], timeout_s: float
) -> float:
    """Waits until the node's SCL of every PG is the model's last LSN; the seconds it took."""
    started = time.monotonic()

    async def caught_up() -> bool:
        states = [await client.state(segment_id(pg)) for pg in models]
        return all(state.scl == models[state.pg].lsn for state in states)

    await wait_until_async(caught_up, timeout_s, interval_s=0.1, what="the SCL to catch up")
    return time.monotonic() - started


def test_node_killed_during_appends_catches_up_by_gossip(storage_cluster: LocalCluster) -> None:
    victim = storage_cluster.node("s4")
    down = storage_cluster.storage_nodes.index(victim)
    models = {
        0: RedoModel(first_page=0, page_count=8, seed=31),
        1: RedoModel(first_page=16, page_count=8, seed=32, lsn_stride=4),
    }
    # The stream's batch number at which the victim dies and comes back.
    kill_at, restart_at, batches = 8, 20, 32
    victim_failures = 0

    async def stream(all_clients: list[StorageClient]) -> None:
        """Appends batch after batch; the victim dies while one is in flight and comes
        back (its start overlapping more appends) a while later."""
        nonlocal victim_failures
        kill = start = None
        for number in range(batches):
            if number == kill_at:
                kill = asyncio.create_task(asyncio.to_thread(victim.kill))
            if number == kill_at + 1:
                assert kill is not None
                await kill
            if number == restart_at:
                start = asyncio.create_task(asyncio.to_thread(victim.start))
            results = await asyncio.gather(
                *(
                    append_to_live(all_clients, pg, model.records(12), down)
                    for pg, model in models.items()
                )
            )
            victim_failures += sum(isinstance(r[down], BaseException) for r in results)
        assert start is not None
        await start

    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        try:
            for pg, (first_page, page_count) in PG_PAGES.items():
                await create_segment(all_clients, storage_cluster, pg, first_page, page_count)
            await stream(all_clients)
            # The victim missed every batch sent while it was down.
            assert victim_failures >= 2 * (restart_at - kill_at - 1)
            for index, client in enumerate(all_clients):
                if index != down:
                    for pg, model in models.items():
                        assert (await client.state(segment_id(pg))).scl == model.lsn
        finally:
            await close_all(all_clients)

        async with StorageClient(victim.address) as client:
            await wait_caught_up(client, models, CATCH_UP_TIMEOUT_S)
            for pg, model in models.items():
                state = await client.state(segment_id(pg))
                assert (state.highest_lsn, state.records) == (model.lsn, len(model.encoded))
                assert await read_all_records(client, pg) == model.encoded
                pages = sorted(model.pages)
                assert await page_mismatches(client, pg, model, pages, [model.lsn]) == []
            assert await node_metric(client, "gossip_records_filled_total") > 0
            for pg in models:
                labels = {"pg": pg, "volume": segment_id(pg).volume_id}
                assert await node_metric(client, "segment_pending_records", **labels) == 0

    run(scenario)


def test_gossip_fills_a_hole_below_pending_records(
    cluster_builder: Callable[..., LocalCluster],
) -> None:
    # Gossip runs only when the test asks, so the hole stays open until then.
    cluster = cluster_builder(gossip_interval_ms=NEVER_MS).start()
    hole_node = cluster.storage_nodes.index(cluster.node("s5"))
    model = RedoModel(first_page=0, page_count=6, seed=41, lsn_stride=3)

    async def scenario() -> None:
        all_clients = clients(cluster)
        others = [c for index, c in enumerate(all_clients) if index != hole_node]
        client = all_clients[hole_node]
        labels = {"pg": 0, "volume": segment_id(0).volume_id}
        try:
            await create_segment(all_clients, cluster, 0, 0, 16)
            batch_a = model.records(40)
            end_a = model.lsn
            acks = await append_all(all_clients, 0, batch_a)
            assert {ack.scl for ack in acks} == {end_a}

            batch_b = model.records(30)
            end_b = model.lsn
            acks = await append_all(others, 0, batch_b)
            assert {ack.scl for ack in acks} == {end_b}

            batch_c = model.records(25)
            end_c = model.lsn
            acks = await append_all(all_clients, 0, batch_c)
            for index, ack in enumerate(acks):
                if index == hole_node:
                    # Held, but above a hole: the SCL stays at the end of batch A.
                    assert (ack.scl, ack.highest_lsn, ack.records_new) == (end_a, end_c, 25)
                else:
                    assert (ack.scl, ack.records_new) == (end_c, 25)
            assert await node_metric(client, "segment_pending_records", **labels) == 25
            assert await read_all_records(client, 0) == batch_a + batch_c
            with pytest.raises(Unavailable):
                await client.get_page(segment_id(0), EPOCHS, 0, end_a + 1)
            # Gossip on a complete node has nothing to do.
            assert await others[0].run_task("gossip") == ""

            assert await client.run_task("gossip", timeout_s=CATCH_UP_TIMEOUT_S) == "filled=30"
            state = await client.state(segment_id(0))
            assert (state.scl, state.highest_lsn) == (end_c, end_c)
            assert state.records == len(model.encoded)
            assert await read_all_records(client, 0) == model.encoded
            assert await node_metric(client, "gossip_records_filled_total") == len(batch_b)
            assert await node_metric(client, "segment_pending_records", **labels) == 0
            lsns = list(range(end_a - 3, end_c + 1))
            assert await page_mismatches(client, 0, model, sorted(model.pages), lsns) == []
            assert redo.HEADER.unpack_from(batch_b[0])[3] == end_a  # B links to A's end
        finally:
            await close_all(all_clients)

    run(scenario)


def test_gossip_fill_larger_than_one_append_batch(
    cluster_builder: Callable[..., LocalCluster],
) -> None:
    # A ReadRecords page of small records can hold more records than one AppendRedo
    # batch may; gossip must still get every one of them through the append checks.
    cluster = cluster_builder(append_batch_records_max=32).start()
    behind = cluster.storage_nodes.index(cluster.node("s2"))
    model = RedoModel(first_page=0, page_count=4, seed=51)

    async def scenario() -> None:
        all_clients = clients(cluster)
        others = [c for index, c in enumerate(all_clients) if index != behind]
        try:
            await create_segment(all_clients, cluster, 0, 0, 16)
            for _ in range(5):
                acks = await append_all(others, 0, model.records(30))
                assert {ack.scl for ack in acks} == {model.lsn}
            client = all_clients[behind]
            await wait_caught_up(client, {0: model}, CATCH_UP_TIMEOUT_S)
            assert await read_all_records(client, 0) == model.encoded
            assert await node_metric(client, "gossip_records_filled_total") == len(model.encoded)
        finally:
            await close_all(all_clients)

    run(scenario)
