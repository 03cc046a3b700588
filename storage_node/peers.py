"""Clients of this node's peers (the other members of its segments), one channel per address."""

from __future__ import annotations

from borealis.errors import BorealisError
from storage_node.client import StorageClient
from storage_node.segment import Member, Segment


class Peers:
    def __init__(self, node_name: str, timeout_s: float) -> None:
        self._node_name = node_name
        self._timeout_s = timeout_s
        self._clients: dict[str, StorageClient] = {}

    def of(self, segment: Segment) -> list[tuple[Member, StorageClient]]:
        """The segment's other members, with a client each."""
        return [
            (member, self.client(member.address))
            for member in segment.meta.members
            if member.node != self._node_name
        ]

    def client(self, address: str) -> StorageClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = StorageClient(address, self._timeout_s)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


PEER_ERRORS = (BorealisError,)
"""What a call to a peer may raise that a background task handles by trying another peer."""
