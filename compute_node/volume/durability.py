"""Durability tracking on the writer: acks (SCLs) to PGCL, VCL and VDL.

Sans-IO; one thread drives it (the shipper's event loop), in this order:

1. `set_members(pg, ...)` for every PG before its first record (a new volume: from
   `Topology.placement`; a reopened one: from the segments' membership).
2. `record_sent(lsn, pg, is_cpl)` (or `group_sent`) for every record, in LSN
   order, when the record is handed to the shipper and before any of its acks can
   arrive. The LSN allocator and this registration run in the same serialized
   step at the commit point, so `lsn_sent` is also the highest LSN allocated
   (which LAL back-pressure relies on).
3. `ack(pg, node, scl)` for every AppendRedo answer: the segment of `pg` on `node`
   holds every record of the PG up to `scl`.

Definitions (DESIGN.md section 3):
- PGCL of a PG: the highest LSN that a write quorum (4 of the 6 members) reports
  SCL >= it, i.e. the 4th highest member SCL. During a membership change the PG
  has two member sets and needs a write quorum of each (the transitional quorum).
- VCL: the highest record LSN such that every record at or below it is complete
  in its PG (record LSN >= its PG's PGCL at the time it was checked).
- VDL: the highest CPL at or below VCL. It never decreases, and nothing above it
  is ever visible: commits are acknowledged and reads released only below it.

Records above VCL wait in a deque in LSN order. An ack only moves its PG's PGCL;
then records are popped from the left while the head is complete. So `ack` costs
O(1) plus O(records that became complete), not O(outstanding).

A record that was complete is never reconsidered: a later membership change may
lower a PG's PGCL (a new member starts at SCL 0), but the record was already on a
write quorum, which is what durability means, and VDL does not go back.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from borealis.errors import InvalidRequest
from borealis.ids import LSN_NONE, Lsn, PgIndex
from compute_node.volume.lsn import Assignment
from compute_node.volume.topology import SEGMENTS_PER_PG, WRITE_QUORUM

# Aurora's LAL is 10 million LSNs; ours is counted in LSNs too (see may_allocate).
LAL_LSNS_DEFAULT = 1_000_000

T = TypeVar("T")


class AckRefused(InvalidRequest):
    """An ack that cannot be counted: its node is not a member of the PG (a late
    answer from a member that was replaced, or a misrouted one), or its SCL is above
    every LSN sent. The shipper logs and drops it; the tracker's state is unchanged.
    """


class _Pg:
    """One PG's member SCLs and PGCL."""

    __slots__ = ("member_sets", "scl_by_node", "pgcl")

    def __init__(
        self, member_sets: tuple[tuple[str, ...], ...], scl_by_node: dict[str, Lsn]
    ) -> None:
        self.member_sets = member_sets
        self.scl_by_node = scl_by_node
        self.pgcl = self.quorum_lsn()

    def quorum_lsn(self) -> Lsn:
        """The highest LSN held by a write quorum of every member set."""
        scl_by_node = self.scl_by_node
        return min(
            sorted((scl_by_node[node] for node in members), reverse=True)[WRITE_QUORUM - 1]
            for members in self.member_sets
        )


class DurabilityTracker:
    def __init__(
        self,
        lsn_start: Lsn = LSN_NONE,
        lal_lsns: int = LAL_LSNS_DEFAULT,
        lsn_allocation_floor: Lsn | None = None,
        members_by_pg: Mapping[PgIndex, Sequence[str]] | None = None,
    ) -> None:
        """`lsn_start`: VDL and VCL to start from, with nothing outstanding (0 for a
        new volume; after recovery, the recovered VDL, everything above it truncated).

        `lsn_allocation_floor`: the allocator's `start_after` (after recovery, the end
        of the truncation range); the first record sent must be above it. Defaults
        to `lsn_start`.
        """
        floor = lsn_start if lsn_allocation_floor is None else lsn_allocation_floor
        assert floor >= lsn_start, (floor, lsn_start)
        assert lal_lsns > 0, lal_lsns
        self.vdl: Lsn = lsn_start
        self.vcl: Lsn = lsn_start
        self.lal_lsns = lal_lsns
        self.lsn_allocation_floor: Lsn = floor
        # The highest LSN registered (or the floor): every later record is above it.
        self.lsn_sent: Lsn = floor
        # Records above VCL, in LSN order: (lsn, pg, is_cpl).
        self._outstanding: deque[tuple[Lsn, PgIndex, bool]] = deque()
        self._pgs: dict[PgIndex, _Pg] = {}
        for pg, members in (members_by_pg or {}).items():
            self.set_members(pg, members)

    # --- membership ---------------------------------------------------------------

    def set_members(
        self, pg: PgIndex, members: Sequence[str], members_old: Sequence[str] | None = None
    ) -> Lsn:
        """Sets the PG's 6 member nodes; returns VDL (which may advance).

        With `members_old`, the PG is in a membership change: a record is complete
        only on a write quorum of both sets (DESIGN.md section 8). Calling it again
        without `members_old` ends the change. SCLs of nodes that stay members are
        kept; new members start at LSN_NONE until they ack.
        """
        member_sets = tuple(
            _checked_members(pg, names) for names in (members, members_old) if names is not None
        )
        previous = self._pgs.get(pg)
        known = previous.scl_by_node if previous is not None else {}
        scl_by_node = {node: known.get(node, LSN_NONE) for names in member_sets for node in names}
        self._pgs[pg] = _Pg(member_sets, scl_by_node)
        self._advance()
        return self.vdl

    def members_of(self, pg: PgIndex) -> tuple[tuple[str, ...], ...]:
        """The PG's member sets: one, or (new, old) during a membership change."""
        return self._pgs[pg].member_sets

    # --- records and acks ---------------------------------------------------------

    def record_sent(self, lsn: Lsn, pg: PgIndex, is_cpl: bool) -> None:
        """Registers a record handed to the shipper; LSNs strictly increase."""
        assert lsn > self.lsn_sent, ("records are registered in LSN order", lsn, self.lsn_sent)
        assert pg in self._pgs, ("set_members before the PG's first record", pg)
        self.lsn_sent = lsn
        self._outstanding.append((lsn, pg, is_cpl))

    def group_sent(self, assignments: Sequence[Assignment]) -> None:
        """`record_sent` for each record of a commit group, as the allocator returned it."""
        for assignment in assignments:
            self.record_sent(assignment.lsn, assignment.pg, assignment.cpl)

    def ack(self, pg: PgIndex, node: str, scl: Lsn) -> Lsn:
        """Counts an AppendRedo answer: `node`'s segment of `pg` holds the PG's records
        up to `scl`. Returns VDL (the caller releases waiters when it advanced).

        Raises AckRefused for a node that is not a member of the PG or an SCL above
        every LSN sent. An SCL below one already known is a late answer (RPCs
        complete out of order) and changes nothing: within a volume epoch a
        segment's SCL only grows.
        """
        state = self._pgs.get(pg)
        if state is None or node not in state.scl_by_node:
            raise AckRefused("ack from a node that is not a member of the PG", pg=pg, node=node)
        if scl > self.lsn_sent:
            raise AckRefused(
                "ack reports an SCL above every LSN sent",
                pg=pg,
                node=node,
                scl=scl,
                lsn_sent=self.lsn_sent,
            )
        if scl <= state.scl_by_node[node]:
            return self.vdl
        state.scl_by_node[node] = scl
        pgcl = state.quorum_lsn()
        if pgcl > state.pgcl:
            state.pgcl = pgcl
            self._advance()
        return self.vdl

    def _advance(self) -> None:
        outstanding = self._outstanding
        pgs = self._pgs
        vcl = self.vcl
        vdl = self.vdl
        while outstanding:
            lsn, pg, is_cpl = outstanding[0]
            if pgs[pg].pgcl < lsn:
                break
            outstanding.popleft()
            vcl = lsn
            if is_cpl:
                vdl = lsn
        assert vdl >= self.vdl and vcl >= vdl
        self.vcl = vcl
        self.vdl = vdl

    # --- what the shipper reports ---------------------------------------------------

    def pgcl(self, pg: PgIndex) -> Lsn:
        return self._pgs[pg].pgcl

    def scl_by_node(self, pg: PgIndex) -> dict[str, Lsn]:
        return dict(self._pgs[pg].scl_by_node)

    def outstanding(self) -> int:
        """Records sent and not yet complete (above VCL)."""
        return len(self._outstanding)

    def oldest_incomplete(self) -> tuple[Lsn, PgIndex] | None:
        """The record that holds VCL back, and its PG: what a stall error names."""
        if not self._outstanding:
            return None
        lsn, pg, _ = self._outstanding[0]
        return lsn, pg

    # --- LAL back-pressure ----------------------------------------------------------

    def may_allocate(self, count: int) -> bool:
        """Whether `count` more LSNs may be allocated now.

        The writer never allocates above max(VDL, allocation floor) + lal_lsns. LSNs
        are dense (one per record), so this is also a bound on records in flight;
        counting from the floor keeps the bound meaningful after a recovery whose
        truncation range left a gap above VDL. Recovery relies on the bound: an old
        writer cannot have used an LSN above it.

        Raises InvalidRequest for a group larger than the LAL: it could never be
        allocated, and waiting would stall the writer forever.
        """
        assert count > 0, count
        if count > self.lal_lsns:
            raise InvalidRequest(
                "commit group is larger than the LSN allocation limit",
                records=count,
                lal_lsns=self.lal_lsns,
            )
        return self.lsn_sent + count - max(self.vdl, self.lsn_allocation_floor) <= self.lal_lsns


def _checked_members(pg: PgIndex, names: Sequence[str]) -> tuple[str, ...]:
    members = tuple(names)
    assert len(members) == SEGMENTS_PER_PG, ("a PG has 6 members", pg, members)
    assert len(set(members)) == SEGMENTS_PER_PG, ("members are distinct nodes", pg, members)
    return members


class Waiters(Generic[T]):
    """Tokens (futures, callbacks) waiting for VDL to reach an LSN.

    A heap ordered by LSN: `release` pops only what it returns. The count is bounded
    by what creates waiters (one per in-flight commit or read statement, bounded by
    sessions), so there is no limit here.
    """

    def __init__(self) -> None:
        # (lsn, sequence, token): the sequence breaks ties so tokens need no ordering.
        self._heap: list[tuple[Lsn, int, T]] = []
        self._sequence = 0

    def add(self, lsn: Lsn, token: T) -> None:
        """Waits for VDL >= lsn. The caller first checks the current VDL: a token
        added at or below it is released only by the next `release`."""
        self._sequence += 1
        heapq.heappush(self._heap, (lsn, self._sequence, token))

    def release(self, vdl: Lsn) -> list[T]:
        """The tokens whose LSN is at or below `vdl`, lowest LSN first; they are removed."""
        heap = self._heap
        released: list[T] = []
        while heap and heap[0][0] <= vdl:
            released.append(heapq.heappop(heap)[2])
        return released

    def take_all(self) -> list[T]:
        """Every token, lowest LSN first (to fail them when the writer gives up)."""
        released = [token for _, _, token in sorted(self._heap, key=lambda item: item[:2])]
        self._heap.clear()
        return released

    def lsn_lowest(self) -> Lsn | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
