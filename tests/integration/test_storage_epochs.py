"""Must-hold 5 (first half): stale epochs are refused, and epoch changes and truncation obey
the rules recovery relies on.

Data requests (AppendRedo, GetPage, ReadRecords, SetPgmrpl) must carry exactly the
segment's volume and membership epochs; anything else is FAILED_PRECONDITION and
changes nothing. SetEpoch never lowers the volume epoch; SetMembership never lowers
the membership epoch nor reuses one for a different member set.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from borealis import metrics, redo
from borealis.errors import InvalidRequest, StaleEpoch
from borealis.ids import Epoch, Epochs
from borealis.wait import wait_until
from deploy.local import LocalCluster
from storage_node.client import StorageClient
from storage_node.segment import Member
from tests.support.redo_model import RedoModel, rewind
from tests.support.storage import (
    EPOCHS,
    append_all,
    clients,
    close_all,
    create_segment,
    members,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

PG = 0
PAGE_COUNT = 8
LSN_READ_MAX = 2**63
STALE_METRIC = "borealis_storage_stale_epoch_requests_total"


def epochs(volume: int, membership: int) -> Epochs:
    return Epochs(Epoch(volume), Epoch(membership))


async def stale_count(client: StorageClient) -> float:
    return metrics.parse(await client.metrics()).get(STALE_METRIC, 0)


async def assert_data_requests_refused(
    client: StorageClient, stale: Epochs, batch: list[bytes], lsn: int
) -> int:
    """Sends each data request with `stale` epochs; each must be refused. Returns how many."""
    segment = segment_id(PG)
    with pytest.raises(StaleEpoch):
        await client.append(segment, stale, batch)
    with pytest.raises(StaleEpoch):
        await client.get_page(segment, stale, 0, lsn)
    with pytest.raises(StaleEpoch):
        await client.read_records(segment, stale, 0, LSN_READ_MAX)
    with pytest.raises(StaleEpoch):
        await client.set_pgmrpl(segment, stale, lsn)
    return 4


async def read_all(client: StorageClient, current: Epochs) -> list[bytes]:
    records, more, _ = await client.read_records(segment_id(PG), current, 0, LSN_READ_MAX)
    assert not more
    return records


async def assert_pages_match(client: StorageClient, current: Epochs, model: RedoModel) -> None:
    state = await client.state(segment_id(PG))
    for page in range(PAGE_COUNT):
        got = await client.get_page(segment_id(PG), current, page, state.scl)
        assert got == model.page_at(page, state.scl), f"page {page} at {state.scl}"


def test_stale_and_newer_epochs_are_refused_and_change_nothing(
    storage_cluster: LocalCluster,
) -> None:
    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        client = all_clients[0]
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=11)
            await append_all(all_clients, PG, model.records(20))
            stale_before = await stale_count(client)

            raised = await client.set_epoch(segment_id(PG), epochs(2, 1))
            assert (raised.volume_epoch, raised.membership_epoch) == (2, 1)
            before = await client.state(segment_id(PG))
            held = await read_all(client, epochs(2, 1))
            assert held == model.encoded

            # The next batch of the (now fenced) writer: refused with every wrong epoch.
            batch = model.records(5)
            refused = 0
            for stale in (
                epochs(1, 1),  # an older volume epoch: a fenced writer
                epochs(3, 1),  # a newer one: this segment missed a recovery
                epochs(2, 0),  # an older membership epoch
                epochs(2, 2),  # a newer membership epoch
                epochs(1, 2),
            ):
                refused += await assert_data_requests_refused(client, stale, batch, before.scl)

            after = await client.state(segment_id(PG))
            assert after == before, "a refused request changed the segment"
            assert await read_all(client, epochs(2, 1)) == held
            assert await stale_count(client) == stale_before + refused

            # The current epochs work for every request.
            ack = await client.append(segment_id(PG), epochs(2, 1), batch)
            assert (ack.scl, ack.records_new) == (model.lsn, 5)
            assert await read_all(client, epochs(2, 1)) == model.encoded
            await assert_pages_match(client, epochs(2, 1), model)
            state = await client.set_pgmrpl(segment_id(PG), epochs(2, 1), 3)
            assert state.pgmrpl == 3

            # The other segments still have epoch 1 and still serve it.
            for other in all_clients[1:]:
                image, _ = await other.get_page(segment_id(PG), EPOCHS, 0, before.scl)
                assert image == model.page_at(0, before.scl)[0]
                with pytest.raises(StaleEpoch):
                    await other.get_page(segment_id(PG), epochs(2, 1), 0, before.scl)
        finally:
            await close_all(all_clients)

    run(scenario)


def test_epoch_and_membership_changes_never_go_backwards(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        client = all_clients[0]
        segment = segment_id(PG)
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=12)
            await append_all(all_clients, PG, model.records(10))
            stale_before = await stale_count(client)

            assert (await client.set_epoch(segment, epochs(3, 1))).volume_epoch == 3
            # The same epoch again is a retry and harmless.
            assert (await client.set_epoch(segment, epochs(3, 1))).volume_epoch == 3
            with pytest.raises(StaleEpoch):
                await client.set_epoch(segment, epochs(2, 1))
            with pytest.raises(StaleEpoch):
                await client.set_epoch(segment, epochs(4, 2))  # wrong membership epoch
            state = await client.state(segment)
            assert (state.volume_epoch, state.membership_epoch) == (3, 1)
            assert await stale_count(client) == stale_before + 2

            original = members(storage_cluster)
            # A replacement of s6 by a node that does not exist (gossip just fails to reach it).
            replaced = [*original[:5], Member("s7", "127.0.0.1:1", original[5].az)]
            state = await client.set_membership(segment, epochs(3, 2), 0, PAGE_COUNT, replaced)
            assert (state.membership_epoch, state.members) == (2, replaced)
            # Idempotent retry of the same change.
            state = await client.set_membership(segment, epochs(3, 2), 0, PAGE_COUNT, replaced)
            assert state.members == replaced

            with pytest.raises(StaleEpoch):
                await client.set_membership(segment, epochs(3, 1), 0, PAGE_COUNT, original)
            with pytest.raises(StaleEpoch):
                await client.set_membership(segment, epochs(2, 3), 0, PAGE_COUNT, original)
            with pytest.raises(InvalidRequest):
                await client.set_membership(segment, epochs(3, 2), 0, PAGE_COUNT, original)
            with pytest.raises(InvalidRequest):
                await client.set_membership(segment, epochs(3, 3), 0, PAGE_COUNT + 1, original)
            state = await client.state(segment)
            assert (state.volume_epoch, state.membership_epoch) == (3, 2)
            assert state.members == replaced
            assert await stale_count(client) == stale_before + 4

            # Data requests now need the new membership epoch.
            with pytest.raises(StaleEpoch):
                await client.get_page(segment, epochs(3, 1), 0, model.lsn)
            image, _ = await client.get_page(segment, epochs(3, 2), 0, model.lsn)
            assert image == model.page_at(0, model.lsn)[0]
        finally:
            await close_all(all_clients)

    run(scenario)


def test_truncation_drops_the_range_and_is_idempotent(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        segment = segment_id(PG)
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=13, lsn_stride=3)
            await append_all(all_clients, PG, model.records(40))
            lsns = [redo.decode(data).lsn for data in model.encoded]
            # `above` falls between two records, so the SCL must drop to the record below it.
            last_kept = lsns[24]
            above = last_kept + 1 if last_kept + 1 < lsns[25] else last_kept
            up_to = model.lsn + 100
            original = list(model.encoded)

            # Recovery first fences every segment, then truncates them one by one.
            for client in all_clients:
                await client.set_epoch(segment, epochs(2, 1))
            # A truncation carrying an old epoch is refused and deletes nothing.
            with pytest.raises(StaleEpoch):
                await all_clients[0].set_epoch(segment, epochs(1, 1), truncate=(above, up_to))
            assert await read_all(all_clients[0], epochs(2, 1)) == original

            # A truncated segment must not gossip the range back from its peers that
            # have the new epoch but have not truncated yet.
            first_truncated = all_clients[0]
            await first_truncated.set_epoch(segment, epochs(2, 1), truncate=(above, up_to))
            await first_truncated.run_task("gossip")
            state = await first_truncated.state(segment)
            assert (state.scl, state.highest_lsn, state.records) == (last_kept, last_kept, 25)
            assert await read_all(first_truncated, epochs(2, 1)) == original[:25]

            for client in all_clients:
                state = await client.set_epoch(segment, epochs(2, 1), truncate=(above, up_to))
                assert (state.scl, state.highest_lsn) == (last_kept, last_kept)
                assert (state.truncated_above_lsn, state.truncated_up_to_lsn) == (above, up_to)
                assert state.records == 25
                assert await read_all(client, epochs(2, 1)) == original[:25]
            rewind(model, above, up_to)
            assert model.encoded == original[:25]
            for client in all_clients:
                await assert_pages_match(client, epochs(2, 1), model)

            # The new writer continues the chain above the truncation range.
            batch = model.records(10)
            first = redo.decode(batch[0])
            assert first.lsn > up_to and first.prev_lsn_pg == last_kept
            # (Gossip may copy the batch to a segment before the append reaches it.)
            acks = [await c.append(segment, epochs(2, 1), batch) for c in all_clients]
            assert [ack.scl for ack in acks] == [model.lsn] * 6

            # A retried identical truncation must not touch the records above its range.
            for client in all_clients:
                state = await client.set_epoch(segment, epochs(2, 1), truncate=(above, up_to))
                assert (state.scl, state.highest_lsn, state.records) == (model.lsn, model.lsn, 35)
                assert await read_all(client, epochs(2, 1)) == model.encoded
                await assert_pages_match(client, epochs(2, 1), model)

            # And all of it is durable state, not only memory.
            node = storage_cluster.node("s1")
            await asyncio.to_thread(node.restart)
            async with StorageClient(node.address) as restarted:
                state = await restarted.state(segment)
                assert (state.scl, state.highest_lsn, state.records) == (model.lsn, model.lsn, 35)
                assert (state.truncated_above_lsn, state.truncated_up_to_lsn) == (above, up_to)
                assert await read_all(restarted, epochs(2, 1)) == model.encoded
                await assert_pages_match(restarted, epochs(2, 1), model)
        finally:
            await close_all(all_clients)

    run(scenario)


def test_append_fenced_while_waiting_is_refused(storage_cluster: LocalCluster) -> None:
    """An append that passed the epoch check, then waited (here at a paused failpoint)
    while recovery raised the epoch and truncated, must not land afterwards."""
    node = storage_cluster.node("s1")

    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        client = all_clients[storage_cluster.storage_nodes.index(node)]
        segment = segment_id(PG)
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            model = RedoModel(first_page=0, page_count=PAGE_COUNT, seed=14)
            await append_all(all_clients, PG, model.records(10))
            committed = list(model.encoded)
            scl_committed = model.lsn

            await client.set_failpoint("storage.append.before_write", "pause")
            fenced = asyncio.create_task(client.append(segment, EPOCHS, model.records(5)))
            await asyncio.to_thread(
                wait_until,
                lambda: failpoint_was_hit(node.log_path),
                10.0,
                what="the append to wait in its failpoint",
            )
            state = await client.set_epoch(
                segment, epochs(2, 1), truncate=(scl_committed, scl_committed + 1000)
            )
            assert state.scl == scl_committed
            await client.set_failpoint("storage.append.before_write", "off")
            with pytest.raises(StaleEpoch):
                await fenced

            state = await client.state(segment)
            assert (state.scl, state.highest_lsn, state.records) == (
                scl_committed,
                scl_committed,
                len(committed),
            )
            assert await read_all(client, epochs(2, 1)) == committed
        finally:
            await close_all(all_clients)

    run(scenario)


def failpoint_was_hit(log_path: Path) -> bool:
    return any(
        'event="failpoint hit"' in line and "name=storage.append.before_write" in line
        for line in log_path.read_text(errors="replace").splitlines()
    )
