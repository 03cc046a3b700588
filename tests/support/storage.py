"""Helpers for tests that drive storage nodes over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from borealis.ids import Epoch, Epochs, PgIndex, SegmentId, VolumeId
from deploy.local import LocalCluster
from storage_node.client import AppendAck, StorageClient
from storage_node.segment import Member

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
