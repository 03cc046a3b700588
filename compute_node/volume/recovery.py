"""Reopening a volume as its new writer: DESIGN.md section 8's recovery, first version.

`Recovery.run` fences older writers with a new volume epoch, finds the durable
point from the records held by write quorums, and decides the truncation range
above it; `Volume.open` (volume.py) continues from what it returns
(`RecoveredVolume`). See `Recovery` for the steps and what it does not handle yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from borealis import redo
from borealis.errors import (
    BorealisError,
    Corruption,
    NotFound,
    Unavailable,
)
from borealis.ids import LSN_NONE, Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.log import get_logger
from compute_node.volume.config import VolumeConfig
from compute_node.volume.epochs import (
    NO_TRUNCATION,
    EpochCatchUp,
    TruncationRange,
    catch_up_truncations,
)
from compute_node.volume.topology import READ_QUORUM, SEGMENTS_PER_PG, WRITE_QUORUM
from storage_node.client import StorageClient
from storage_node.segment import Member, SegmentMeta

log = get_logger("compute_node.volume.recovery")

T = TypeVar("T")

# Recovery RPCs in flight at once (ReadRecords, SetEpoch, ...).
RECOVERY_CALLS_IN_FLIGHT_MAX = 64
# ReadRecords pages per segment and call site, so a node that always says `more`
# cannot loop forever.
READ_RECORDS_PAGES_MAX = 1_000_000
SET_EPOCH_ATTEMPTS = 3
NODE_RETRY_INTERVAL_S = 0.1
# Repair appends at most this many records per AppendRedo (storage takes 8192).
REPAIR_BATCH_RECORDS_MAX = 2048


@dataclass(frozen=True)
class RecoveredVolume:
    """What `open` found and decided (also logged)."""

    volume_epoch: Epoch
    pages_per_pg: int
    members_by_pg: dict[PgIndex, list[Member]]
    membership_epoch_by_pg: dict[PgIndex, Epoch]
    # Everything at or below was on a write quorum without reading it.
    floor: Lsn
    vcl: Lsn
    vdl: Lsn
    # The truncation range (vdl, truncate_up_to]; new LSNs start above it.
    truncate_up_to: Lsn
    last_lsn_by_pg: dict[PgIndex, Lsn]
    lsn_size_last: Lsn
    page_count: int
    records_read: int
    # Segments left out ("pg/node: why"): node unreachable, older epoch, refused.
    excluded: list[str]
    # Members whose node answered without the segment: the shipper creates them.
    missing_by_pg: dict[PgIndex, list[str]]
    # What the shipper needs to bring the other segments to the new epoch.
    catch_up: EpochCatchUp
    # Per PG, the segments at the new epoch with the new truncation applied.
    caught_up_by_pg: dict[PgIndex, list[str]]
    # Per PG, the segments repair completed up to the PG's last record <= VDL.
    repaired_by_pg: dict[PgIndex, list[str]]
    records_repaired: int


def _read_quorum(asked: int) -> int:
    """Segments of a PG that must take the fencing epoch: any write quorum of the
    old writer then includes one of them."""
    return READ_QUORUM


def _all_but_two(asked: int) -> int:
    """Fenced segments of a PG that must take the truncation: all but at most 2, so
    any read quorum at the new epoch includes one reporting the range."""
    return max(1, asked - (SEGMENTS_PER_PG - WRITE_QUORUM))


async def list_segments(
    clients: Mapping[str, StorageClient], timeout_s: float, wait_ms: float
) -> dict[str, list[SegmentMeta] | BorealisError]:
    """ListSegments on every node; nodes that fail are asked again until `wait_ms`
    has passed (a node that just restarted may refuse for a moment: gRPC shares a
    connection per address between channels, and one in reconnect backoff fails
    new calls at once). Each node's answer or last error."""
    deadline_s = time.monotonic() + wait_ms / 1000
    results: dict[str, list[SegmentMeta] | BorealisError] = {}
    pending = list(clients)
    while True:
        answers = await asyncio.gather(
            *(clients[node].list_segments(timeout_s=timeout_s) for node in pending),
            return_exceptions=True,
        )
        failed = []
        for node, answer in zip(pending, answers, strict=True):
            if isinstance(answer, BorealisError):
                failed.append(node)
            elif isinstance(answer, BaseException):
                raise answer
            results[node] = answer
        pending = failed
        if not pending or time.monotonic() >= deadline_s:
            return results
        await asyncio.sleep(NODE_RETRY_INTERVAL_S)


# -- recovery ---------------------------------------------------------------------------------


class RecordSeen:
    """One record found on the segments during recovery: its header and how many
    segments of its PG hold it."""

    __slots__ = ("pg", "prev_lsn_volume", "prev_lsn_pg", "cpl", "size", "page", "holders")

    def __init__(
        self,
        pg: PgIndex,
        prev_lsn_volume: Lsn,
        prev_lsn_pg: Lsn,
        cpl: bool,
        size: bool,
        page: int,
        holders: int = 1,
    ) -> None:
        self.pg = pg
        self.prev_lsn_volume = prev_lsn_volume
        self.prev_lsn_pg = prev_lsn_pg
        self.cpl = cpl
        self.size = size
        self.page = page
        self.holders = holders


def durable_point(
    records: Mapping[Lsn, RecordSeen], floor: Lsn, holders_needed: Mapping[PgIndex, int]
) -> tuple[Lsn, Lsn | None]:
    """(VCL, the highest CPL in (floor, VCL] or None), from what the segments hold.

    Every record at or below `floor` is known to be on a write quorum; `records`
    holds every record above it found on any segment. Walking up from the floor,
    a record extends the VCL when it is held by enough segments of its PG and
    the volume's backlink chain is unbroken: its `prev_lsn_volume` is the record
    before it (for the first one, anything at or below the floor). A record
    missing from every segment shows up as a broken link.
    """
    vcl = floor
    vdl: Lsn | None = None
    for lsn in sorted(lsn for lsn in records if lsn > floor):
        record = records[lsn]
        # The first record may link to anything at or below the floor.
        linked = record.prev_lsn_volume <= floor if vcl == floor else record.prev_lsn_volume == vcl
        if not linked or record.holders < holders_needed[record.pg]:
            break
        vcl = lsn
        if record.cpl:
            vdl = lsn
    return vcl, vdl


@dataclass(frozen=True)
class _PgLayout:
    members: list[Member]
    membership_epoch: Epoch
    first_page: int
    page_count: int


class Recovery:
    """Reopening a volume (DESIGN.md section 8).

    1. ListSegments on every storage node: the volume's PGs, their members and
       epochs. A segment is usable if its node answers and it is at the volume's
       highest volume epoch and its PG's membership epoch; a member at an older
       volume epoch missed an earlier recovery (it is caught up in step 7). Every
       PG needs a read quorum (3/6) of usable segments: recovery goes on with a
       whole AZ and one more node down.
    2. Fence: SetEpoch(volume epoch + 1) on the usable segments; a read quorum of
       each PG must accept. That is enough to fence: an older writer needs a write
       quorum (4/6) at its epoch, and with 3 segments at a newer one at most 3 are
       left. From here what the fenced segments hold no longer changes.
    3. ListSegments again (the fenced segments). Records inside any truncation
       range a segment reports are off the chain (a segment may have taken an
       earlier epoch but not its truncation) and are ignored from here on. The
       floor: per PG, the k-th highest SCL among the segments whose truncation
       state is the newest (k as in step 4), the lowest over the PGs, raised to
       (highest LSN held anywhere - LAL): an old writer never ran more than the
       LAL ahead of its VDL (or of its own allocation floor, the end of an earlier
       truncation range, below which everything surviving was at or below an
       earlier VDL), and to the highest PGMRPL a fenced segment reports (storage
       garbage-collects below it, and everything there is durable).
    4. ReadRecords above the floor on every fenced segment; per record, the
       segments that hold it. `durable_point` walks the volume's backlink chain
       up from the floor: VCL is where a record is missing or held by too few
       segments, VDL the last CPL before it. "Too few" is fewer than r - 2 of the
       r segments read (at least 1): a record that reached a write quorum (4/6)
       is on at least r - 2 of them. If no CPL is above the floor, windows below
       it are read (doubling) until one is found.
    5. The page count: the newest SIZE record (PG 0) at or below VDL, searched
       the same way. The last record of every PG at or below VDL, exactly, for
       the new writer's backlinks.
    6. Truncate: SetEpoch again (same new epoch) with the range
       (VDL, max(VDL, earlier truncation end) + LAL + margin], covering anything
       an old writer may have allocated; new LSNs start above it. It must reach
       all but at most 2 of the fenced segments of each PG, so that any read
       quorum of segments at the new epoch includes one that reports the range
       (a later recovery then ignores the records in it, step 3).
    7. Catch up the segments that missed an earlier epoch change (epochs.py).
    8. Repair: a PG with fewer than a write quorum of segments complete up to its
       last record at or below VDL gets the records it lacks copied (ReadRecords
       from the segments that hold them, AppendRedo at the new epoch) until 4 are
       complete, when 4 answer. Otherwise the open still succeeds (reads work at
       VDL) and writes wait: the shipper catches up a returning segment and
       storage gossip fills it.

    Segments not finished here (unreachable, refused SetEpoch, fenced without the
    truncation) are listed in `excluded`; the shipper checks them with
    `catch_up_truncations` before it first appends to them. A PG with fewer usable
    segments than a read quorum fails the open, unless it holds no record at all
    (its creation reached too few nodes): it is kept with the segments it has.
    Members whose node answered without the segment are created by the shipper
    before it first sends them records; gossip fills them.

    0. A PG that a writer left in the middle of a storage node replacement (its
       newest membership names a second, old member set; membership.py) is first
       rolled back to the old set at a newer membership epoch: the new node's
       segment may still be hydrating, and the old set is the one every durable
       record is on a write quorum of. The replacement is asked for again.

    Members at an older membership epoch than their PG's are left out here and
    brought to it by the shipper before its first append to them. A node failing
    mid-recovery fails the open when a quorum is lost (retry it).
    Memory is one small object per record above the floor (bounded by the LAL);
    repair streams page by page.
    """

    def __init__(
        self, volume_id: VolumeId, clients: Mapping[str, StorageClient], config: VolumeConfig
    ) -> None:
        self.volume_id = volume_id
        self._clients = clients
        self._config = config
        self._timeout_s = config.control_rpc_timeout_ms / 1000
        self._calls = asyncio.Semaphore(RECOVERY_CALLS_IN_FLIGHT_MAX)
        self._excluded: list[str] = []
        self._records_read = 0
        self._records_repaired = 0
        # Truncation ranges the segments report: records inside are off the chain.
        self._truncated: set[TruncationRange] = set()
        # The nodes that answered the last ListSegments.
        self._answered: set[str] = set()

    async def run(self) -> RecoveredVolume:
        metas = await self._list()
        if not metas:
            raise NotFound("no storage node holds a segment of the volume", volume=self.volume_id)
        if await self._roll_back_changes(metas):
            metas = await self._list()
        epoch_old = max(
            meta.volume_epoch for by_node in metas.values() for meta in by_node.values()
        )
        epoch_new = Epoch(epoch_old + 1)
        layouts = {pg: self._layout(pg, by_node, epoch_old) for pg, by_node in metas.items()}
        pages_per_pg = self._pages_per_pg(layouts)
        usable: dict[PgIndex, list[str]] = {}
        behind: dict[PgIndex, dict[str, SegmentMeta]] = {}
        for pg, by_node in metas.items():
            usable[pg], behind[pg] = self._sort_segments(pg, by_node, layouts[pg], epoch_old)
        # A PG whose creation reached fewer than a quorum of nodes (the writer failed
        # or stopped in admit) holds no record: it opens with the segments it has,
        # and the shipper creates the others.
        partial = {
            pg
            for pg, by_node in metas.items()
            if len(usable[pg]) < READ_QUORUM
            and all(meta.highest_lsn == LSN_NONE for meta in by_node.values())
        }
        self._require_quorum(usable, "usable segments", READ_QUORUM, partial)

        # Fence, then look again: nothing an old writer sends lands after this.
        fenced = await self._set_epoch(layouts, usable, epoch_new, None, _read_quorum, partial)
        metas = await self._list()
        states = self._fenced_states(layouts, fenced, metas, epoch_new)
        self._require_quorum(
            {pg: list(by_node) for pg, by_node in states.items()}, "fenced", READ_QUORUM, partial
        )
        missing_by_pg = {
            pg: [
                member.node
                for member in layout.members
                if member.node in self._answered and member.node not in metas.get(pg, {})
            ]
            for pg, layout in layouts.items()
        }
        truncation_before = max(
            (
                (Lsn(meta.truncated_above_lsn), Lsn(meta.truncated_up_to_lsn))
                for by_node in states.values()
                for meta in by_node.values()
            ),
            key=lambda truncation: truncation[1],
            default=NO_TRUNCATION,
        )
        self._truncated = {
            (Lsn(meta.truncated_above_lsn), Lsn(meta.truncated_up_to_lsn))
            for by_node in states.values()
            for meta in by_node.values()
            if meta.truncated_up_to_lsn > meta.truncated_above_lsn
        }

        lal = self._config.lal_lsns
        top = max(
            (meta.highest_lsn for by_node in states.values() for meta in by_node.values()),
            default=LSN_NONE,
        )
        holders_needed = {pg: max(1, len(by_node) - 2) for pg, by_node in states.items()}
        pgcls = {
            pg: self._pgcl(by_node, holders_needed[pg], truncation_before)
            for pg, by_node in states.items()
        }
        # Storage garbage-collects records below a segment's PGMRPL, so the chain
        # cannot be walked there; and everything at or below any PGMRPL is durable
        # (a PGMRPL is at or below a read point some instance used, itself at or
        # below the VDL of then). A cold PG's low PGCL must not pull the floor under it.
        pgmrpl = max(meta.pgmrpl for by_node in states.values() for meta in by_node.values())
        floor = Lsn(max(min(pgcls.values()), top - lal, pgmrpl, 0))
        epochs = {pg: Epochs(epoch_new, layouts[pg].membership_epoch) for pg in states}
        known: dict[Lsn, RecordSeen] = {}
        await self._read_union(states, epochs, floor, Lsn(top), known)
        vcl, vdl_found = durable_point(known, floor, holders_needed)
        # Every record above covered_after (of every PG) is in `known`.
        covered_after = floor
        if vdl_found is None:
            vdl_found, covered_after = await self._scan_back(
                states, epochs, floor, known, lambda record: record.cpl
            )
        vdl = vdl_found if vdl_found is not None else LSN_NONE
        lsn_size, page_count = await self._size_at(states, epochs, vdl, known, covered_after)
        last_lsn_by_pg = {
            pg: await self._last_at_or_below(pg, states, epochs, vdl, known, covered_after)
            for pg in states
        }
        truncate_up_to = Lsn(
            max(max(vdl, truncation_before[1]) + lal + self._config.truncation_margin_lsns, top)
        )
        truncated = await self._set_epoch(
            layouts,
            {pg: list(by_node) for pg, by_node in states.items()},
            epoch_new,
            (vdl, truncate_up_to),
            _all_but_two,
            partial,
        )
        catch_up = EpochCatchUp(epoch_new, (vdl, truncate_up_to), truncation_before)
        for pg, by_node in behind.items():
            truncated[pg].update(await self._catch_up(pg, by_node, layouts[pg], catch_up))
        for pg, by_node in states.items():
            for node in sorted(set(by_node) - set(truncated[pg])):
                self._exclude(pg, node, "fenced but not truncated; the shipper truncates it")
        for pg, nodes in missing_by_pg.items():
            # A PG without records needs no repair: the shipper creates its segments.
            if (
                nodes
                and last_lsn_by_pg[pg] != LSN_NONE
                and sum(m.scl >= last_lsn_by_pg[pg] for m in truncated[pg].values())
                < (WRITE_QUORUM)
            ):
                created = await self._create(pg, nodes, layouts[pg], catch_up)
                truncated[pg].update(created)
                missing_by_pg[pg] = [node for node in nodes if node not in created]
        repaired_by_pg = {}
        for pg, by_node in truncated.items():
            repaired = await self._repair(pg, by_node, epochs[pg], last_lsn_by_pg[pg])
            if repaired:
                repaired_by_pg[pg] = repaired
        return RecoveredVolume(
            volume_epoch=epoch_new,
            pages_per_pg=pages_per_pg,
            members_by_pg={pg: layout.members for pg, layout in layouts.items()},
            membership_epoch_by_pg={pg: layout.membership_epoch for pg, layout in layouts.items()},
            floor=floor,
            vcl=vcl,
            vdl=vdl,
            truncate_up_to=truncate_up_to,
            last_lsn_by_pg={pg: lsn for pg, lsn in last_lsn_by_pg.items() if lsn != LSN_NONE},
            lsn_size_last=lsn_size,
            page_count=page_count,
            records_read=self._records_read,
            excluded=list(self._excluded),
            missing_by_pg={pg: nodes for pg, nodes in missing_by_pg.items() if nodes},
            catch_up=catch_up,
            caught_up_by_pg={pg: sorted(by_node) for pg, by_node in truncated.items()},
            repaired_by_pg=repaired_by_pg,
            records_repaired=self._records_repaired,
        )

    async def _roll_back_changes(self, metas: Mapping[PgIndex, Mapping[str, SegmentMeta]]) -> bool:
        """Step 0; True when a PG was in a membership change (list the segments again)."""
        calls = []
        for pg, by_node in metas.items():
            epoch = max(meta.membership_epoch for meta in by_node.values())
            newest = next(meta for meta in by_node.values() if meta.membership_epoch == epoch)
            if not newest.members_old:
                continue
            members = list(newest.members_old)
            log.warning(
                "PG left in a membership change: rolled back to its old members",
                pg=pg,
                membership_epoch=epoch + 1,
                members=",".join(member.node for member in members),
            )
            for member in members:
                meta = by_node.get(member.node)
                if meta is None:
                    continue
                calls.append(
                    self._clients[member.node].set_membership(
                        SegmentId(self.volume_id, pg),
                        Epochs(Epoch(meta.volume_epoch), Epoch(epoch + 1)),
                        meta.first_page,
                        meta.page_count,
                        members,
                        members_old=[],
                        timeout_s=self._timeout_s,
                    )
                )
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BorealisError):
                # Left at the older epoch: recovery leaves it out, the shipper repairs it.
                log.info("membership rollback missed a segment", error=result)
            elif isinstance(result, BaseException):
                raise result
        return bool(calls)

    def _sort_segments(
        self, pg: PgIndex, by_node: Mapping[str, SegmentMeta], layout: _PgLayout, epoch_old: int
    ) -> tuple[list[str], dict[str, SegmentMeta]]:
        """(nodes of the usable segments, the members that missed an epoch change)."""
        member_nodes = {member.node for member in layout.members}
        usable = []
        behind = {}
        for node, meta in sorted(by_node.items()):
            if node not in member_nodes or meta.membership_epoch != layout.membership_epoch:
                self._exclude(pg, node, "not a member at the PG's membership epoch")
            elif meta.hydrating:
                # Still copying from its peers: SCL 0 and a partial log.
                self._exclude(pg, node, "hydrating")
            elif meta.volume_epoch == epoch_old:
                usable.append(node)
            else:
                behind[node] = meta
                self._exclude(pg, node, "missed an epoch change; caught up after the truncation")
        return usable, behind

    def _fenced_states(
        self,
        layouts: Mapping[PgIndex, _PgLayout],
        fenced: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        metas: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epoch_new: Epoch,
    ) -> dict[PgIndex, dict[str, SegmentMeta]]:
        states: dict[PgIndex, dict[str, SegmentMeta]] = {}
        for pg in layouts:
            states[pg] = {}
            for node in fenced[pg]:
                meta = metas.get(pg, {}).get(node)
                if meta is None or meta.volume_epoch != epoch_new:
                    self._exclude(pg, node, "not at the new epoch after fencing")
                    continue
                states[pg][node] = meta
        return states

    def _pgcl(
        self,
        by_node: Mapping[str, SegmentMeta],
        holders_needed: int,
        truncation_before: TruncationRange,
    ) -> Lsn:
        """The k-th highest SCL (k = holders_needed) among the segments whose last
        truncation is the newest one: every record of the PG at or below it is held
        by k segments. A segment with an older truncation state may hold records
        off the chain, and its SCL may have followed them."""
        scls = sorted(
            (
                meta.scl
                for meta in by_node.values()
                if (meta.truncated_above_lsn, meta.truncated_up_to_lsn) == truncation_before
            ),
            reverse=True,
        )
        return Lsn(scls[holders_needed - 1]) if len(scls) >= holders_needed else LSN_NONE

    def _off_chain(self, lsn: int) -> bool:
        return any(above < lsn <= up_to for above, up_to in self._truncated)

    async def _catch_up(
        self,
        pg: PgIndex,
        by_node: Mapping[str, SegmentMeta],
        layout: _PgLayout,
        catch_up: EpochCatchUp,
    ) -> dict[str, SegmentMeta]:
        """Brings the segments that missed an epoch change to the new epoch; the
        states of those that took it."""
        done: dict[str, SegmentMeta] = {}
        epochs = Epochs(catch_up.volume_epoch, layout.membership_epoch)
        for node, meta in by_node.items():
            ranges = catch_up_truncations(
                meta.volume_epoch,
                (Lsn(meta.truncated_above_lsn), Lsn(meta.truncated_up_to_lsn)),
                catch_up,
            )
            try:
                for truncation in ranges:
                    meta = await self._call(
                        self._clients[node].set_epoch(
                            SegmentId(self.volume_id, pg),
                            epochs,
                            truncate=truncation,
                            timeout_s=self._timeout_s,
                        )
                    )
            except BorealisError as error:
                self._exclude(pg, node, f"catch-up refused: {error}")
                continue
            log.info("segment caught up to the new epoch", pg=pg, node=node, ranges=ranges)
            done[node] = meta
        return done

    # -- segment states -------------------------------------------------------------------

    async def _list(self) -> dict[PgIndex, dict[str, SegmentMeta]]:
        """The volume's segments by PG and node, from every node that answers."""
        listings = await list_segments(self._clients, self._timeout_s, self._config.node_wait_ms)
        metas: dict[PgIndex, dict[str, SegmentMeta]] = {}
        self._answered = set()
        for node, listing in listings.items():
            if isinstance(listing, BorealisError):
                log.warning("storage node did not answer during recovery", node=node, error=listing)
                continue
            self._answered.add(node)
            for meta in listing:
                if meta.volume_id == self.volume_id:
                    metas.setdefault(PgIndex(meta.pg), {})[node] = meta
        return metas

    def _layout(self, pg: PgIndex, by_node: dict[str, SegmentMeta], epoch: int) -> _PgLayout:
        """The PG's members and page range, from its segments at the volume epoch and
        the newest membership epoch among them."""
        current = [meta for meta in by_node.values() if meta.volume_epoch == epoch]
        if not current:
            current = list(by_node.values())
        membership_epoch = max(meta.membership_epoch for meta in current)
        newest = [meta for meta in current if meta.membership_epoch == membership_epoch]
        layout = _PgLayout(
            # A change that could not be rolled back (step 0): the old set.
            list(newest[0].members_old or newest[0].members),
            Epoch(membership_epoch),
            newest[0].first_page,
            newest[0].page_count,
        )
        for meta in newest:
            if (meta.members_old or meta.members, meta.first_page, meta.page_count) != (
                layout.members,
                layout.first_page,
                layout.page_count,
            ):
                raise Corruption(
                    "segments of a PG disagree on members or page range at one epoch",
                    pg=pg,
                    membership_epoch=membership_epoch,
                )
        return layout

    def _pages_per_pg(self, layouts: Mapping[PgIndex, _PgLayout]) -> int:
        sizes = {layout.page_count for layout in layouts.values()}
        if len(sizes) != 1:
            raise Corruption("PGs of the volume differ in size", sizes=sorted(sizes))
        (pages_per_pg,) = sizes
        for pg, layout in layouts.items():
            if layout.first_page != pg * pages_per_pg:
                raise Corruption(
                    "a PG's first page does not match its index",
                    pg=pg,
                    first_page=layout.first_page,
                    pages_per_pg=pages_per_pg,
                )
        return pages_per_pg

    def _exclude(self, pg: PgIndex, node: str, why: str) -> None:
        self._excluded.append(f"{pg}/{node}: {why}")
        log.warning("segment left out of recovery", pg=pg, node=node, why=why)

    def _require_quorum(
        self,
        usable: Mapping[PgIndex, Collection[str]],
        what: str,
        quorum: int,
        exempt: Collection[PgIndex] = (),
    ) -> None:
        short = {
            pg: len(nodes)
            for pg, nodes in usable.items()
            if len(nodes) < quorum and pg not in exempt
        }
        if short:
            raise Unavailable(
                f"cannot open the volume: PGs with fewer than {quorum} {what}",
                volume=self.volume_id,
                segments_by_pg=short,
                excluded="; ".join(self._excluded) or "none",
            )

    async def _set_epoch(
        self,
        layouts: Mapping[PgIndex, _PgLayout],
        nodes_by_pg: Mapping[PgIndex, Sequence[str]],
        epoch: Epoch,
        truncate: tuple[Lsn, Lsn] | None,
        needed: Callable[[int], int],
        exempt: Collection[PgIndex] = (),
    ) -> dict[PgIndex, dict[str, SegmentMeta]]:
        """SetEpoch on the given segments (retried a few times); the states of those
        that accepted, per PG. Each PG but the exempt ones needs `needed(asked)`."""
        accepted: dict[PgIndex, dict[str, SegmentMeta]] = {pg: {} for pg in nodes_by_pg}
        pending = [(pg, node) for pg, nodes in nodes_by_pg.items() for node in nodes]
        errors: dict[tuple[PgIndex, str], BorealisError] = {}
        for _ in range(SET_EPOCH_ATTEMPTS):
            if not pending:
                break
            results = await asyncio.gather(
                *(
                    self._call(
                        self._clients[node].set_epoch(
                            SegmentId(self.volume_id, pg),
                            Epochs(epoch, layouts[pg].membership_epoch),
                            truncate=truncate,
                            timeout_s=self._timeout_s,
                        )
                    )
                    for pg, node in pending
                ),
                return_exceptions=True,
            )
            failed = []
            for (pg, node), result in zip(pending, results, strict=True):
                if isinstance(result, BorealisError):
                    errors[(pg, node)] = result
                    failed.append((pg, node))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    accepted[pg][node] = result
            pending = failed
        for pg, node in pending:
            self._exclude(pg, node, f"SetEpoch refused: {errors[(pg, node)]}")
        for pg, nodes in nodes_by_pg.items():
            self._require_quorum(
                {pg: accepted[pg]}, "segments accepting the new epoch", needed(len(nodes)), exempt
            )
        return accepted

    # -- reading records -------------------------------------------------------------------

    async def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        async with self._calls:
            return await coroutine

    async def _read_segment(
        self, pg: PgIndex, node: str, epochs: Epochs, after: Lsn, up_to: Lsn
    ) -> list[tuple[Any, ...]]:
        """The headers of the segment's records with after < lsn <= up_to."""
        client = self._clients[node]
        segment_id = SegmentId(self.volume_id, pg)
        headers: list[tuple[Any, ...]] = []
        for _ in range(READ_RECORDS_PAGES_MAX):
            records, more, _ = await self._call(
                client.read_records(
                    segment_id,
                    epochs,
                    after,
                    up_to,
                    bytes_max=self._config.read_records_bytes_max,
                    timeout_s=self._timeout_s,
                )
            )
            for data in records:
                headers.append(redo.check(data, Corruption))
            if not more or not records:
                return headers
            after = Lsn(headers[-1][1])
        raise Unavailable("ReadRecords kept saying `more`", pg=pg, node=node)

    async def _read_union(
        self,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        after: Lsn,
        up_to: Lsn,
        known: dict[Lsn, RecordSeen],
    ) -> list[Lsn]:
        """Reads every usable segment's records in (after, up_to] into `known`,
        counting holders; returns the LSNs read. PGs with nothing above `after` are
        skipped."""
        work = [
            (pg, node)
            for pg, by_node in states.items()
            if max((meta.highest_lsn for meta in by_node.values()), default=LSN_NONE) > after
            for node in by_node
        ]
        results = await asyncio.gather(
            *(self._read_segment(pg, node, epochs[pg], after, up_to) for pg, node in work)
        )
        read: set[Lsn] = set()
        for (pg, _node), headers in zip(work, results, strict=True):
            self._records_read += len(headers)
            for header in headers:
                _, lsn, prev_volume, prev_pg, _, page, kind, flags, _, _ = header
                if self._off_chain(lsn):
                    continue
                record = known.get(lsn)
                if record is None:
                    known[lsn] = RecordSeen(
                        pg,
                        Lsn(prev_volume),
                        Lsn(prev_pg),
                        bool(flags & redo.FLAG_CPL),
                        kind == redo.KIND_SIZE,
                        page,
                    )
                elif record.pg != pg or record.prev_lsn_volume != prev_volume:
                    raise Corruption("two different records with one LSN", lsn=lsn, pg=pg)
                else:
                    record.holders += 1
                read.add(lsn)
        return sorted(read)

    async def _scan_back(
        self,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        below: Lsn,
        known: dict[Lsn, RecordSeen],
        wanted: Callable[[RecordSeen], bool],
    ) -> tuple[Lsn | None, Lsn]:
        """Reads windows (lo, hi] downward from `below` (doubling) until one holds a
        wanted record; (its highest such LSN or None, the lowest `lo` read)."""
        window = self._config.recovery_window_lsns
        hi = below
        while hi > LSN_NONE:
            lo = Lsn(max(0, hi - window))
            read = await self._read_union(states, epochs, lo, hi, known)
            hits = [lsn for lsn in read if wanted(known[lsn])]
            if hits:
                return max(hits), lo
            hi = lo
            window *= 2
        return None, LSN_NONE

    async def _size_at(
        self,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        vdl: Lsn,
        known: dict[Lsn, RecordSeen],
        covered_after: Lsn,
    ) -> tuple[Lsn, int]:
        """(LSN, page count) of the newest SIZE record at or below VDL; (0, 0) if none."""
        sizes = [lsn for lsn, record in known.items() if record.size and lsn <= vdl]
        if not sizes and covered_after > LSN_NONE and PgIndex(0) in states:
            found, _ = await self._scan_back(
                {PgIndex(0): states[PgIndex(0)]},
                epochs,
                covered_after,
                known,
                lambda record: record.size,
            )
            sizes = [found] if found is not None else []
        if not sizes:
            return LSN_NONE, 0
        lsn = max(sizes)
        return lsn, known[lsn].page

    async def _last_at_or_below(
        self,
        pg: PgIndex,
        states: Mapping[PgIndex, Mapping[str, SegmentMeta]],
        epochs: Mapping[PgIndex, Epochs],
        vdl: Lsn,
        known: dict[Lsn, RecordSeen],
        covered_after: Lsn,
    ) -> Lsn:
        """The PG's last record at or below VDL: the new writer's first record of
        the PG links to it (storage builds the segment chain from that link)."""
        mine = [lsn for lsn, record in known.items() if record.pg == pg and lsn > covered_after]
        below = [lsn for lsn in mine if lsn <= vdl]
        if below:
            return max(below)
        if not mine:
            # Every record of the PG on the chain is at or below covered_after (<= VDL);
            # a segment's newest record is the PG's last unless it is off the chain.
            return Lsn(
                max(
                    (
                        meta.highest_lsn
                        for meta in states[pg].values()
                        if meta.highest_lsn <= covered_after
                        and not self._off_chain(meta.highest_lsn)
                    ),
                    default=LSN_NONE,
                )
            )
        prev = known[min(mine)].prev_lsn_pg
        if prev <= vdl:
            return prev
        # The PG's first record above VDL follows one missing everywhere: look below.
        found, _ = await self._scan_back(
            {pg: states[pg]}, epochs, covered_after, known, lambda record: record.pg == pg
        )
        return found if found is not None else LSN_NONE

    async def _create(
        self, pg: PgIndex, nodes: Sequence[str], layout: _PgLayout, catch_up: EpochCatchUp
    ) -> dict[str, SegmentMeta]:
        """Creates a short PG's segments on members that lack them (their node lost
        it, or the PG's creation never reached it), at the new epoch with its
        truncation, so repair can fill them; the states of those created."""
        segment_id = SegmentId(self.volume_id, pg)
        epochs = Epochs(catch_up.volume_epoch, layout.membership_epoch)
        created = {}
        for node in nodes:
            client = self._clients[node]
            try:
                await self._call(
                    client.set_membership(
                        segment_id,
                        epochs,
                        layout.first_page,
                        layout.page_count,
                        layout.members,
                        timeout_s=self._timeout_s,
                    )
                )
                created[node] = await self._call(
                    client.set_epoch(
                        segment_id, epochs, truncate=catch_up.truncation, timeout_s=self._timeout_s
                    )
                )
            except BorealisError as error:
                log.warning("could not create a missing segment", pg=pg, node=node, error=error)
        return created

    # -- repair --------------------------------------------------------------------------

    async def _repair(
        self, pg: PgIndex, by_node: Mapping[str, SegmentMeta], epochs: Epochs, last: Lsn
    ) -> list[str]:
        """Copies records to the PG's segments until a write quorum is complete up to
        `last` (its last record at or below VDL); the segments completed."""
        if last == LSN_NONE:
            return []
        complete = [node for node, meta in by_node.items() if meta.scl >= last]
        if len(complete) >= WRITE_QUORUM:
            return []
        lagging = sorted(
            (node for node in by_node if node not in complete),
            key=lambda node: by_node[node].scl,
            reverse=True,
        )
        targets = {node: Lsn(by_node[node].scl) for node in lagging[: WRITE_QUORUM - len(complete)]}
        if not targets:
            log.warning(
                "PG short of a write quorum up to VDL and no segment to repair; writes wait "
                "for a segment to return",
                pg=pg,
                last=last,
                complete=len(complete),
            )
            return []
        # One complete segment holds everything; without one, the union does.
        sources = complete[:1] or sorted(by_node)
        scls = dict(targets)
        for source in sources:
            await self._copy(pg, source, epochs, targets, scls, last)
        repaired = sorted(node for node, scl in scls.items() if scl >= last)
        complete_count = len(complete) + len(repaired)
        log.info(
            "PG repaired",
            pg=pg,
            last=last,
            repaired=",".join(repaired) or "none",
            complete=complete_count,
        )
        if complete_count < WRITE_QUORUM:
            log.warning(
                "PG short of a write quorum up to VDL after repair; writes wait for a segment",
                pg=pg,
                last=last,
                complete=complete_count,
                scls={node: scl for node, scl in scls.items()},
            )
        return repaired

    async def _copy(
        self,
        pg: PgIndex,
        source: str,
        epochs: Epochs,
        targets: Mapping[str, Lsn],
        scls: dict[str, Lsn],
        last: Lsn,
    ) -> None:
        """Streams the source's records in (lowest target SCL, last] to the targets
        (each gets those above its SCL; storage ignores what it holds). A target
        that fails is left for gossip."""
        segment_id = SegmentId(self.volume_id, pg)
        after = min(targets.values())
        failed: set[str] = set()
        for _ in range(READ_RECORDS_PAGES_MAX):
            records, more, _ = await self._call(
                self._clients[source].read_records(
                    segment_id,
                    epochs,
                    after,
                    last,
                    bytes_max=self._config.read_records_bytes_max,
                    timeout_s=self._timeout_s,
                )
            )
            if not records:
                return
            lsns = [Lsn(redo.check(data, Corruption)[1]) for data in records]
            for node, scl_start in targets.items():
                if node == source or node in failed or scls[node] >= last:
                    continue
                wanted = [data for lsn, data in zip(lsns, records, strict=True) if lsn > scl_start]
                try:
                    scls[node] = await self._append(segment_id, node, epochs, wanted, scls[node])
                except BorealisError as error:
                    log.warning("repair append failed", pg=pg, node=node, error=error)
                    failed.add(node)
            after = lsns[-1]
            if not more:
                return
        raise Unavailable("ReadRecords kept saying `more`", pg=pg, node=source)

    async def _append(
        self, segment_id: SegmentId, node: str, epochs: Epochs, records: list[bytes], scl: Lsn
    ) -> Lsn:
        for start in range(0, len(records), REPAIR_BATCH_RECORDS_MAX):
            batch = records[start : start + REPAIR_BATCH_RECORDS_MAX]
            ack = await self._call(
                self._clients[node].append(segment_id, epochs, batch, timeout_s=self._timeout_s)
            )
            self._records_repaired += ack.records_new
            scl = Lsn(max(scl, ack.scl))
        return scl
