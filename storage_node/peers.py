"""Clients of this node's peers (the other members of its segments), one channel per address."""

from __future__ import annotations

import asyncio

from borealis.errors import BorealisError
from storage_node.client import StorageClient
from storage_node.segment import Member, Segment, SegmentMeta

PEER_ERRORS = (BorealisError,)
"""What a call to a peer may raise that a background task handles by trying another peer."""


class Peers:
    def __init__(self, node_name: str, timeout_s: float) -> None:
        self._node_name = node_name
        self._timeout_s = timeout_s
        self._clients: dict[str, StorageClient] = {}

    def of(self, segment: Segment) -> list[tuple[Member, StorageClient]]:
        """The segment's other members, old and new during a membership change, with a
        client each."""
        peers: dict[str, Member] = {}
        for member in (*segment.meta.members, *segment.meta.members_old):
            if member.node != self._node_name:
                peers.setdefault(member.node, member)
        return [(member, self.client(member.address)) for member in peers.values()]

    async def states(self, segment: Segment) -> list[tuple[StorageClient, SegmentMeta]]:
        """The state of the segment on each peer that answers."""
        peers = self.of(segment)
        results = await asyncio.gather(
            *(client.state(segment.id) for _member, client in peers), return_exceptions=True
        )
        states = []
        for (_member, client), result in zip(peers, results, strict=True):
            if isinstance(result, PEER_ERRORS):
                continue
            if isinstance(result, BaseException):
                raise result
            states.append((client, result))
        return states

    def client(self, address: str) -> StorageClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = StorageClient(address, self._timeout_s)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
