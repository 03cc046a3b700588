"""Reader auto-scaling, sans-IO: how many readers the cluster should run.

Target tracking, as AWS Application Auto Scaling does it: keep a metric per reader
near a target by changing the reader count, between `min_readers` and `max_readers`.
The metric is one of
- "connections" (the default): client connections on the readers (their Signals
  `connections`, summed) per reader. With no reader running, the reader endpoint's
  sessions are on the writer (the router falls back to it), so the writer's
  connections are counted instead.
- "cpu": the readers' CPU use (Signals `cpu_fraction`, 1.0 = one core) per reader;
  with no reader running, the writer's.

The control plane's scaling loop (control_plane/scaling.py) feeds `observe` once a
second with the load total over the readers and the readers running; this module
reads no clock and does no I/O.

The rule, with its default numbers (target 4 connections per reader):
- Out: when total / readers > target on 2 samples in a row (2 s), go to
  ceil(total / target) readers at once (at most max), unless a change finished less
  than `scale_out_cooldown_s` (10 s) ago.
- In: when total / (readers - 1) <= 0.8 x target (one reader fewer would still be
  under the target, with a 20% margin: the hysteresis band that keeps a count from
  flapping between two values) on every sample for `scale_in_after_s` (10 s), and
  no change finished in the last `scale_in_cooldown_s` (60 s), remove one reader.
  Scale-in goes one reader at a time, slowly; scale-out jumps to the count needed.
- Bounds: fewer readers than min (one failed, the bounds changed) adds up to min at
  once; more than max removes one at a time, without waiting for a cooldown.

A decision's `target_readers` is the count wanted; the loop adds or removes readers
to reach it and calls `applied` when done (the cooldowns start then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONNECTIONS = "connections"
CPU = "cpu"
METRICS = (CONNECTIONS, CPU)
READERS_CEILING = 15

OUT = "scale_out"
IN = "scale_in"
BOUNDS = "bounds"
HOLD = "hold"


def check_reader_bounds(min_readers: int, max_readers: int) -> None:
    """Raises ValueError for reader bounds a cluster cannot have."""
    if not 0 <= min_readers <= max_readers <= READERS_CEILING:
        raise ValueError(
            f"need 0 <= min readers <= max readers <= {READERS_CEILING}:"
            f" {min_readers}, {max_readers}"
        )


@dataclass(frozen=True)
class ReaderSettings:
    min_readers: int = 0
    max_readers: int = 2
    metric: str = CONNECTIONS
    # Per reader: connections, or a fraction of a core for "cpu".
    target: float = 4.0
    # Scale in only when one reader fewer would be at most this fraction of the target.
    scale_in_fraction: float = 0.8
    out_samples: int = 2
    scale_in_after_s: float = 10.0
    scale_out_cooldown_s: float = 10.0
    scale_in_cooldown_s: float = 60.0

    def __post_init__(self) -> None:
        check_reader_bounds(self.min_readers, self.max_readers)
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}: {self.metric}")
        if self.target <= 0 or not 0 < self.scale_in_fraction < 1:
            raise ValueError("target must be positive and scale_in_fraction in (0, 1)")
        if self.out_samples < 1:
            raise ValueError("out_samples must be at least 1")
        for name in ("scale_in_after_s", "scale_out_cooldown_s", "scale_in_cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class ReaderDecision:
    time_s: float
    kind: str  # OUT, IN, BOUNDS or HOLD
    readers: int
    target_readers: int
    reason: str
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.target_readers != self.readers


class ReaderPolicy:
    def __init__(self, settings: ReaderSettings | None = None) -> None:
        self.settings = settings or ReaderSettings()
        self._high_samples = 0
        self._low_since_s: float | None = None
        self._changed_at_s: float | None = None

    def reconfigure(self, settings: ReaderSettings) -> None:
        self.settings = settings

    def applied(self, now_s: float) -> None:
        """A change of the reader count finished (or gave up): cooldowns start now."""
        self._changed_at_s = now_s
        self._high_samples = 0
        self._low_since_s = None

    def observe(self, total: float, readers: int, now_s: float) -> ReaderDecision:
        """`total`: the metric summed over the running readers (or the writer's, with
        none); `readers`: the readers running and taking connections."""
        assert readers >= 0 and total >= 0, (readers, total)
        settings = self.settings
        per_reader = total / max(1, readers)
        inputs = {
            "metric_total": round(total, 4),
            "per_reader": round(per_reader, 4),
            "target": settings.target,
            "readers": readers,
        }
        label = f"{settings.metric} per reader {per_reader:.2f} (target {settings.target:g})"
        if readers < settings.min_readers or readers > settings.max_readers:
            wanted = settings.min_readers if readers < settings.min_readers else readers - 1
            reason = f"{readers} readers outside [{settings.min_readers}, {settings.max_readers}]"
            return ReaderDecision(now_s, BOUNDS, readers, wanted, reason, inputs)
        high = per_reader > settings.target
        self._high_samples = self._high_samples + 1 if high else 0
        low = (
            readers > settings.min_readers
            and (total / (readers - 1) if readers > 1 else total)
            <= settings.scale_in_fraction * settings.target
        )
        if not low:
            self._low_since_s = None
        elif self._low_since_s is None:
            self._low_since_s = now_s
        if high:
            return self._out(now_s, readers, total, label, inputs)
        if low:
            return self._in(now_s, readers, label, inputs)
        return ReaderDecision(now_s, HOLD, readers, readers, label, inputs)

    def _cooling(self, now_s: float, cooldown_s: float) -> bool:
        return self._changed_at_s is not None and now_s - self._changed_at_s < cooldown_s

    def _out(
        self, now_s: float, readers: int, total: float, label: str, inputs: dict[str, float]
    ) -> ReaderDecision:
        settings = self.settings
        wanted = min(settings.max_readers, max(readers + 1, math.ceil(total / settings.target)))
        hold = None
        if readers >= settings.max_readers:
            hold = f"at max readers: {label}"
        elif self._high_samples < settings.out_samples:
            hold = f"high {self._high_samples}/{settings.out_samples}: {label}"
        elif self._cooling(now_s, settings.scale_out_cooldown_s):
            hold = f"scale-out cooldown: {label}"
        if hold is not None:
            return ReaderDecision(now_s, HOLD, readers, readers, hold, inputs)
        return ReaderDecision(now_s, OUT, readers, wanted, label, inputs)

    def _in(
        self, now_s: float, readers: int, label: str, inputs: dict[str, float]
    ) -> ReaderDecision:
        settings = self.settings
        assert self._low_since_s is not None
        since_s = self._low_since_s
        if self._changed_at_s is not None:
            since_s = max(since_s, self._changed_at_s)
        low_for_s = now_s - since_s
        if low_for_s < settings.scale_in_after_s or self._cooling(
            now_s, settings.scale_in_cooldown_s
        ):
            reason = f"low for {low_for_s:.0f}/{settings.scale_in_after_s:g} s: {label}"
            return ReaderDecision(now_s, HOLD, readers, readers, reason, inputs)
        reason = f"low for {low_for_s:.0f} s: {label}"
        return ReaderDecision(now_s, IN, readers, readers - 1, reason, inputs)
