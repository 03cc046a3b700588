"""The page reader against six real storage nodes: right images at every read point,
reads that survive two dead nodes, and hedging around a stalled one."""

from __future__ import annotations

import random
import time

import pytest

from borealis.errors import VersionGone
from borealis.ids import Lsn, PgIndex
from compute_node.volume.reader import PageReader, PageReaderConfig
from deploy.local import LocalCluster
from storage_node.client import StorageClient
from tests.support.redo_model import RedoModel
from tests.support.storage import (
    EPOCHS,
    VOLUME,
    append_all,
    clients,
    close_all,
    create_segment,
    members,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

PAGES_PER_PG = 16
PG_COUNT = 2
RECORDS_PER_PG = 300


def page_reader(cluster: LocalCluster, **config: object) -> PageReader:
    placement = members(cluster)
    return PageReader(
        VOLUME,
        pg_of=lambda page: PgIndex(page // PAGES_PER_PG),
        placement=lambda pg: placement,
        epochs_of=lambda pg: EPOCHS,
        config=PageReaderConfig(**config),  # type: ignore[arg-type]
        rng=random.Random(5),
    )


async def fill(cluster: LocalCluster) -> dict[int, RedoModel]:
    """Creates PG_COUNT segments on every node and appends RECORDS_PER_PG records to each."""
    all_clients = clients(cluster)
    try:
        models = {}
        for pg in range(PG_COUNT):
            first_page = pg * PAGES_PER_PG
            await create_segment(all_clients, cluster, pg, first_page, PAGES_PER_PG)
            model = RedoModel(first_page, PAGES_PER_PG, seed=40 + pg, lsn_stride=3)
            for _ in range(RECORDS_PER_PG // 100):
                await append_all(all_clients, pg, model.records(100))
            models[pg] = model
        return models
    finally:
        await close_all(all_clients)


async def check_reads(
    reader: PageReader, models: dict[int, RedoModel], rng: random.Random, reads: int
) -> None:
    for _ in range(reads):
        pg = rng.randrange(PG_COUNT)
        model = models[pg]
        page = pg * PAGES_PER_PG + rng.randrange(PAGES_PER_PG)
        lsn = rng.randint(1, model.lsn)
        assert await reader.read_page(page, Lsn(lsn)) == model.page_at(page, lsn), (page, lsn)


def test_reads_match_the_model_and_survive_two_dead_nodes(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        models = await fill(storage_cluster)
        rng = random.Random(1)
        async with page_reader(storage_cluster) as reader:
            # Every page at its newest version, then random read points.
            for pg, model in models.items():
                for page in range(pg * PAGES_PER_PG, (pg + 1) * PAGES_PER_PG):
                    assert await reader.read_page(page, Lsn(model.lsn)) == model.page_at(
                        page, model.lsn
                    )
            await check_reads(reader, models, rng, 150)
            assert reader.stats.failed_reads == 0 and reader.stats.bad_answers == 0
            assert reader.stats.retries == 0
            # The reader learned the SCLs once per PG, then read one segment at a time
            # (plus a hedge now and then).
            assert reader.stats.scl_refreshes == PG_COUNT
            requests = sum(node.requests for node in reader.stats.nodes.values())
            assert requests <= reader.stats.reads + reader.stats.hedged_reads
            # Every node was measured at least once.
            assert len(reader.stats.nodes) == 6
            assert all(node.latency_ewma_s is not None for node in reader.stats.nodes.values())

            # Kill -9 the two nodes the reader likes best: reads go on elsewhere.
            fastest = sorted(
                reader.stats.nodes, key=lambda name: reader.stats.nodes[name].latency_ewma_s or 0
            )[:2]
            for name in fastest:
                storage_cluster.node(name).kill()
            await check_reads(reader, models, rng, 100)
            assert reader.stats.failed_reads == 0
            assert reader.stats.retries >= 1
            assert all(reader.stats.nodes[name].failures >= 1 for name in fastest)

            # A read point below the PGMRPL is the caller's error, not a retry.
            live = [node for node in storage_cluster.storage_nodes if node.name not in fastest]
            all_clients = [StorageClient(node.address, 5.0) for node in live]
            try:
                for client in all_clients:
                    await client.set_pgmrpl(segment_id(0), EPOCHS, 100)
            finally:
                await close_all(all_clients)
            failed_before = sum(node.failures for node in reader.stats.nodes.values())
            with pytest.raises(VersionGone):
                await reader.read_page(0, Lsn(50))
            # No live node was blamed for it.
            assert sum(node.failures for node in reader.stats.nodes.values()) <= failed_before + 2

    run(scenario)


def test_a_stalled_node_is_hedged_around(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        models = await fill(storage_cluster)
        model = models[0]
        stalled = clients(storage_cluster)[2]  # s3
        try:
            await stalled.set_failpoint("storage.get_page", "sleep(2000)")
            async with page_reader(
                storage_cluster, hedge_delay_ms=50.0, explore_ratio=0.0
            ) as reader:
                # Only s3 is known complete: it is asked first; the others are asked
                # only as a hedge (their SCLs are unknown to the reader).
                reader.note_scl(PgIndex(0), "s3", Lsn(model.lsn))
                started = time.monotonic()
                page = 5
                image = await reader.read_page(page, Lsn(model.lsn))
                elapsed_s = time.monotonic() - started
                assert image == model.page_at(page, model.lsn)
                assert elapsed_s < 1.0, elapsed_s
                assert reader.stats.hedged_reads == 1 and reader.stats.hedge_wins == 1
                assert reader.stats.nodes["s3"].requests == 1
                # s3 was cancelled at about the hedge delay plus the hedge's latency: its
                # latency estimate rose, so later reads go elsewhere first and return fast.
                for page in range(PAGES_PER_PG):
                    started = time.monotonic()
                    assert await reader.read_page(page, Lsn(model.lsn)) == model.page_at(
                        page, model.lsn
                    )
                    assert time.monotonic() - started < 1.0
                # Only a (rare) slow answer from the new favourite hedges to s3 again.
                assert reader.stats.nodes["s3"].requests <= 3
        finally:
            await stalled.set_failpoint("storage.get_page", "off")
            await stalled.close()

    run(scenario)
