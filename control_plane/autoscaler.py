"""The capacity policy of one instance, sans-IO: when to change its BCU, and to what.

Capacity is counted in BCUs (Borealis capacity units, docs/architecture.md): 1 BCU =
128 MiB of volume buffer cache + 2 SQL reader connections, in 0.5 BCU steps, between
the cluster's min and max (defaults 0.5 and 4; never outside [0.5, 16]). A BCU also
stands for a share of CPU, `cpu_cores_per_bcu` (0.25 core by default): an instance
at B BCU is "busy" when it uses more than 70% of B x 0.25 cores.

The control plane's scaling loop (control_plane/scaling.py) feeds `observe` once a
second per instance with the instance's Signals (Capacity.GetCapacity) and the time;
this module reads no clock and does no I/O, so tests replay load traces through it.

The rule, with its default numbers:
- Up, quickly: a sample is "hot" when any of
    - CPU over 70% of the capacity's share (cpu_fraction > 0.7 x B x 0.25),
    - cache hit ratio under 0.95 with evictions during the last second,
    - queued statements > 0.
  Two hot samples in a row (2 s) step up by max(0.5, 50% of B), rounded up to the
  0.5 grid and clamped to max. A single spike never scales.
- Down, slowly: a sample is "cold" when the CPU is under 30% of the share, nothing
  is queued, the cache is not evicting under a low hit ratio, and the CPU would
  still be under 70% of the share one step down (the hysteresis band: the step
  down cannot make the next sample hot). 30 s of cold samples in a row step down by
  0.5. Any sample that is not cold restarts the 30 s.
- Cooldowns after every change: no step up for 5 s (the new cache and workers take
  a moment to show in the signals), no step down for 30 s. A step down also needs
  its 30 s of cold samples counted after the last change.
- Bounds: a capacity off the grid or outside [min, max] (the bounds were changed,
  or an instance started elsewhere) is corrected at once to the nearest grid value
  inside them.

Idle (what a pause would use): an instance is idle while it finishes no statement
and runs none; `Decision.idle_for_s` says for how long, `is_idle` against a limit.

Every decision is a record with its inputs and a reason, whether it changes
anything or not; the loop keeps those that change something.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BCU_STEP = 0.5
BCU_FLOOR = 0.5
BCU_CEILING = 16.0
MIN_BCU_DEFAULT = 0.5
MAX_BCU_DEFAULT = 4.0

UP = "up"
DOWN = "down"
BOUNDS = "bounds"
HOLD = "hold"


def on_grid(bcu: float) -> bool:
    return math.isclose(bcu / BCU_STEP, round(bcu / BCU_STEP), abs_tol=1e-9)


def snap(bcu: float, low_bcu: float, high_bcu: float) -> float:
    """The grid value nearest `bcu` inside [low, high] (both on the grid)."""
    nearest = round(bcu / BCU_STEP) * BCU_STEP
    return min(high_bcu, max(low_bcu, nearest))


def check_bounds(min_bcu: float, max_bcu: float) -> None:
    """Raises ValueError for bounds a cluster cannot have."""
    for name, value in (("min capacity", min_bcu), ("max capacity", max_bcu)):
        if not on_grid(value) or not BCU_FLOOR <= value <= BCU_CEILING:
            raise ValueError(
                f"{name} must be a multiple of {BCU_STEP} in [{BCU_FLOOR}, {BCU_CEILING}]: {value}"
            )
    if min_bcu > max_bcu:
        raise ValueError(f"min capacity {min_bcu} is above max capacity {max_bcu}")


@dataclass(frozen=True)
class CapacitySettings:
    min_bcu: float = MIN_BCU_DEFAULT
    max_bcu: float = MAX_BCU_DEFAULT
    # The CPU one BCU stands for (1.0 = one core).
    cpu_cores_per_bcu: float = 0.25
    # Hot above this share of the capacity's CPU, cold below the low one.
    cpu_high_fraction: float = 0.70
    cpu_low_fraction: float = 0.30
    # A hit ratio under this, with evictions, means the working set does not fit.
    cache_hit_ratio_low: float = 0.95
    # Hot samples in a row before a step up (one a second: 2 s).
    up_samples: int = 2
    # A step up adds this fraction of the capacity (at least one grid step).
    up_step_fraction: float = 0.5
    # Cold for this long before a step down of one grid step.
    down_after_s: float = 30.0
    up_cooldown_s: float = 5.0
    down_cooldown_s: float = 30.0
    # No statement for this long: idle (a pause would stop the instance).
    idle_after_s: float = 300.0

    def __post_init__(self) -> None:
        check_bounds(self.min_bcu, self.max_bcu)
        if not 0 < self.cpu_low_fraction < self.cpu_high_fraction <= 1:
            raise ValueError("need 0 < cpu_low_fraction < cpu_high_fraction <= 1")
        if self.cpu_cores_per_bcu <= 0 or self.up_step_fraction <= 0:
            raise ValueError("cpu_cores_per_bcu and up_step_fraction must be positive")
        if self.up_samples < 1:
            raise ValueError("up_samples must be at least 1")
        for name in ("down_after_s", "up_cooldown_s", "down_cooldown_s", "idle_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class Sample:
    """One second of an instance's signals (proto/capacity.proto Signals) and its BCU."""

    bcu: float
    cpu_fraction: float = 0.0
    cache_hit_ratio: float = 1.0
    cache_evictions_total: int = 0
    active_sessions: int = 0
    queued_statements: int = 0
    connections: int = 0
    statements_total: int = 0


@dataclass(frozen=True)
class Decision:
    time_s: float
    kind: str  # UP, DOWN, BOUNDS or HOLD
    from_bcu: float
    to_bcu: float
    reason: str
    # What the decision was taken from (the sample and the derived figures).
    inputs: dict[str, float] = field(default_factory=dict)
    idle_for_s: float = 0.0

    @property
    def changes(self) -> bool:
        return self.to_bcu != self.from_bcu


class CapacityPolicy:
    """One instance's policy: feed `observe` every second; tell `applied` once a
    changing decision took effect (only then do the cooldowns start)."""

    def __init__(self, settings: CapacitySettings | None = None) -> None:
        self.settings = settings or CapacitySettings()
        self._hot_samples = 0
        self._cold_since_s: float | None = None
        self._changed_at_s: float | None = None
        self._evictions_last: int | None = None
        self._statements_last: int | None = None
        self._busy_last_s: float | None = None

    def reconfigure(self, settings: CapacitySettings) -> None:
        """New bounds or thresholds; the counts so far are kept."""
        self.settings = settings

    def applied(self, decision: Decision, now_s: float) -> None:
        """The decision's capacity is in effect: cooldowns and the cold timer restart."""
        assert decision.changes, decision
        self._changed_at_s = now_s
        self._hot_samples = 0
        self._cold_since_s = None

    def observe(self, sample: Sample, now_s: float) -> Decision:
        inputs = self._inputs(sample)
        idle_for_s = self._idle_for_s(sample, now_s)
        bcu = sample.bcu
        settings = self.settings
        bounded = snap(bcu, settings.min_bcu, settings.max_bcu)
        if not on_grid(bcu) or bounded != bcu:
            reason = f"{bcu:g} BCU is off the grid or outside [{settings.min_bcu:g}, {settings.max_bcu:g}]"
            return Decision(now_s, BOUNDS, bcu, bounded, reason, inputs, idle_for_s)
        hot = self._hot_reasons(sample, inputs)
        self._hot_samples = self._hot_samples + 1 if hot else 0
        cold = not hot and self._cold(sample, inputs)
        if not cold:
            self._cold_since_s = None
        elif self._cold_since_s is None:
            self._cold_since_s = now_s
        if hot:
            return self._up(now_s, bcu, hot, inputs, idle_for_s)
        if cold:
            return self._down(now_s, bcu, inputs, idle_for_s)
        return Decision(now_s, HOLD, bcu, bcu, "within the band", inputs, idle_for_s)

    # -- leaves ------------------------------------------------------------------------------

    def _inputs(self, sample: Sample) -> dict[str, float]:
        evictions_last = self._evictions_last
        self._evictions_last = sample.cache_evictions_total
        evictions = (
            0 if evictions_last is None else max(0, sample.cache_evictions_total - evictions_last)
        )
        share = sample.bcu * self.settings.cpu_cores_per_bcu
        return {
            "bcu": sample.bcu,
            "cpu_fraction": round(sample.cpu_fraction, 4),
            "cpu_share_used": round(sample.cpu_fraction / share, 4) if share > 0 else 0.0,
            "cache_hit_ratio": round(sample.cache_hit_ratio, 4),
            "cache_evictions": evictions,
            "active_sessions": sample.active_sessions,
            "queued_statements": sample.queued_statements,
            "connections": sample.connections,
        }

    def _hot_reasons(self, sample: Sample, inputs: dict[str, float]) -> list[str]:
        settings = self.settings
        reasons = []
        if inputs["cpu_share_used"] > settings.cpu_high_fraction:
            reasons.append(
                f"CPU {inputs['cpu_share_used']:.0%} of its share > {settings.cpu_high_fraction:.0%}"
            )
        if sample.cache_hit_ratio < settings.cache_hit_ratio_low and inputs["cache_evictions"] > 0:
            reasons.append(
                f"cache hit ratio {sample.cache_hit_ratio:.3f} < {settings.cache_hit_ratio_low}"
                f" with {inputs['cache_evictions']:g} evictions"
            )
        if sample.queued_statements > 0:
            reasons.append(f"{sample.queued_statements} statements queued")
        return reasons

    def _cold(self, sample: Sample, inputs: dict[str, float]) -> bool:
        settings = self.settings
        lower_bcu = sample.bcu - BCU_STEP
        if lower_bcu < settings.min_bcu:
            return False
        lower_share = lower_bcu * settings.cpu_cores_per_bcu
        return (
            inputs["cpu_share_used"] < settings.cpu_low_fraction
            and sample.cpu_fraction < settings.cpu_high_fraction * lower_share
            and sample.queued_statements == 0
        )

    def _cooling(self, now_s: float, cooldown_s: float) -> bool:
        return self._changed_at_s is not None and now_s - self._changed_at_s < cooldown_s

    def _up(
        self,
        now_s: float,
        bcu: float,
        reasons: list[str],
        inputs: dict[str, float],
        idle_for_s: float,
    ) -> Decision:
        settings = self.settings
        why = "; ".join(reasons)
        if bcu >= settings.max_bcu:
            return Decision(now_s, HOLD, bcu, bcu, f"at max: {why}", inputs, idle_for_s)
        if self._hot_samples < settings.up_samples:
            reason = f"hot {self._hot_samples}/{settings.up_samples}: {why}"
            return Decision(now_s, HOLD, bcu, bcu, reason, inputs, idle_for_s)
        if self._cooling(now_s, settings.up_cooldown_s):
            return Decision(now_s, HOLD, bcu, bcu, f"up cooldown: {why}", inputs, idle_for_s)
        step_bcu = max(BCU_STEP, math.ceil(bcu * settings.up_step_fraction / BCU_STEP) * BCU_STEP)
        target = min(settings.max_bcu, bcu + step_bcu)
        reason = f"{self._hot_samples} hot samples: {why}"
        return Decision(now_s, UP, bcu, target, reason, inputs, idle_for_s)

    def _down(
        self, now_s: float, bcu: float, inputs: dict[str, float], idle_for_s: float
    ) -> Decision:
        settings = self.settings
        assert self._cold_since_s is not None
        since_s = self._cold_since_s
        if self._changed_at_s is not None:
            since_s = max(since_s, self._changed_at_s)
        cold_for_s = now_s - since_s
        if cold_for_s < settings.down_after_s or self._cooling(now_s, settings.down_cooldown_s):
            reason = f"cold for {cold_for_s:.0f}/{settings.down_after_s:g} s"
            return Decision(now_s, HOLD, bcu, bcu, reason, inputs, idle_for_s)
        reason = (
            f"cold for {cold_for_s:.0f} s: CPU {inputs['cpu_share_used']:.0%} of its share"
            f" < {settings.cpu_low_fraction:.0%}, nothing queued"
        )
        return Decision(now_s, DOWN, bcu, bcu - BCU_STEP, reason, inputs, idle_for_s)

    def _idle_for_s(self, sample: Sample, now_s: float) -> float:
        """Seconds since the instance last finished or ran a statement (0 while busy)."""
        statements_last = self._statements_last
        self._statements_last = sample.statements_total
        busy = (
            statements_last is None
            or sample.statements_total != statements_last
            or sample.active_sessions > 0
            or sample.queued_statements > 0
        )
        if busy or self._busy_last_s is None:
            self._busy_last_s = now_s
        return now_s - self._busy_last_s

    def is_idle(self, decision: Decision) -> bool:
        return decision.idle_for_s >= self.settings.idle_after_s
