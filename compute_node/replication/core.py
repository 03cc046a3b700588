"""The sans-IO parts of replication: per-PG LSN history, MTR buffering, subscriber
queues with their resynchronisation decision, and the PGMRPL derivation.

Nothing here does I/O or reads a clock: callers pass times in. Tests drive these
classes directly (tests/unit/test_replication_core.py).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from borealis.ids import LSN_NONE, Lsn, PgIndex


class PgLsnHistory:
    """The LSNs of each PG's records, to map a read point to the PG's newest record
    at or below it.

    A segment serves reads only up to its SCL, and a segment's SCL stops at its PG's
    own last record: a read of a PG nobody wrote to lately must ask for that record's
    LSN, not for the (higher) volume-wide read point. Both ends of the stream keep
    one: the writer to send storage a per-PG PGMRPL that no read maps below, the
    reader to ask storage for pages at its read points.

    `start(lsn_last_by_pg)` records the newest record of each PG at a point the
    caller knows completely; `add(pg, lsn)` every later record, in LSN order.
    `lsn_readable(pg, read_point)` is exact for read points at or above the oldest
    point the history still covers (see `prune`).
    """

    def __init__(self, lsn_last_by_pg: Mapping[PgIndex, Lsn] | None = None) -> None:
        self._lsns: dict[PgIndex, list[Lsn]] = {}
        self.start(lsn_last_by_pg or {})

    def start(self, lsn_last_by_pg: Mapping[PgIndex, Lsn]) -> None:
        """Adds each PG's newest record at a new starting point (after a gap)."""
        for pg, lsn in lsn_last_by_pg.items():
            if lsn != LSN_NONE:
                self.add(pg, lsn)

    def add(self, pg: PgIndex, lsn: Lsn) -> None:
        lsns = self._lsns.setdefault(pg, [])
        if lsns and lsns[-1] >= lsn:
            return  # already known (a starting point repeating a streamed record)
        lsns.append(lsn)

    def lsn_readable(self, pg: PgIndex, read_point: Lsn) -> Lsn:
        """The PG's newest known record at or below `read_point` (LSN_NONE if none)."""
        lsns = self._lsns.get(pg)
        if not lsns:
            return LSN_NONE
        index = bisect.bisect_right(lsns, read_point)
        return lsns[index - 1] if index else LSN_NONE

    def lsn_last(self, pg: PgIndex) -> Lsn:
        lsns = self._lsns.get(pg)
        return lsns[-1] if lsns else LSN_NONE

    def lsn_last_by_pg(self) -> dict[PgIndex, Lsn]:
        return {pg: lsns[-1] for pg, lsns in self._lsns.items() if lsns}

    def prune(self, read_point_oldest: Lsn) -> None:
        """Forgets records no read at or above `read_point_oldest` maps to: all but
        the newest at or below it."""
        for lsns in self._lsns.values():
            index = bisect.bisect_right(lsns, read_point_oldest)
            if index > 1:
                del lsns[: index - 1]

    def __len__(self) -> int:
        return sum(len(lsns) for lsns in self._lsns.values())


class Group(NamedTuple):
    """One commit group (MTR) as the stream carries it."""

    cpl: Lsn
    commit_time_us: int
    records: tuple[bytes, ...]

    @property
    def size_bytes(self) -> int:
        return sum(len(record) for record in self.records)


class MtrBuffer:
    """A reader's commit groups waiting for the writer's VDL to cover their CPL.

    Groups arrive in CPL order, VDL advances arrive after the groups they cover.
    `ready()` hands out whole groups with CPL <= VDL, oldest first; a group above
    the VDL is never handed out (it may still be truncated by a new writer).
    Bounded in bytes: `add` returns False when the group does not fit, and the
    caller must resynchronise (drop the buffer and subscribe again).
    """

    def __init__(self, bytes_max: int, lsn_applied: Lsn = LSN_NONE) -> None:
        assert bytes_max > 0, bytes_max
        self.bytes_max = bytes_max
        self._groups: deque[Group] = deque()
        self.size_bytes = 0
        self.vdl: Lsn = lsn_applied
        # The newest CPL received (buffered or handed out).
        self.cpl_last: Lsn = lsn_applied

    def add(self, group: Group) -> bool:
        assert group.cpl > self.cpl_last, (group.cpl, self.cpl_last)
        size = group.size_bytes
        if self.size_bytes + size > self.bytes_max and self._groups:
            return False
        self._groups.append(group)
        self.size_bytes += size
        self.cpl_last = group.cpl
        return True

    def advance_vdl(self, vdl: Lsn) -> None:
        # A VDL never moves back; an older value (reordering cannot happen on one
        # stream, but a resubscription may repeat one) is ignored.
        if vdl > self.vdl:
            self.vdl = vdl

    def ready(self) -> Iterable[Group]:
        groups = self._groups
        while groups and groups[0].cpl <= self.vdl:
            group = groups.popleft()
            self.size_bytes -= group.size_bytes
            yield group

    def oldest_commit_time_us(self) -> int | None:
        """The commit time of the oldest group not handed out yet (for lag)."""
        return self._groups[0].commit_time_us if self._groups else None

    def __len__(self) -> int:
        return len(self._groups)


class Event(NamedTuple):
    """One item of a subscriber's queue: a group, a VDL advance or a new PG."""

    kind: str  # "group", "vdl" or "pg"
    value: object
    size_bytes: int


class SubscriberQueue:
    """What the writer still has to send one subscriber, bounded in bytes and events.

    The writer never waits for a subscriber: `push` on a full queue marks the
    subscriber `overflowed` (the stream ends with a resync request) and drops the
    queue, so a slow reader costs the writer nothing but memory up to the bound.
    VDL advances are coalesced: consecutive ones keep only the newest.
    """

    def __init__(self, bytes_max: int, events_max: int, event_bytes_max: int) -> None:
        assert bytes_max > 0 and events_max > 0, (bytes_max, events_max)
        assert 0 < event_bytes_max <= bytes_max, (event_bytes_max, bytes_max)
        self.bytes_max = bytes_max
        self.events_max = events_max
        # A larger event (a huge transaction) would not fit one stream message: the
        # subscriber starts over after it instead (a resync skips it).
        self.event_bytes_max = event_bytes_max
        self._events: deque[Event] = deque()
        self.size_bytes = 0
        self.overflowed = False

    def push(self, event: Event) -> None:
        if self.overflowed:
            return
        events = self._events
        if event.kind == "vdl" and events and events[-1].kind == "vdl":
            events[-1] = event
            return
        if (
            event.size_bytes > self.event_bytes_max
            or self.size_bytes + event.size_bytes > self.bytes_max
            or len(events) >= self.events_max
        ):
            self.overflowed = True
            events.clear()
            self.size_bytes = 0
            return
        events.append(event)
        self.size_bytes += event.size_bytes

    def take(self, events_max: int, bytes_max: int) -> list[Event]:
        """Up to `events_max` events (at least one if any) within about `bytes_max`."""
        taken: list[Event] = []
        size = 0
        events = self._events
        while events and len(taken) < events_max:
            if taken and size + events[0].size_bytes > bytes_max:
                break
            event = events.popleft()
            self.size_bytes -= event.size_bytes
            size += event.size_bytes
            taken.append(event)
        return taken

    def __len__(self) -> int:
        return len(self._events)


class ReadPoints:
    """The writer's view of its subscribers' read points, for the PGMRPL.

    A subscriber counts from the moment it subscribes, at the stream's starting
    point (its first read point is at or above it), until it goes away.
    """

    def __init__(self) -> None:
        self._by_subscriber: dict[int, Lsn] = {}

    def subscribed(self, subscriber_id: int, lsn_start: Lsn) -> None:
        self._by_subscriber[subscriber_id] = lsn_start

    def report(self, subscriber_id: int, read_point: Lsn) -> bool:
        """Records a reported read point; False if the subscriber is unknown."""
        if subscriber_id not in self._by_subscriber:
            return False
        self._by_subscriber[subscriber_id] = read_point
        return True

    def gone(self, subscriber_id: int) -> None:
        self._by_subscriber.pop(subscriber_id, None)

    def values(self) -> list[Lsn]:
        return list(self._by_subscriber.values())


def derive_pgmrpl(own_read_point_oldest: Lsn, reader_read_points: Iterable[Lsn], vdl: Lsn) -> Lsn:
    """PGMRPL = the lowest read point any instance still uses, and never above VDL
    (a read point is always at or below the VDL it was taken at)."""
    return Lsn(min(own_read_point_oldest, vdl, *reader_read_points))


def pgmrpl_by_pg(pgmrpl: Lsn, history: PgLsnHistory, pgs: Iterable[PgIndex]) -> dict[PgIndex, Lsn]:
    """The PGMRPL to send each PG: its newest record at or below the PGMRPL.

    Reads of a PG are mapped to its newest record at or below the read point
    (PgLsnHistory.lsn_readable), which may lie far below the volume-wide PGMRPL;
    storage refuses reads below its PGMRPL, so it must be told that record's LSN.
    A PG with no record at or below the PGMRPL gets nothing (LSN_NONE: no change).
    """
    return {pg: history.lsn_readable(pg, pgmrpl) for pg in pgs}
