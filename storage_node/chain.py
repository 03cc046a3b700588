"""The segment chain: which records of a PG a segment holds, and its SCL.

Sans-IO. Each record names the previous record of its PG (`prev_lsn_pg`), so the
records of a PG form one chain. The SCL (segment complete LSN) is the end of the
unbroken chain from the start; records that arrive above a gap wait as pending
until the gap is filled (by the writer's retry or by gossip). A pending record
proves a hole: some record between the SCL and it is missing.
"""

from __future__ import annotations

from collections.abc import Iterable

from borealis.ids import LSN_NONE, Lsn


class SegmentChain:
    def __init__(self, scl: Lsn = LSN_NONE, pending: Iterable[tuple[Lsn, Lsn]] = ()) -> None:
        self.scl = scl
        # Records above the SCL, keyed by their backlink: following it from the
        # SCL is how the SCL advances.
        self._pending_by_prev: dict[Lsn, Lsn] = {}
        # The same records with their backlinks (lsn -> prev_lsn_pg). Around a
        # recovery two pending records can share a backlink (an old one in the
        # truncation range and the new writer's first), so `_pending_by_prev` may
        # have lost one; truncate rebuilds it from here.
        self._pending: dict[Lsn, Lsn] = {}
        self.highest_lsn = scl
        for lsn, prev_lsn_pg in pending:
            self.add(lsn, prev_lsn_pg)

    def holds(self, lsn: Lsn) -> bool:
        return lsn <= self.scl or lsn in self._pending

    def add(self, lsn: Lsn, prev_lsn_pg: Lsn) -> bool:
        """Records that the segment now holds `lsn`; False if it already did."""
        assert prev_lsn_pg < lsn
        if self.holds(lsn):
            return False
        self._pending[lsn] = prev_lsn_pg
        self._pending_by_prev[prev_lsn_pg] = lsn
        if lsn > self.highest_lsn:
            self.highest_lsn = lsn
        self._advance()
        return True

    def extend(self, records: list[tuple[int, int]]) -> list[bool]:
        """`add` for a batch of (lsn, prev_lsn_pg), LSN ascending; which ones were new.

        The common case (records arriving in chain order with nothing pending)
        only moves the SCL, without touching the pending maps.
        """
        new = []
        for lsn, prev_lsn_pg in records:
            if prev_lsn_pg == self.scl and not self._pending:
                assert prev_lsn_pg < lsn
                self.scl = lsn
                if lsn > self.highest_lsn:
                    self.highest_lsn = lsn
                new.append(True)
            else:
                new.append(self.add(lsn, prev_lsn_pg))
        return new

    def _advance(self) -> None:
        while self.scl in self._pending_by_prev:
            lsn = self._pending_by_prev.pop(self.scl)
            self._pending.pop(lsn, None)
            self.scl = lsn

    def pending(self) -> int:
        return len(self._pending)

    def hole(self) -> tuple[Lsn, Lsn] | None:
        """(after, up_to) around the first missing records, if a pending record proves one.

        Every record with after < lsn < up_to that belongs to the PG is missing; up_to
        itself is held. None when nothing is pending (the segment may still be
        behind its peers; gossip compares SCLs for that).
        """
        if not self._pending:
            return None
        return self.scl, min(self._pending)

    def truncate(self, above: Lsn, up_to: Lsn, last_held_at_or_below: Lsn) -> None:
        """Forgets the records with above < lsn <= up_to (recovery's truncation range).

        `last_held_at_or_below` is the newest record of the segment at or below
        `above`, which the caller reads from its log. If the chain was complete past
        `above`, it is complete up to that record.
        """
        assert last_held_at_or_below <= above <= up_to
        if self.scl > above:
            self.scl = last_held_at_or_below
        self._pending = {
            lsn: prev for lsn, prev in self._pending.items() if not above < lsn <= up_to
        }
        self._pending_by_prev = {prev: lsn for lsn, prev in self._pending.items()}
        self.highest_lsn = max(self._pending, default=self.scl)
        self._advance()
