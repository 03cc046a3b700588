"""The failover policy, sans-IO: who is alive, when the writer is dead, whom to promote.

The supervisor (control_plane/supervisor.py) feeds it heartbeats (from the
Heartbeat RPC) and the processes it sees, with the time passed in, and acts on its
decisions; this module does no I/O and reads no clock, so tests drive it with a fake
clock in one thread.

Liveness has two signals. Every instance sends a heartbeat every
`heartbeat_interval_ms` carrying its role and, for a reader, its read point and lag;
a writer silent for `writer_dead_after_ms` is dead (hung, stopped, partitioned from
the control plane). In a local deployment the control plane is also each process's
parent, so a writer whose process has exited is dead at once, without waiting out
the heartbeat timeout; a kill -9 is noticed within one supervision pass.

Promotion picks, among readers that are running and have sent a heartbeat as a
reader since they last started (so they follow the writer and have a read point),
the one with the lowest (tier, lag_lsns, lag_ms, name): Aurora's promotion tiers
first, then the most caught-up. Without a candidate the writer is restarted in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

WRITER = "writer"
READER = "reader"
# Instance states (the supervisor's view, as in cluster.json) in which a process is
# meant to be running; "stopped" was asked for, so a stopped writer is not dead.
STATES_SUPERVISED = frozenset({"starting", "running", "restarting", "failed", "draining"})
# Heartbeat intervals an instance is told to use are clamped to this range.
HEARTBEAT_INTERVAL_MS_MIN = 20
HEARTBEAT_INTERVAL_MS_MAX = 5_000


@dataclass(frozen=True)
class FailoverSettings:
    heartbeat_interval_ms: int = 200
    # A writer with no heartbeat for this long is declared dead.
    writer_dead_after_ms: int = 3_000
    # A reader with no heartbeat for this long is not promoted (it may be dead too).
    reader_stale_after_ms: int = 3_000

    def __post_init__(self) -> None:
        if not HEARTBEAT_INTERVAL_MS_MIN <= self.heartbeat_interval_ms <= HEARTBEAT_INTERVAL_MS_MAX:
            raise ValueError("heartbeat_interval_ms out of range")
        # Two missed heartbeats at least, so one late packet is not a failover.
        if self.writer_dead_after_ms < 2 * self.heartbeat_interval_ms:
            raise ValueError("writer_dead_after_ms must cover two heartbeat intervals")
        if self.reader_stale_after_ms < 2 * self.heartbeat_interval_ms:
            raise ValueError("reader_stale_after_ms must cover two heartbeat intervals")


@dataclass(frozen=True)
class Heartbeat:
    role: str
    pid: int
    # A writer's VDL, a reader's read point.
    lsn: int
    lag_lsns: int
    lag_ms: float


@dataclass(frozen=True)
class InstanceView:
    """What the supervisor knows of one instance from its processes and config."""

    name: str
    role: str
    tier: int
    state: str
    process_running: bool


class Action(Enum):
    NONE = "none"
    # Fence (kill) the dead writer if its process lingers, then promote `target`.
    PROMOTE = "promote"
    # No reader to promote: kill a hung writer so that supervision restarts it.
    RESTART_WRITER = "restart_writer"


@dataclass(frozen=True)
class Decision:
    action: Action
    writer: str | None = None
    target: str | None = None
    reason: str = ""


NOTHING = Decision(Action.NONE)


@dataclass
class _Seen:
    # Monotonic seconds of the last heartbeat, or of the last (re)start before one.
    at_s: float
    beat: Heartbeat | None = None


class FailoverPolicy:
    def __init__(self, settings: FailoverSettings | None = None) -> None:
        self.settings = settings or FailoverSettings()
        self._seen: dict[str, _Seen] = {}

    # -- inputs ------------------------------------------------------------------------------

    def heartbeat(self, name: str, beat: Heartbeat, now_s: float) -> int:
        """Records a heartbeat; returns the interval (ms) the instance should keep."""
        assert beat.role in (WRITER, READER), beat.role
        self._seen[name] = _Seen(now_s, beat)
        return self.settings.heartbeat_interval_ms

    def started(self, name: str, now_s: float) -> None:
        """An instance (re)started: its heartbeat clock starts now, and what it sent
        before (another role, an old read point) no longer counts."""
        self._seen[name] = _Seen(now_s)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def last_heartbeat(self, name: str) -> Heartbeat | None:
        seen = self._seen.get(name)
        return seen.beat if seen is not None else None

    # -- decisions ---------------------------------------------------------------------------

    def writer_dead_reason(self, writer: InstanceView, now_s: float) -> str | None:
        """Why the writer counts as dead now, or None while it is alive (or meant to be stopped)."""
        if writer.state not in STATES_SUPERVISED:
            return None
        if not writer.process_running:
            return "process exited"
        seen = self._seen.get(writer.name)
        if seen is None:
            # Never started under this policy: its clock starts with the first look.
            self._seen[writer.name] = _Seen(now_s)
            return None
        silent_ms = (now_s - seen.at_s) * 1000
        if silent_ms >= self.settings.writer_dead_after_ms:
            return f"no heartbeat for {silent_ms:.0f} ms"
        return None

    def candidates(self, instances: Iterable[InstanceView], now_s: float) -> list[str]:
        """Readers that may be promoted, best first."""
        ranked: list[tuple[int, int, float, str]] = []
        for view in instances:
            seen = self._seen.get(view.name)
            if (
                view.role != READER
                or view.state != "running"
                or not view.process_running
                or seen is None
                or seen.beat is None
                or seen.beat.role != READER
                or (now_s - seen.at_s) * 1000 >= self.settings.reader_stale_after_ms
            ):
                continue
            ranked.append((view.tier, seen.beat.lag_lsns, seen.beat.lag_ms, view.name))
        return [name for *_, name in sorted(ranked)]

    def decide(self, instances: Iterable[InstanceView], now_s: float) -> Decision:
        """What to do about the writer now."""
        views = list(instances)
        writers = [view for view in views if view.role == WRITER]
        if len(writers) != 1:
            # None (before the first writer) or a change in progress: nothing to decide.
            return NOTHING
        writer = writers[0]
        reason = self.writer_dead_reason(writer, now_s)
        if reason is None:
            return NOTHING
        candidates = self.candidates(views, now_s)
        if candidates:
            return Decision(Action.PROMOTE, writer.name, candidates[0], reason)
        if writer.process_running:
            return Decision(Action.RESTART_WRITER, writer.name, None, reason)
        # Exited with no reader to promote: the supervisor's restart handles it.
        return NOTHING

    def planned_target(
        self, instances: Iterable[InstanceView], now_s: float, target: str = ""
    ) -> str | None:
        """The reader a planned switchover promotes: `target` if it may be, else the best."""
        candidates = self.candidates(instances, now_s)
        if target:
            return target if target in candidates else None
        return candidates[0] if candidates else None
