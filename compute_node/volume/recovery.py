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
from compute_node.volume.topology import WRITE_QUORUM
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
    """Reopening a volume (a first version of DESIGN.md section 8).

    1. ListSegments on every storage node: the volume's PGs, their members and
       epochs. A segment is usable if its node answers and it is at the volume's
       highest volume epoch and its PG's membership epoch. Every PG needs a
       write quorum of usable segments.
    2. Fence: SetEpoch(volume epoch + 1) on the usable segments (a write quorum
       of each PG must accept). From here an older writer's appends are refused,
       so what the segments hold no longer changes under the reads below.
    3. ListSegments again. Per PG, the 4th highest SCL of the usable segments
       (PGCL) bounds what is surely on a write quorum. The floor is the lowest
       PGCL over the PGs, raised to (highest LSN held anywhere - LAL): an old
       writer never ran more than the LAL ahead of its VDL (or of its own
       allocation floor, the end of an earlier truncation range, below which
       everything surviving was at or below an earlier VDL).
    4. ReadRecords above the floor on every usable segment; per record, the
       segments that hold it. `durable_point` walks the volume's backlink chain
       up from the floor: VCL is where a record is missing or held by too few
       segments, VDL the last CPL before it. "Too few" is fewer than 4 when all 6
       are usable; with r usable, fewer than r - 2, since a record that reached 4
       segments is on at least r - 2 of those that answer (records kept that way
       are on fewer than 4 segments until gossip copies them to their peers).
       If no CPL is above the floor, windows below it are read (doubling) until
       one is found.
    5. The page count: the newest SIZE record (PG 0) at or below VDL, searched
       the same way. The last record of every PG at or below VDL, exactly, for
       the new writer's backlinks.
    6. Truncate: SetEpoch again (same new epoch) with the range
       (VDL, max(VDL, earlier truncation end) + LAL + margin], covering anything
       an old writer may have allocated; new LSNs start above it.

    A PG with fewer usable segments than a write quorum fails the open, unless it
    holds no record at all (its creation reached too few nodes): it is kept with
    the segments it has. Members whose node answered without the segment are
    created by the shipper before it first sends them records; gossip fills them.

    Not handled yet: a segment that is unreachable or refuses at open keeps its
    old epoch and is left out (the shipper retries it, and it refuses with
    StaleEpoch) until a repair (a membership change) replaces it; segments at an
    older volume epoch (they missed an earlier recovery) are likewise left out;
    PGs in a membership change (segments with different membership epochs) open
    only if a write quorum agrees on the newest; a node failing mid-recovery fails
    the open (retry it).
    Memory is one small object per record above the floor (bounded by the LAL).
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
        # The nodes that answered the last ListSegments.
        self._answered: set[str] = set()

    async def run(self) -> RecoveredVolume:
        metas = await self._list()
        if not metas:
            raise NotFound("no storage node holds a segment of the volume", volume=self.volume_id)
        epoch_old = max(
            meta.volume_epoch for by_node in metas.values() for meta in by_node.values()
        )
        epoch_new = Epoch(epoch_old + 1)
        layouts = {pg: self._layout(pg, by_node, epoch_old) for pg, by_node in metas.items()}
        pages_per_pg = self._pages_per_pg(layouts)
        usable = {
            pg: [
                node
                for node, meta in by_node.items()
                if meta.volume_epoch == epoch_old
                and meta.membership_epoch == layouts[pg].membership_epoch
                and node in {member.node for member in layouts[pg].members}
            ]
            for pg, by_node in metas.items()
        }
        for pg, by_node in metas.items():
            for node in sorted(set(by_node) - set(usable[pg])):
                self._exclude(pg, node, "older epoch or not a member")
        # A PG whose creation reached fewer than a write quorum of nodes (the writer
        # failed or stopped in admit) holds no record: it opens with the segments it
        # has, and the shipper creates the others.
        partial = {
            pg
            for pg, by_node in metas.items()
            if len(usable[pg]) < WRITE_QUORUM
            and all(meta.highest_lsn == LSN_NONE for meta in by_node.values())
        }
        self._require_quorum(usable, "usable segments", partial)

        # Fence, then look again: nothing an old writer sends lands after this.
        usable = await self._set_epoch(layouts, usable, epoch_new, None, partial)
        metas = await self._list()
        states: dict[PgIndex, dict[str, SegmentMeta]] = {}
        for pg in layouts:
            states[pg] = {}
            for node in usable[pg]:
                meta = metas.get(pg, {}).get(node)
                if meta is None or meta.volume_epoch != epoch_new:
                    self._exclude(pg, node, "not at the new epoch after fencing")
                    continue
                states[pg][node] = meta
        self._require_quorum(
            {pg: list(by_node) for pg, by_node in states.items()}, "fenced", partial
        )
        missing_by_pg = {
            pg: [
                member.node
                for member in layout.members
                if member.node in self._answered and member.node not in metas.get(pg, {})
            ]
            for pg, layout in layouts.items()
        }

        lal = self._config.lal_lsns
        top = max(
            (meta.highest_lsn for by_node in states.values() for meta in by_node.values()),
            default=LSN_NONE,
        )
        pgcls = {
            pg: Lsn(sorted((meta.scl for meta in by_node.values()), reverse=True)[WRITE_QUORUM - 1])
            if len(by_node) >= WRITE_QUORUM
            else LSN_NONE
            for pg, by_node in states.items()
        }
        floor = Lsn(max(min(pgcls.values()), top - lal, 0))
        holders_needed = {pg: max(1, len(by_node) - 2) for pg, by_node in states.items()}
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
        truncated_before = max(
            (meta.truncated_up_to_lsn for by_node in states.values() for meta in by_node.values()),
            default=LSN_NONE,
        )
        truncate_up_to = Lsn(
            max(
                max(vdl, truncated_before) + lal + self._config.truncation_margin_lsns,
                top,
            )
        )
        await self._set_epoch(
            layouts,
            {pg: list(by_node) for pg, by_node in states.items()},
            epoch_new,
            (vdl, truncate_up_to),
            partial,
        )
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
        )

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
            list(newest[0].members),
            Epoch(membership_epoch),
            newest[0].first_page,
            newest[0].page_count,
        )
        for meta in newest:
            if (meta.members, meta.first_page, meta.page_count) != (
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
        usable: Mapping[PgIndex, Sequence[str]],
        what: str,
        exempt: Collection[PgIndex] = (),
    ) -> None:
        short = {
            pg: len(nodes)
            for pg, nodes in usable.items()
            if len(nodes) < WRITE_QUORUM and pg not in exempt
        }
        if short:
            raise Unavailable(
                f"cannot open the volume: PGs without a write quorum of {what}",
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
        exempt: Collection[PgIndex] = (),
    ) -> dict[PgIndex, list[str]]:
        """SetEpoch on the given segments (retried a few times); the nodes that
        accepted, per PG. Each PG but the exempt ones needs a write quorum."""
        accepted: dict[PgIndex, list[str]] = {pg: [] for pg in nodes_by_pg}
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
                    accepted[pg].append(node)
            pending = failed
        for pg, node in pending:
            self._exclude(pg, node, f"SetEpoch refused: {errors[(pg, node)]}")
        self._require_quorum(accepted, "segments accepting the new epoch", exempt)
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
            # Every record of the PG is at or below covered_after (<= VDL).
            return Lsn(max((meta.highest_lsn for meta in states[pg].values()), default=LSN_NONE))
        prev = known[min(mine)].prev_lsn_pg
        if prev <= vdl:
            return prev
        # The PG's first record above VDL follows one missing everywhere: look below.
        found, _ = await self._scan_back(
            {pg: states[pg]}, epochs, covered_after, known, lambda record: record.pg == pg
        )
        return found if found is not None else LSN_NONE
