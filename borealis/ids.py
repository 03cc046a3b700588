"""Value types for LSNs and identifiers.

They are `NewType`s over `int`/`str`: the type checker keeps them apart, and the
hot paths (one LSN per redo record) pay nothing at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

Lsn = NewType("Lsn", int)
VolumeId = NewType("VolumeId", int)
PgIndex = NewType("PgIndex", int)
Epoch = NewType("Epoch", int)
NodeName = NewType("NodeName", str)

LSN_NONE = Lsn(0)
"""No record: the backlink of the first record, the SCL of an empty segment."""

LSN_MAX = Lsn(2**64 - 1)


@dataclass(frozen=True, slots=True)
class SegmentId:
    """One protection group's replica on a node, named by volume and PG."""

    volume_id: VolumeId
    pg: PgIndex

    def __str__(self) -> str:
        return f"{self.volume_id}/{self.pg}"


@dataclass(frozen=True, slots=True)
class Epochs:
    """The epochs a request carries; storage refuses older ones."""

    volume: Epoch
    membership: Epoch
