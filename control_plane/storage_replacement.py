"""The storage node replacement policy, sans-IO: which storage node to replace, and when.

The supervisor (control_plane/supervisor.py) looks at every storage node every
`check_interval_s` (is its process running, does its gRPC health say SERVING) and
feeds each observation here with the time; this module does no I/O and reads no
clock, so tests drive it with a fake clock in one thread.

A node is down from the first observation that finds it down until one finds it up
again; coming back resets its timer. A node down for `replace_after_s` is replaced,
as a managed service replaces a host it has lost rather than waiting for it
forever: the data is safe on the other five segments of each PG, but a second
loss in the same PG would leave it one failure from losing its write quorum.

Decisions: one replacement at a time (a membership change of every PG on the node
is in flight, and two at once would need quorums over three member sets); the node
down longest goes first; never while the writer is down (the writer moves the
segments; the decision waits and is taken again once it serves); after a failed
attempt the node waits `retry_after_s` before the next (the writer's call is
idempotent, so the next attempt continues the same change).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

REPLACE_AFTER_S_DEFAULT = 600.0


@dataclass(frozen=True)
class ReplacementSettings:
    # A storage node down this long is replaced; 0 turns automatic replacement off.
    replace_after_s: float = REPLACE_AFTER_S_DEFAULT
    # A failed automatic replacement of a node is tried again after this long.
    retry_after_s: float = 30.0
    # How often the supervisor looks at every storage node.
    check_interval_s: float = 1.0
    # How long one replacement waits for the new segments to hydrate and settle.
    replace_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.replace_after_s < 0:
            raise ValueError("replace_after_s must not be negative (0: never)")
        for name in ("retry_after_s", "check_interval_s", "replace_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        # A node must be seen down on two checks at least before it is replaced.
        if 0 < self.replace_after_s < 2 * self.check_interval_s:
            raise ValueError("replace_after_s must cover two check intervals")

    @property
    def enabled(self) -> bool:
        return self.replace_after_s > 0


class Action(Enum):
    NONE = "none"
    REPLACE = "replace"
    # A node is due, but there is no writer to move its segments: try again later.
    WAIT_FOR_WRITER = "wait_for_writer"


class Change(Enum):
    """What an observation changed, for the supervisor to log."""

    NONE = "none"
    WENT_DOWN = "went_down"
    CAME_BACK = "came_back"


@dataclass(frozen=True)
class Decision:
    action: Action
    node: str | None = None
    down_for_s: float = 0.0
    reason: str = ""


NOTHING = Decision(Action.NONE)


class StorageReplacementPolicy:
    def __init__(self, settings: ReplacementSettings | None = None) -> None:
        self.settings = settings or ReplacementSettings()
        # Node -> monotonic seconds of the first observation that found it down.
        self._down_since_s: dict[str, float] = {}
        # Node -> no automatic attempt before this time (after a failed one).
        self._retry_at_s: dict[str, float] = {}
        # The node being replaced now (by a decision here or by an operator).
        self.in_progress: str | None = None

    # -- inputs ------------------------------------------------------------------------------

    def observe(self, node: str, up: bool, now_s: float) -> Change:
        """Records one look at a node; what it changed."""
        if up:
            if self._down_since_s.pop(node, None) is None:
                return Change.NONE
            # Back before it was replaced: a later loss starts a new timer and no
            # earlier failure holds the next attempt back.
            self._retry_at_s.pop(node, None)
            return Change.CAME_BACK
        if node in self._down_since_s:
            return Change.NONE
        self._down_since_s[node] = now_s
        return Change.WENT_DOWN

    def forget(self, node: str) -> None:
        """The node left the cluster (replaced or removed)."""
        self._down_since_s.pop(node, None)
        self._retry_at_s.pop(node, None)

    def retain(self, nodes: set[str]) -> None:
        """Forgets every node not in `nodes` (the cluster's storage nodes now)."""
        for node in set(self._down_since_s) | set(self._retry_at_s):
            if node not in nodes:
                self.forget(node)

    def started(self, node: str) -> None:
        """A replacement of `node` began (decided here or asked for by an operator)."""
        assert self.in_progress is None, f"{self.in_progress} is being replaced already"
        self.in_progress = node

    def finished(self, node: str, succeeded: bool, now_s: float) -> None:
        assert self.in_progress == node, (self.in_progress, node)
        self.in_progress = None
        if succeeded:
            self.forget(node)
        else:
            self._retry_at_s[node] = now_s + self.settings.retry_after_s

    def down_for_s(self, node: str, now_s: float) -> float | None:
        """How long the node has been down, or None while it is up (or never seen)."""
        since_s = self._down_since_s.get(node)
        return None if since_s is None else now_s - since_s

    # -- decisions ---------------------------------------------------------------------------

    def decide(self, now_s: float, writer_available: bool) -> Decision:
        """Whether to replace a node now, and which."""
        if not self.settings.enabled or self.in_progress is not None:
            return NOTHING
        limit_s = self.settings.replace_after_s
        due = sorted(
            (since_s, node)
            for node, since_s in self._down_since_s.items()
            if now_s - since_s >= limit_s and now_s >= self._retry_at_s.get(node, now_s)
        )
        if not due:
            return NOTHING
        since_s, node = due[0]
        down_for_s = now_s - since_s
        reason = f"down for {down_for_s:.1f} s (replace after {limit_s:g} s)"
        if not writer_available:
            return Decision(Action.WAIT_FOR_WRITER, node, down_for_s, reason + "; no writer")
        return Decision(Action.REPLACE, node, down_for_s, reason)
