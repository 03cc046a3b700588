"""Helpers for tests that drive storage nodes over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from borealis import metrics, redo
from borealis.ids import Epoch, Epochs, PgIndex, SegmentId, VolumeId
from deploy.local import LocalCluster
from storage_node.client import AppendAck, StorageClient
from storage_node.segment import Member
from tests.support.redo_model import RedoModel

T = TypeVar("T")

VOLUME = VolumeId(7)
EPOCHS = Epochs(Epoch(1), Epoch(1))


def segment_id(pg: int) -> SegmentId:
    return SegmentId(VOLUME, PgIndex(pg))


def members(cluster: LocalCluster) -> list[Member]:
    return [Member(node.name, node.address, node.az) for node in cluster.storage_nodes]


def clients(cluster: LocalCluster, timeout_s: float = 5.0) -> list[StorageClient]:
    return [StorageClient(node.address, timeout_s) for node in cluster.storage_nodes]


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Runs an async test body on a fresh event loop."""
    return asyncio.run(scenario())  # type: ignore[arg-type]


async def create_segment(
    all_clients: list[StorageClient],
    cluster: LocalCluster,
    pg: int,
    first_page: int,
    page_count: int,
) -> None:
    await asyncio.gather(
        *(
            c.set_membership(segment_id(pg), EPOCHS, first_page, page_count, members(cluster))
            for c in all_clients
        )
    )


async def append_all(
    all_clients: list[StorageClient], pg: int, records: list[bytes]
) -> list[AppendAck]:
    return list(
        await asyncio.gather(*(c.append(segment_id(pg), EPOCHS, records) for c in all_clients))
    )


async def close_all(all_clients: list[StorageClient]) -> None:
    for client in all_clients:
        await client.close()


# -- reading back and comparing (durability, pages and gossip tests) -------------------

READ_UP_TO_ALL = 2**63 - 1


async def read_all_records(
    client: StorageClient, pg: int, after_lsn: int = 0, up_to_lsn: int = READ_UP_TO_ALL
) -> list[bytes]:
    """Every record of the segment with after_lsn < lsn <= up_to_lsn, following `more`."""
    records: list[bytes] = []
    # A bound on the pages of a read, so a server that always says `more` cannot loop forever.
    for _ in range(10_000):
        batch, more, _ = await client.read_records(
            segment_id(pg), EPOCHS, after_lsn, up_to_lsn, bytes_max=256 * 2**10
        )
        records.extend(batch)
        if not more or not batch:
            return records
        after_lsn = redo.HEADER.unpack_from(batch[-1])[1]
    raise AssertionError("ReadRecords kept saying `more`")


def metric_value(text: str, name: str, **labels: object) -> float:
    """A storage node's sample `name` (without the namespace) with exactly these labels; 0 if absent."""
    rendered = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    full = f"borealis_storage_{name}" + (f"{{{rendered}}}" if labels else "")
    return metrics.parse(text).get(full, 0.0)


async def node_metric(client: StorageClient, name: str, **labels: object) -> float:
    return metric_value(await client.metrics(), name, **labels)


async def page_mismatches(
    client: StorageClient,
    pg: int,
    model: RedoModel,
    pages: list[int],
    lsns: list[int],
    chunk: int = 64,
) -> list[tuple[int, int, int, int]]:
    """GetPage of every (page, lsn) against the model: (page, lsn, page_lsn, expected page_lsn)
    of each mismatch (image or page_lsn), read `chunk` calls at a time."""
    wanted = [(page, lsn) for page in pages for lsn in lsns]
    mismatches = []
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        results = await asyncio.gather(
            *(client.get_page(segment_id(pg), EPOCHS, page, lsn) for page, lsn in part)
        )
        for (page, lsn), (image, page_lsn) in zip(part, results, strict=True):
            expected_image, expected_lsn = model.page_at(page, lsn)
            if image != expected_image or page_lsn != expected_lsn:
                mismatches.append((page, lsn, page_lsn, expected_lsn))
    return mismatches
