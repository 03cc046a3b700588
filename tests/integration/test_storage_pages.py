"""Must-hold 3: GetPage at every LSN equals an in-test reference model, also after
coalescing, garbage collection and restarts (clean and kill -9).

Reads outside what a segment may serve are refused: below the PGMRPL with
OUT_OF_RANGE (VersionGone), above the SCL with UNAVAILABLE. A page of the PG that
was never written reads as zeros with page_lsn 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from borealis import redo
from borealis.errors import Unavailable, VersionGone
from borealis.wait import wait_until_async
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

PG = 0
PAGE_COUNT = 16  # the segment's range; the model writes only the first MODEL_PAGES
MODEL_PAGES = 4
NEVER_WRITTEN_PAGE = 11
RECORDS = 240
BATCH_RECORDS = 20
# Longer than any test: background passes never run unless a test asks for one.
NEVER_MS = 3_600_000
TASK_TIMEOUT_S = 30.0


def deletable_by_gc(model: RedoModel, horizon: int) -> set[int]:
    """LSNs of the versions GC may drop: for each page, all at or below the horizon but the newest."""
    doomed: set[int] = set()
    for history in model.pages.values():
        below = [lsn for lsn in history.lsns if lsn <= horizon]
        doomed.update(below[:-1])
    return doomed


def lsn_of(record: bytes) -> int:
    return redo.HEADER.unpack_from(record)[1]


async def check_every_lsn(client: StorageClient, model: RedoModel, lsn_first: int = 1) -> None:
    lsns = list(range(lsn_first, model.lsn + 1))
    pages = list(range(MODEL_PAGES))
    assert await page_mismatches(client, PG, model, pages, lsns) == [], client.address


async def check_refusals(client: StorageClient, model: RedoModel, pgmrpl: int) -> None:
    for lsn in (1, pgmrpl - 1):
        with pytest.raises(VersionGone):
            await client.get_page(segment_id(PG), EPOCHS, 0, lsn)
    with pytest.raises(Unavailable):
        await client.get_page(segment_id(PG), EPOCHS, 0, model.lsn + 1)
    image, page_lsn = await client.get_page(segment_id(PG), EPOCHS, NEVER_WRITTEN_PAGE, model.lsn)
    assert (image, page_lsn) == (redo.ZERO_PAGE, 0)


async def run_task_all(all_clients: list[StorageClient], task: str) -> list[str]:
    return list(
        await asyncio.gather(*(c.run_task(task, timeout_s=TASK_TIMEOUT_S) for c in all_clients))
    )


def test_get_page_at_every_lsn_through_coalesce_gc_and_restart(
    cluster_builder: Callable[..., LocalCluster],
) -> None:
    cluster = cluster_builder(
        coalesce_deltas_max=4, coalesce_interval_ms=NEVER_MS, gc_interval_ms=NEVER_MS
    ).start()
    model = RedoModel(first_page=0, page_count=MODEL_PAGES, seed=3)
    # s1-s3 coalesce after every batch, so they hold images all through the history;
    # s4-s6 keep plain delta chains until the final coalesce.
    coalescing, plain = 3, 3

    async def build_and_check() -> tuple[int, set[int]]:
        all_clients = clients(cluster)
        try:
            await create_segment(all_clients, cluster, PG, 0, PAGE_COUNT)
            for _ in range(RECORDS // BATCH_RECORDS):
                batch = model.records(BATCH_RECORDS)
                acks = await append_all(all_clients, PG, batch)
                assert {ack.scl for ack in acks} == {model.lsn}
                await run_task_all(all_clients[:coalescing], "coalesce")
            kinds = {record[redo.KIND_OFFSET] for record in model.encoded}
            assert kinds == {redo.Kind.DELTA, redo.Kind.IMAGE}
            for client in all_clients[:coalescing]:
                assert await node_metric(client, "coalesced_images_total") > 0
            for client in all_clients[coalescing:]:
                assert await node_metric(client, "coalesced_images_total") == 0
            first_coalesced, first_plain = all_clients[0], all_clients[coalescing]
            await check_every_lsn(first_coalesced, model)
            await check_every_lsn(first_plain, model)

            summaries = await run_task_all(all_clients[coalescing:], "coalesce")
            assert all(summary.startswith("images=") for summary in summaries), summaries
            assert await node_metric(first_plain, "coalesced_images_total") > 0
            await check_every_lsn(first_plain, model)

            pgmrpl = model.lsn // 2
            states = await asyncio.gather(
                *(c.set_pgmrpl(segment_id(PG), EPOCHS, pgmrpl) for c in all_clients)
            )
            assert {state.pgmrpl for state in states} == {pgmrpl}
            doomed = deletable_by_gc(model, pgmrpl)
            assert doomed
            summaries = await run_task_all(all_clients, "gc")
            assert summaries == [f"deleted={len(doomed)}"] * (coalescing + plain)
            kept = [record for record in model.encoded if lsn_of(record) not in doomed]
            for client in all_clients:
                assert await node_metric(client, "gc_records_deleted_total") == len(doomed)
                state = await client.state(segment_id(PG))
                assert state.records == len(kept) < len(model.encoded)
                assert state.record_bytes == sum(len(record) for record in kept)
                assert await read_all_records(client, PG) == kept
            for client in (first_coalesced, first_plain):
                await check_refusals(client, model, pgmrpl)
                await check_every_lsn(client, model, pgmrpl)
            return pgmrpl, doomed
        finally:
            await close_all(all_clients)

    async def check_after_restart(pgmrpl: int, doomed: set[int]) -> None:
        all_clients = clients(cluster)
        try:
            for client in all_clients:
                state = await client.state(segment_id(PG))
                assert (state.scl, state.pgmrpl) == (model.lsn, pgmrpl)
                assert state.records == len(model.encoded) - len(doomed)
            # The restarted nodes have nothing left to collect at this PGMRPL.
            assert await run_task_all(all_clients, "gc") == [""] * len(all_clients)
            for client in (all_clients[0], all_clients[coalescing]):
                await check_refusals(client, model, pgmrpl)
                await check_every_lsn(client, model, pgmrpl)
        finally:
            await close_all(all_clients)

    pgmrpl, doomed = run(build_and_check)
    cluster.stop()
    cluster.start()
    run(lambda: check_after_restart(pgmrpl, doomed))
    cluster.stop(immediate=True)
    cluster.start()
    run(lambda: check_after_restart(pgmrpl, doomed))


def test_background_coalescer_and_gc_keep_pages_exact(
    cluster_builder: Callable[..., LocalCluster],
) -> None:
    cluster = cluster_builder(coalesce_deltas_max=4).start()
    model = RedoModel(first_page=0, page_count=MODEL_PAGES, seed=4)

    async def scenario() -> None:
        all_clients = clients(cluster)
        try:
            await create_segment(all_clients, cluster, PG, 0, PAGE_COUNT)
            for _ in range(10):
                acks = await append_all(all_clients, PG, model.records(BATCH_RECORDS))
                assert {ack.scl for ack in acks} == {model.lsn}

            async def coalesced_everywhere() -> bool:
                values = await asyncio.gather(
                    *(node_metric(c, "coalesced_images_total") for c in all_clients)
                )
                return all(value > 0 for value in values)

            await wait_until_async(coalesced_everywhere, 20.0, what="background coalescing")
            await check_every_lsn(all_clients[1], model)

            pgmrpl = model.lsn - 50
            await asyncio.gather(
                *(c.set_pgmrpl(segment_id(PG), EPOCHS, pgmrpl) for c in all_clients)
            )
            doomed = deletable_by_gc(model, pgmrpl)

            async def collected_everywhere() -> bool:
                values = await asyncio.gather(
                    *(node_metric(c, "gc_records_deleted_total") for c in all_clients)
                )
                return all(value == len(doomed) for value in values)

            await wait_until_async(collected_everywhere, 20.0, what="background gc")
            await check_refusals(all_clients[2], model, pgmrpl)
            await check_every_lsn(all_clients[2], model, pgmrpl)
        finally:
            await close_all(all_clients)

    run(scenario)
