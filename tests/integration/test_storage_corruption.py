"""Must-hold 5 (second half): a record corrupted on disk is detected and repaired from a
peer, and never served.

The test stops a node, flips one bit of a stored value directly in its LMDB file
(a log record's payload, or a materialised page image the coalescer wrote), and
restarts it. Until the scrubber repairs the copy, a read that needs it must fail
with DATA_LOSS; after the repair every read matches the reference model again.
The repair is driven three ways: the admin RunTask, the background scrubber woken
by the failed read, and the background scrubber's own period.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import lmdb
import pytest

from borealis import metrics, redo
from borealis.errors import Corruption
from borealis.wait import wait_until_async
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
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

PG = 0
VICTIM = "s3"
LOG_KEY = struct.Struct(">QIQ")
VERSION_KEY = struct.Struct(">QIQQ")
SEGMENT_PREFIX = struct.Struct(">QI").pack(VOLUME, PG)
LSN_READ_MAX = 2**63
SCRUB_NEVER_MS = 3_600_000
REPAIR_TIMEOUT_S = 30.0
# Bytes of a materialised version before its image: the tag b"M" and a CRC32C.
IMAGE_VALUE_HEADER_BYTES = 5


def flip_bit(directory: Path, db_name: bytes, key: bytes, offset: int) -> None:
    """Flips one bit of a stored value, in the stopped node's LMDB environment."""
    env = lmdb.open(str(directory / "segments"), max_dbs=4, map_size=2**30)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(write=True) as txn:
            value = txn.get(key, db=db)
            assert value is not None, f"no {db_name!r} value at {key.hex()}"
            changed = bytearray(value)
            changed[offset] ^= 0x10
            txn.put(key, bytes(changed), db=db)
    finally:
        env.close()


def materialised_versions(directory: Path) -> list[tuple[int, int]]:
    """(page, lsn) of every materialised image the node stores for the test's segment."""
    env = lmdb.open(str(directory / "segments"), max_dbs=4, map_size=2**30, readonly=True)
    try:
        db = env.open_db(b"versions", create=False)
        with env.begin() as txn:
            return [
                VERSION_KEY.unpack(key)[2:]
                for key, value in txn.cursor(db)
                if key.startswith(SEGMENT_PREFIX) and value[:1] == b"M"
            ]
    finally:
        env.close()


async def counter(client: StorageClient, name: str) -> float:
    return metrics.parse(await client.metrics()).get(f"borealis_storage_{name}", 0)


async def read_all(client: StorageClient) -> list[bytes]:
    records, more, _ = await client.read_records(segment_id(PG), EPOCHS, 0, LSN_READ_MAX)
    assert not more
    return records


async def page_or_corruption(
    client: StorageClient, page: int, lsn: int, model: RedoModel, wrong: list[str]
) -> bool:
    """True if GetPage serves the model's image, False if it refuses with DATA_LOSS.

    Any other answer is appended to `wrong` (the polling loop swallows exceptions).
    """
    try:
        got = await client.get_page(segment_id(PG), EPOCHS, page, lsn)
    except Corruption:
        return False
    if got != model.page_at(page, lsn):
        wrong.append(f"a wrong image of page {page} at {lsn} was served")
        return False
    return True


async def assert_all_pages_match(client: StorageClient, model: RedoModel, lsns: list[int]) -> None:
    for page in range(model.first_page, model.first_page + model.page_count):
        results = await asyncio.gather(
            *(client.get_page(segment_id(PG), EPOCHS, page, lsn) for lsn in lsns)
        )
        for lsn, got in zip(lsns, results, strict=True):
            assert got == model.page_at(page, lsn), f"page {page} at {lsn}"


def build(cluster_builder, repair: str, **storage: object) -> LocalCluster:  # type: ignore[no-untyped-def]
    scrub_interval_ms = 300 if repair == "periodic" else SCRUB_NEVER_MS
    return cluster_builder(scrub_interval_ms=scrub_interval_ms, **storage).start()


async def repair_and_check(
    cluster: LocalCluster,
    repair: str,
    model: RedoModel,
    page: int,
    lsn: int,
    bad_record: bytes | None,
) -> None:
    """Restarts the victim and checks detection, repair and the result."""
    victim = cluster.node(VICTIM)
    wrong: list[str] = []
    await asyncio.to_thread(victim.start)
    async with StorageClient(victim.address) as client:
        if repair == "run_task":
            # Nothing has read the bad copy yet and the period is an hour: only this pass repairs.
            assert await client.run_task("scrub") == "bad=1 repaired=1"
        elif repair == "woken":
            # Nothing repaired it yet: the read must refuse, and that wakes the scrubber.
            assert not await page_or_corruption(client, page, lsn, model, wrong)
            if bad_record is not None:
                with pytest.raises(Corruption):
                    await client.read_records(segment_id(PG), EPOCHS, lsn - 1, lsn)
        else:
            # Only the scrubber's own period: no read may wake it.
            await wait_until_async(
                lambda: counter(client, "scrub_repairs_total"),
                REPAIR_TIMEOUT_S,
                what="the periodic scrubber to repair",
            )

        # Every read is either refused or right, and soon right.
        await wait_until_async(
            lambda: page_or_corruption(client, page, lsn, model, wrong),
            REPAIR_TIMEOUT_S,
            what="the corrupt copy to be repaired",
        )
        assert not wrong
        assert await read_all(client) == model.encoded
        if bad_record is not None:
            records, _, _ = await client.read_records(segment_id(PG), EPOCHS, lsn - 1, lsn)
            assert records == [bad_record]
        assert await counter(client, "crc_failures_total") >= 1
        assert await counter(client, "scrub_repairs_total") >= 1
        await assert_all_pages_match(client, model, sorted({lsn, *model_lsns(model)[-5:]}))
        # The repair is durable and complete: a new pass finds nothing.
        assert await client.run_task("scrub") == ""
    await asyncio.to_thread(victim.restart)
    async with StorageClient(victim.address) as client:
        assert await client.run_task("scrub") == ""
        assert await page_or_corruption(client, page, lsn, model, wrong)
    assert not wrong


def model_lsns(model: RedoModel) -> list[int]:
    return [redo.HEADER.unpack_from(data)[1] for data in model.encoded]


@pytest.mark.parametrize("repair", ["run_task", "woken", "periodic"])
def test_corrupt_log_record_is_repaired_never_served(cluster_builder, repair: str) -> None:  # type: ignore[no-untyped-def]
    cluster = build(cluster_builder, repair)

    async def scenario() -> None:
        all_clients = clients(cluster)
        try:
            await create_segment(all_clients, cluster, PG, 0, 8)
            model = RedoModel(first_page=0, page_count=8, seed=21)
            await append_all(all_clients, PG, model.records(40))
        finally:
            await close_all(all_clients)
        # The newest version of the page with the most versions: GetPage at the SCL
        # must read this very record.
        page = max(model.pages, key=lambda p: len(model.pages[p].lsns))
        lsn = model.pages[page].lsns[-1]
        bad_record = next(data for data in model.encoded if redo.decode(data).lsn == lsn)

        victim = cluster.node(VICTIM)
        await asyncio.to_thread(victim.stop)
        payload_offset = redo.HEADER_BYTES + (len(bad_record) - redo.HEADER_BYTES) // 2
        flip_bit(victim.directory, b"log", LOG_KEY.pack(VOLUME, PG, lsn), payload_offset)
        await repair_and_check(cluster, repair, model, page, lsn, bad_record)

    run(scenario)


@pytest.mark.parametrize("repair", ["run_task", "woken", "periodic"])
def test_corrupt_page_image_is_repaired_never_served(cluster_builder, repair: str) -> None:  # type: ignore[no-untyped-def]
    cluster = build(cluster_builder, repair, coalesce_deltas_max=3)

    async def scenario() -> None:
        all_clients = clients(cluster)
        victim = cluster.node(VICTIM)
        victim_client = all_clients[cluster.storage_nodes.index(victim)]
        try:
            await create_segment(all_clients, cluster, PG, 0, 4)
            model = RedoModel(first_page=0, page_count=4, seed=22)
            await append_all(all_clients, PG, model.records(60))

            async def coalesced() -> float:
                await victim_client.run_task("coalesce")
                return await counter(victim_client, "coalesced_images_total")

            await wait_until_async(coalesced, REPAIR_TIMEOUT_S, what="a coalesced image")
        finally:
            await close_all(all_clients)

        await asyncio.to_thread(victim.stop)
        images = materialised_versions(victim.directory)
        assert images, "the coalescer wrote no image"
        page, lsn = max(images, key=lambda item: item[1])
        flip_bit(
            victim.directory,
            b"versions",
            VERSION_KEY.pack(VOLUME, PG, page, lsn),
            IMAGE_VALUE_HEADER_BYTES + 1000,
        )
        # GetPage at the image's own LSN starts (and ends) its walk at that image.
        await repair_and_check(cluster, repair, model, page, lsn, None)

    run(scenario)
