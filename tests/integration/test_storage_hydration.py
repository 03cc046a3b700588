"""Storage node replacement, storage side: a segment created with hydrate=true copies
page images and records from a peer, holds what the writer sends meanwhile, and
then serves the same pages and records as its peers; ReadPageImages, the RPC it
copies images with, pages by bytes and refuses what GetPage refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from borealis import redo
from borealis.errors import InvalidRequest, StaleEpoch, Unavailable, VersionGone
from borealis.ids import Epoch, Epochs, Lsn
from borealis.wait import wait_until_async
from deploy.local import LocalCluster, StorageNodeProcess
from storage_node.client import AppendAck, StorageClient
from storage_node.segment import Member
from tests.support.redo_model import RedoModel
from tests.support.storage import (
    EPOCHS,
    READ_UP_TO_ALL,
    append_all,
    clients,
    close_all,
    create_segment,
    node_metric,
    page_mismatches,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

PG = 0
PAGE_COUNT = 32  # the segment's range; the model writes only the first MODEL_PAGES
MODEL_PAGES = 24
BATCH_RECORDS = 40
# The membership change: same volume epoch, membership epoch + 1.
CHANGE = Epochs(Epoch(1), Epoch(2))
HYDRATION_TIMEOUT_S = 30.0


def lsn_of(record: bytes) -> int:
    return redo.HEADER.unpack_from(record)[1]


def member(node: StorageNodeProcess) -> Member:
    return Member(node.name, node.address, node.az)


def append_size_record(model: RedoModel, page_count: int) -> bytes:
    """A SIZE record continuing the model's chain (recovery reads these from PG 0)."""
    lsn = model.lsn + 1
    data = redo.encode(
        redo.RedoRecord(
            lsn=Lsn(lsn),
            prev_lsn_volume=Lsn(lsn - 1),
            prev_lsn_pg=Lsn(model.last_lsn_pg),
            prev_lsn_page=Lsn(0),
            page=page_count,
            kind=redo.Kind.SIZE,
            cpl=True,
            commit_time_us=1_700_000_000_000_000 + lsn,
        )
    )
    model.lsn = model.last_lsn_pg = lsn
    model.encoded.append(data)
    return data


async def all_records(client: StorageClient, epochs: Epochs) -> list[bytes]:
    """Every record the segment holds, following `more`."""
    records: list[bytes] = []
    after = 0
    for _ in range(10_000):
        batch, more, _ = await client.read_records(
            segment_id(PG), epochs, after, READ_UP_TO_ALL, bytes_max=64 * 2**10
        )
        records.extend(batch)
        if not more or not batch:
            return records
        after = lsn_of(batch[-1])
    raise AssertionError("ReadRecords kept saying `more`")


async def all_images(
    client: StorageClient, epochs: Epochs, lsn: int, bytes_max: int, start_page: int = 0
) -> tuple[list[tuple[int, int, bytes]], int]:
    """Every image ReadPageImages gives as of `lsn`, following next_page; (images, calls)."""
    images: list[tuple[int, int, bytes]] = []
    for calls in range(1, PAGE_COUNT + 2):
        batch, more, next_page = await client.read_page_images(
            segment_id(PG), epochs, lsn, start_page, bytes_max
        )
        images.extend(batch)
        if not more:
            return images, calls
        assert next_page > start_page
        start_page = next_page
    raise AssertionError("ReadPageImages kept saying `more`")


async def page_differences(
    client: StorageClient, reference: StorageClient, model: RedoModel, lsns: list[int]
) -> list[tuple[int, int]]:
    """(page, lsn) of every page of the PG whose GetPage differs between the two nodes
    or from the model."""
    wanted = [(page, lsn) for page in range(PAGE_COUNT) for lsn in lsns]
    differences = []
    for page, lsn in wanted:
        mine, theirs = await asyncio.gather(
            client.get_page(segment_id(PG), CHANGE, page, lsn),
            reference.get_page(segment_id(PG), CHANGE, page, lsn),
        )
        if mine != theirs or mine != model.page_at(page, lsn):
            differences.append((page, lsn))
    return differences


async def check_membership_requests(
    client: StorageClient, old_set: list[Member], new_set: list[Member]
) -> None:
    """On a segment already at CHANGE: a retry is accepted (hydrate ignored on an existing
    segment), a different (members, members_old) at the same epoch and repeated nodes
    are not."""
    sid = segment_id(PG)
    state = await client.set_membership(
        sid, CHANGE, 0, PAGE_COUNT, new_set, members_old=old_set, hydrate=True
    )
    assert (state.hydrating, state.members, state.members_old) == (False, new_set, old_set)
    for members, members_old in ((new_set, []), (new_set, [*old_set[:5], old_set[0]])):
        with pytest.raises(InvalidRequest):
            await client.set_membership(
                sid, CHANGE, 0, PAGE_COUNT, members, members_old=members_old
            )


def test_replacement_segment_hydrates_from_collected_peers(
    cluster_builder: Callable[..., LocalCluster],
) -> None:
    cluster = cluster_builder(storage_nodes=7).start()
    nodes = cluster.storage_nodes
    old_set = [member(node) for node in nodes[:6]]
    # s6 is replaced by s7.
    new_set = old_set[:5] + [member(nodes[6])]
    # LSNs with gaps, so the PGMRPL below is not a record of the PG.
    model = RedoModel(first_page=0, page_count=MODEL_PAGES, seed=61, lsn_stride=3)

    async def build(old: list[StorageClient]) -> int:
        """Writes the PG on the old set and collects it below a PGMRPL; the PGMRPL."""
        await create_segment(old, cluster, PG, 0, PAGE_COUNT)
        for number in range(6):
            batch = model.records(BATCH_RECORDS)
            if number == 2:
                batch.append(append_size_record(model, MODEL_PAGES))
            acks = await append_all(old, PG, batch)
            assert {ack.scl for ack in acks} == {model.lsn}
        lsns = set(map(lsn_of, model.encoded))
        pgmrpl = next(lsn - 1 for lsn in sorted(lsns)[-50:] if lsn - 1 not in lsns)
        await asyncio.gather(*(c.set_pgmrpl(segment_id(PG), EPOCHS, pgmrpl) for c in old))
        # A pass now, in case the background one has not run at this PGMRPL yet.
        await asyncio.gather(*(c.run_task("gc") for c in old))
        deleted = await asyncio.gather(*(node_metric(c, "gc_records_deleted_total") for c in old))
        assert len(set(deleted)) == 1 and deleted[0] > 0, deleted
        return pgmrpl

    async def wait_paused_before_finish(new: StorageClient, expected_records: int) -> None:
        async def copied() -> bool:
            state = await new.state(segment_id(PG))
            return state.hydrating and state.records >= expected_records

        await wait_until_async(copied, HYDRATION_TIMEOUT_S, what="images and records copied")

    async def scenario() -> None:
        old = clients(cluster)[:6]
        new = StorageClient(nodes[6].address)
        try:
            pgmrpl = await build(old)
            peer_records = await all_records(old[0], EPOCHS)
            at_or_below_base = [r for r in peer_records if lsn_of(r) <= pgmrpl]
            # GC dropped records at or below the base: gossip alone could not fill them.
            assert len(at_or_below_base) < sum(lsn_of(r) <= pgmrpl for r in model.encoded)
            pages_at_base = sum(1 for h in model.pages.values() if h.lsns[0] <= pgmrpl)
            assert any(r[redo.KIND_OFFSET] == redo.KIND_SIZE for r in at_or_below_base)

            # The replaced node is down; the others move to the transitional membership.
            await asyncio.to_thread(nodes[5].kill)
            await asyncio.gather(
                *(
                    c.set_membership(
                        segment_id(PG), CHANGE, 0, PAGE_COUNT, new_set, members_old=old_set
                    )
                    for c in old[:5]
                )
            )
            await check_membership_requests(old[0], old_set, new_set)
            # The first attempts fail after the images (as a peer failing midway
            # would); the one after that stops before it finishes.
            await new.set_failpoint("storage.hydration.after_images", "error")
            await new.set_failpoint("storage.hydration.before_finish", "pause")
            state = await new.set_membership(
                segment_id(PG), CHANGE, 0, PAGE_COUNT, new_set, members_old=old_set, hydrate=True
            )
            assert (state.hydrating, state.scl, state.members_old) == (True, 0, old_set)

            async def failed_twice() -> bool:
                return await node_metric(new, "hydration_pages_total") >= 2 * pages_at_base

            await wait_until_async(failed_twice, HYDRATION_TIMEOUT_S, what="failed attempts")
            assert (await new.state(segment_id(PG))).hydrating
            assert await node_metric(new, "hydrations_total") == 0
            await new.set_failpoint("storage.hydration.after_images", "off")
            await wait_paused_before_finish(new, len(at_or_below_base))

            # The writer goes on writing to the new set meanwhile: held above the hole.
            end_before = model.lsn
            batch = model.records(BATCH_RECORDS)
            acks = await asyncio.gather(
                *(c.append(segment_id(PG), CHANGE, batch) for c in [*old[:5], new])
            )
            assert all(isinstance(ack, AppendAck) for ack in acks)
            assert {ack.scl for ack in acks[:5]} == {model.lsn}
            assert (acks[5].scl, acks[5].highest_lsn, acks[5].records_new) == (
                0,
                model.lsn,
                BATCH_RECORDS,
            )
            with pytest.raises(Unavailable):
                await new.get_page(segment_id(PG), CHANGE, 0, pgmrpl)
            with pytest.raises(Unavailable):
                await new.read_page_images(segment_id(PG), CHANGE, pgmrpl)
            assert [s.hydrating for s in await new.list_segments()] == [True]
            held = await all_records(new, CHANGE)
            assert held == at_or_below_base + batch

            await new.set_failpoint("storage.hydration.before_finish", "off")

            async def hydrated() -> bool:
                state = await new.state(segment_id(PG))
                return not state.hydrating and state.scl == model.lsn

            await wait_until_async(hydrated, HYDRATION_TIMEOUT_S, what="hydration and fill")
            state = await new.state(segment_id(PG))
            assert (state.pgmrpl, state.highest_lsn) == (pgmrpl, model.lsn)
            assert state.members_old == old_set and state.members == new_set
            assert [s.hydrating for s in await new.list_segments()] == [False]
            assert await all_records(new, CHANGE) == await all_records(old[0], CHANGE)
            lsns = [pgmrpl, pgmrpl + 1, end_before, model.lsn]
            assert await page_differences(new, old[0], model, lsns) == []
            with pytest.raises(VersionGone):
                await new.get_page(segment_id(PG), CHANGE, 0, pgmrpl - 1)
            assert await node_metric(new, "hydrations_total") == 1
            assert await node_metric(new, "hydration_pages_total") >= 3 * pages_at_base
            filled = sum(pgmrpl < lsn_of(r) <= end_before for r in model.encoded)
            assert await node_metric(new, "gossip_records_filled_total") == filled
        finally:
            await close_all([*old, new])

    run(scenario)


def test_read_page_images_pages_by_bytes_and_refuses_like_get_page(
    storage_cluster: LocalCluster,
) -> None:
    model = RedoModel(first_page=0, page_count=MODEL_PAGES, seed=62)
    page_bytes = redo.PAGE_SIZE_BYTES

    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        client = all_clients[0]
        try:
            await create_segment(all_clients, storage_cluster, PG, 0, PAGE_COUNT)
            early = 0
            for number in range(4):
                await append_all(all_clients, PG, model.records(BATCH_RECORDS))
                if number == 0:
                    early = model.lsn
            pgmrpl = early - 10
            await client.set_pgmrpl(segment_id(PG), EPOCHS, pgmrpl)
            await client.run_task("gc")

            for lsn in (pgmrpl, early, model.lsn):
                expected = [
                    (page, model.page_at(page, lsn)[1], model.page_at(page, lsn)[0])
                    for page in sorted(model.pages)
                    if model.pages[page].lsns[0] <= lsn
                ]
                images, calls = await all_images(client, EPOCHS, lsn, bytes_max=1)
                assert images == expected
                # At least one image per call, even below one page of bytes.
                assert calls == len(expected)
                images, calls = await all_images(client, EPOCHS, lsn, bytes_max=3 * page_bytes)
                assert images == expected and calls == -(-len(expected) // 3)
                # No bytes_max: the node's own limit, far above this PG.
                images, calls = await all_images(client, EPOCHS, lsn, bytes_max=0)
                assert (images, calls) == (expected, 1)
            images, _ = await all_images(client, EPOCHS, model.lsn, 0, start_page=10)
            assert [page for page, _, _ in images] == [p for p in sorted(model.pages) if p >= 10]
            images, more, next_page = await client.read_page_images(
                segment_id(PG), EPOCHS, model.lsn, start_page=MODEL_PAGES
            )
            assert (images, more, next_page) == ([], False, PAGE_COUNT)

            with pytest.raises(VersionGone):
                await client.read_page_images(segment_id(PG), EPOCHS, pgmrpl - 1)
            with pytest.raises(Unavailable):
                await client.read_page_images(segment_id(PG), EPOCHS, model.lsn + 1)
            for stale in (Epochs(Epoch(0), Epoch(1)), Epochs(Epoch(1), Epoch(2))):
                with pytest.raises(StaleEpoch):
                    await client.read_page_images(segment_id(PG), stale, model.lsn)
        finally:
            await close_all(all_clients)

    run(scenario)


def test_a_segment_behind_its_peers_garbage_collection_hydrates_again(
    storage_cluster: LocalCluster,
) -> None:
    """A node down while its peers garbage-collect the records it lacks: gossip cannot
    complete its chain from their logs, so it drops what it holds and hydrates again."""
    nodes = storage_cluster.storage_nodes
    model = RedoModel(first_page=0, page_count=MODEL_PAGES, seed=67)

    async def scenario() -> None:
        everyone = clients(storage_cluster)
        try:
            await create_segment(everyone, storage_cluster, PG, 0, PAGE_COUNT)
            await append_all(everyone, PG, model.records(BATCH_RECORDS))
            behind, peers = everyone[5], everyone[:5]
            await asyncio.to_thread(nodes[5].stop, True)
            for _ in range(5):
                await append_all(peers, PG, model.records(BATCH_RECORDS))
            pgmrpl = model.lsn - 5
            await asyncio.gather(*(c.set_pgmrpl(segment_id(PG), EPOCHS, pgmrpl) for c in peers))
            await asyncio.gather(*(c.run_task("gc") for c in peers))
            assert await node_metric(peers[0], "gc_records_deleted_total") > 0
            await asyncio.to_thread(nodes[5].start)

            async def caught_up() -> bool:
                state = await behind.state(segment_id(PG))
                return not state.hydrating and state.scl == model.lsn

            await wait_until_async(caught_up, HYDRATION_TIMEOUT_S, what="hydrated again")
            assert await node_metric(behind, "gossip_rehydrations_total") == 1
            assert await node_metric(behind, "hydrations_total") == 1
            assert (
                await page_mismatches(behind, PG, model, list(range(MODEL_PAGES)), [model.lsn])
                == []
            )
        finally:
            await close_all(everyone)

    run(scenario)
