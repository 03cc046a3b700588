"""Reader target tracking (control_plane/reader_scaling.py) with a fake clock: a
load step scales out within the reaction time, scale-in is one reader at a time
after its cooldowns, the band keeps the count from flapping, and bounds hold."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from control_plane.reader_scaling import (
    BOUNDS,
    HOLD,
    IN,
    OUT,
    ReaderDecision,
    ReaderPolicy,
    ReaderSettings,
)

pytestmark = pytest.mark.unit

SETTINGS = ReaderSettings(
    min_readers=1,
    max_readers=4,
    target=4.0,
    scale_out_cooldown_s=10,
    scale_in_cooldown_s=20,
    scale_in_after_s=10,
)


def replay(
    clients: Callable[[int], int], seconds: int, settings: ReaderSettings = SETTINGS
) -> tuple[list[int], list[ReaderDecision]]:
    """Connections offered each second; changes take effect at once."""
    policy = ReaderPolicy(settings)
    readers = settings.min_readers
    timeline, changes = [], []
    for second in range(seconds):
        decision = policy.observe(float(clients(second)), readers, float(second))
        if decision.changes:
            policy.applied(float(second))
            changes.append(decision)
            readers = decision.target_readers
        timeline.append(readers)
    return timeline, changes


def test_a_step_from_1_to_16_clients_scales_out_at_once_to_what_is_needed() -> None:
    timeline, changes = replay(lambda s: 1 if s < 10 else 16, 30)
    out = changes[0]
    assert out.kind == OUT
    assert out.time_s - 10 <= 2  # two samples above the target
    assert out.target_readers == 4  # ceil(16 / 4)
    assert out.inputs["per_reader"] == 16.0
    assert timeline[-1] == 4
    assert len(changes) == 1


def test_scale_out_is_capped_at_max_readers() -> None:
    settings = ReaderSettings(min_readers=1, max_readers=3, target=4.0)
    timeline, _ = replay(lambda s: 40, 60, settings)
    assert max(timeline) == 3


def test_after_the_load_stops_readers_go_back_to_the_minimum_one_at_a_time() -> None:
    timeline, changes = replay(lambda s: 16 if s < 20 else 0, 200)
    ins = [d for d in changes if d.kind == IN]
    assert [d.target_readers for d in ins] == [3, 2, 1]
    # Each after the scale-in cooldown since the previous change.
    assert ins[0].time_s - 20 >= SETTINGS.scale_in_after_s
    assert all(
        b.time_s - a.time_s >= SETTINGS.scale_in_cooldown_s
        for a, b in zip(ins, ins[1:], strict=False)
    )
    assert timeline[-1] == SETTINGS.min_readers


def test_a_load_just_under_the_target_does_not_flap() -> None:
    """15 connections with 4 readers is 3.75 per reader (under the target); 3
    readers would be 5 (over it): the count stays at 4."""
    policy = ReaderPolicy(SETTINGS)
    for second in range(200):
        decision = policy.observe(15.0, 4, float(second))
        assert decision.kind == HOLD, decision


def test_sawtooth_load_does_not_scale_in_during_short_lulls() -> None:
    _, changes = replay(lambda s: 16 if (s // 5) % 2 == 0 else 0, 200)
    assert [d for d in changes if d.kind == OUT]
    # Lulls of 5 s are shorter than scale_in_after_s (10 s).
    assert not [d for d in changes if d.kind == IN]


def test_scale_out_cooldown_spaces_scale_outs() -> None:
    clients = [4] * 5 + [8] * 5 + [12] * 5 + [16] * 20
    _, changes = replay(lambda s: clients[s], len(clients))
    outs = [d for d in changes if d.kind == OUT]
    assert len(outs) >= 2
    assert all(
        b.time_s - a.time_s >= SETTINGS.scale_out_cooldown_s
        for a, b in zip(outs, outs[1:], strict=False)
    )


def test_bounds_below_min_adds_at_once_and_above_max_removes_one() -> None:
    policy = ReaderPolicy(SETTINGS)
    low = policy.observe(0.0, 0, 0.0)
    assert (low.kind, low.target_readers) == (BOUNDS, 1)
    high = policy.observe(0.0, 6, 1.0)
    assert (high.kind, high.target_readers) == (BOUNDS, 5)


def test_cpu_metric_tracks_cores_per_reader() -> None:
    settings = ReaderSettings(min_readers=0, max_readers=3, metric="cpu", target=0.5)
    policy = ReaderPolicy(settings)
    policy.observe(1.2, 1, 0.0)
    decision = policy.observe(1.2, 1, 1.0)
    assert (decision.kind, decision.target_readers) == (OUT, 3)


@pytest.mark.parametrize(
    "changes",
    [
        {"min_readers": 3, "max_readers": 2},
        {"min_readers": -1},
        {"metric": "memory"},
        {"target": 0.0},
        {"max_readers": 100},
    ],
)
def test_bad_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ReaderSettings(**changes)  # type: ignore[arg-type]
