"""A segment's metadata and in-memory state, and the epoch rule every request obeys."""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field

from borealis.errors import InvalidRequest, StaleEpoch
from borealis.ids import Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from storage_node.chain import SegmentChain


@dataclass(frozen=True)
class Member:
    node: str
    address: str
    az: str


@dataclass
class SegmentMeta:
    """What a segment persists besides its records (one JSON value in LMDB)."""

    volume_id: int
    pg: int
    first_page: int
    page_count: int
    volume_epoch: int
    membership_epoch: int
    members: list[Member] = field(default_factory=list)
    # During a membership change, the member set being replaced (`members` is the
    # new one); empty otherwise. Peers are the union of both.
    members_old: list[Member] = field(default_factory=list)
    # A new segment copying page images from a peer: its SCL stays 0 until done.
    hydrating: bool = False
    scl: int = 0
    highest_lsn: int = 0
    pgmrpl: int = 0
    truncated_above_lsn: int = 0
    truncated_up_to_lsn: int = 0
    records: int = 0
    record_bytes: int = 0

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SegmentMeta:
        values = json.loads(data)
        values["members"] = [Member(**member) for member in values["members"]]
        # Meta written before membership changes existed has no members_old.
        values["members_old"] = [Member(**member) for member in values.get("members_old", [])]
        return cls(**values)

    def copy(self) -> SegmentMeta:
        return dataclasses.replace(
            self, members=list(self.members), members_old=list(self.members_old)
        )


class Segment:
    """One PG replica. The writer thread changes `meta` and `chain` inside a
    transaction; `scl` is what readers see, published only after the commit."""

    def __init__(self, meta: SegmentMeta, chain: SegmentChain) -> None:
        self.id = SegmentId(VolumeId(meta.volume_id), PgIndex(meta.pg))
        self.meta = meta
        self.chain = chain
        self.scl = Lsn(meta.scl)
        self.pgmrpl = Lsn(meta.pgmrpl)
        # Pages that got deltas since the coalescer last looked at them; the
        # writer thread adds, the coalescer takes.
        self._pages_touched: set[int] = set()
        self._pages_touched_lock = threading.Lock()

    def reset(self, meta: SegmentMeta, chain: SegmentChain) -> None:
        """Replaces the working state with what was reloaded from disk."""
        self.meta = meta
        self.chain = chain
        self.scl = Lsn(meta.scl)
        self.pgmrpl = Lsn(meta.pgmrpl)

    def touch(self, pages: set[int]) -> None:
        with self._pages_touched_lock:
            self._pages_touched |= pages

    def take_touched(self) -> set[int]:
        with self._pages_touched_lock:
            pages, self._pages_touched = self._pages_touched, set()
        return pages

    def contains_page(self, page: int) -> bool:
        return self.meta.first_page <= page < self.meta.first_page + self.meta.page_count

    def check_page(self, page: int) -> None:
        if not self.contains_page(page):
            raise InvalidRequest(
                "page is outside the segment's page range",
                segment=self.id,
                page=page,
                first_page=self.meta.first_page,
                page_count=self.meta.page_count,
            )

    def check_epochs(self, epochs: Epochs) -> None:
        """Data requests must carry exactly the segment's epochs.

        An older epoch is a fenced writer or a reader that missed a change. A newer
        one means this segment missed a recovery or membership change and may hold
        records the new epoch truncated, so it must not answer either.
        """
        if (
            epochs.volume != self.meta.volume_epoch
            or epochs.membership != self.meta.membership_epoch
        ):
            raise StaleEpoch(
                "request epochs do not match the segment's",
                segment=self.id,
                request_volume_epoch=epochs.volume,
                segment_volume_epoch=self.meta.volume_epoch,
                request_membership_epoch=epochs.membership,
                segment_membership_epoch=self.meta.membership_epoch,
            )

    def epochs(self) -> Epochs:
        return Epochs(Epoch(self.meta.volume_epoch), Epoch(self.meta.membership_epoch))
