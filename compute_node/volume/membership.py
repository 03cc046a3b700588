"""Storage node replacement on the writer: moving PGs from one member set to another.

DESIGN.md section 8. The writer ships the redo, so it is the one that changes a
PG's members. Replacing node X by node Y in a PG with members M (membership epoch
e) goes in two steps, and I/O goes on throughout:

1. Transition, epoch e+1. Y's segment is created hydrating (it copies page images
   and records from its peers, storage_node/hydration.py); the shipper sends to
   M and Y and counts a record durable only on a write quorum of M AND of
   M' = M - X + Y (the transitional quorum: with X dead, the 5 others are in
   both sets, so writes never wait for Y); the segments of M take epoch e+1 (those
   that miss the call refuse the next append and are brought to it then).
2. Settle, epoch e+2, once Y holds everything that was durable when the change
   began (its SCL at or above the PG's PGCL of then): from then on a write quorum
   of M' alone holds every durable record, so M' becomes the only member set and
   X is dropped.

A writer that stops mid-change leaves segments whose metadata names both sets;
the next writer's recovery rolls such a PG back to the old set at a newer epoch
(recovery.py), and the replacement is asked for again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc import aio

from borealis import rpc
from borealis.errors import InvalidRequest
from proto import membership_pb2, membership_pb2_grpc
from storage_node.segment import Member

if TYPE_CHECKING:
    from compute_node.volume.volume import Volume

SERVICE_NAME = "borealis.membership.Membership"

# How often a change polls the new segments' state while they hydrate.
HYDRATION_POLL_S = 0.1


@dataclass(frozen=True)
class MemberSets:
    """A PG in a membership change: the new member set and the one it replaces."""

    members: list[Member]
    members_old: list[Member]


def replaced(members: list[Member], old: str, new: Member) -> list[Member]:
    """`members` with node `old` replaced by `new`, in place (placement order kept)."""
    if new.node in {member.node for member in members}:
        raise InvalidRequest("the new node is already a member of the PG", node=new.node)
    result = [new if member.node == old else member for member in members]
    assert result != members, (old, members)
    return result


class MembershipService(membership_pb2_grpc.MembershipServicer):
    """The writer's Membership gRPC service (proto/membership.proto)."""

    def __init__(self, volume: Volume) -> None:
        self._volume = volume

    @rpc.handler
    async def ReplaceStorageNode(  # noqa: N802 - gRPC method name
        self, request: membership_pb2.ReplaceStorageNodeRequest, context: aio.ServicerContext
    ) -> membership_pb2.ReplaceStorageNodeResponse:
        if not (request.old_node and request.new_node and request.new_address and request.new_az):
            raise InvalidRequest("old_node, new_node, new_address and new_az are required")
        if request.timeout_ms == 0:
            raise InvalidRequest("timeout_ms must be positive")
        started_s = time.monotonic()
        pgs = await self._volume.replace_node(
            request.old_node,
            Member(request.new_node, request.new_address, request.new_az),
            request.timeout_ms / 1000,
        )
        return membership_pb2.ReplaceStorageNodeResponse(
            pgs=pgs, duration_ms=int((time.monotonic() - started_s) * 1000)
        )
