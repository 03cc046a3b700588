"""The failover policy (control_plane/failover.py) driven with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.failover import (
    READER,
    WRITER,
    Action,
    FailoverPolicy,
    FailoverSettings,
    Heartbeat,
    InstanceView,
)

pytestmark = pytest.mark.unit

SETTINGS = FailoverSettings(
    heartbeat_interval_ms=100, writer_dead_after_ms=1000, reader_stale_after_ms=500
)


def view(
    name: str, role: str = READER, tier: int = 1, state: str = "running", running: bool = True
) -> InstanceView:
    return InstanceView(name, role, tier, state, running)


def beat(role: str = READER, lag_lsns: int = 0, lag_ms: float = 0.0) -> Heartbeat:
    return Heartbeat(role=role, pid=1, lsn=100, lag_lsns=lag_lsns, lag_ms=lag_ms)


def cluster(policy: FailoverPolicy, now_s: float, readers: dict[str, int]) -> list[InstanceView]:
    """A writer w1 and readers {name: lag_lsns}, every one heartbeating at `now_s`."""
    policy.heartbeat("w1", beat(WRITER), now_s)
    for name, lag in readers.items():
        policy.heartbeat(name, beat(lag_lsns=lag), now_s)
    return [view("w1", WRITER), *(view(name) for name in readers)]


def test_live_writer_is_left_alone() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 0})
    policy.heartbeat("w1", beat(WRITER), 0.9)
    policy.heartbeat("r1", beat(), 0.9)
    assert policy.decide(views, 1.5).action is Action.NONE


def test_exited_writer_is_dead_at_once_and_best_reader_promoted() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 50, "r2": 3})
    views[0] = view("w1", WRITER, running=False)
    decision = policy.decide(views, 0.01)
    assert decision.action is Action.PROMOTE
    assert (decision.writer, decision.target) == ("w1", "r2")
    assert decision.reason == "process exited"


def test_silent_writer_is_dead_after_the_timeout_only() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 0})
    policy.heartbeat("r1", beat(), 0.95)
    assert policy.decide(views, 0.99).action is Action.NONE
    decision = policy.decide(views, 1.0)
    assert decision.action is Action.PROMOTE and decision.target == "r1"
    assert "no heartbeat" in decision.reason


def test_tier_comes_before_lag() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 0, "r2": 900})
    views = [views[0], view("r1", tier=2), view("r2", tier=0)]
    assert policy.candidates(views, 0.0) == ["r2", "r1"]


def test_lag_ms_breaks_lsn_ties_then_name() -> None:
    policy = FailoverPolicy(SETTINGS)
    policy.heartbeat("r1", beat(lag_ms=5.0), 0.0)
    policy.heartbeat("r2", beat(lag_ms=1.0), 0.0)
    policy.heartbeat("r3", beat(lag_ms=1.0), 0.0)
    assert policy.candidates([view("r3"), view("r1"), view("r2")], 0.0) == ["r2", "r3", "r1"]


@pytest.mark.parametrize(
    "reader",
    [
        view("r1", state="draining"),
        view("r1", state="restarting"),
        view("r1", running=False),
    ],
)
def test_unusable_reader_is_not_promoted(reader: InstanceView) -> None:
    policy = FailoverPolicy(SETTINGS)
    policy.heartbeat("r1", beat(), 0.0)
    assert policy.candidates([reader], 0.0) == []


def test_reader_silent_or_restarted_without_a_heartbeat_is_not_promoted() -> None:
    policy = FailoverPolicy(SETTINGS)
    policy.heartbeat("r1", beat(), 0.0)
    assert policy.candidates([view("r1")], 0.49) == ["r1"]
    assert policy.candidates([view("r1")], 0.5) == [], "stale"
    policy.started("r1", 1.0)
    assert policy.candidates([view("r1")], 1.0) == [], "no heartbeat since its restart"
    policy.heartbeat("r1", beat(WRITER), 1.1)
    assert policy.candidates([view("r1")], 1.1) == [], "its heartbeat says it is no reader"


def test_hung_writer_without_readers_is_restarted_and_exited_one_left_to_supervision() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {})
    decision = policy.decide(views, 1.0)
    assert (decision.action, decision.writer) == (Action.RESTART_WRITER, "w1")
    assert policy.decide([view("w1", WRITER, running=False)], 1.0).action is Action.NONE


def test_stopped_writer_is_not_dead() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 0})
    policy.heartbeat("r1", beat(), 5.0)
    stopped = [view("w1", WRITER, state="stopped", running=False), views[1]]
    assert policy.decide(stopped, 5.0).action is Action.NONE


def test_restart_gives_a_writer_a_fresh_heartbeat_clock() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 0})
    policy.started("w1", 10.0)
    policy.heartbeat("r1", beat(), 10.8)
    assert policy.decide(views, 10.9).action is Action.NONE
    assert policy.decide(views, 11.0).action is Action.PROMOTE


def test_no_decision_without_exactly_one_writer() -> None:
    policy = FailoverPolicy(SETTINGS)
    policy.heartbeat("r1", beat(), 0.0)
    assert policy.decide([view("r1")], 9.0).action is Action.NONE
    two = [view("w1", WRITER, running=False), view("w2", WRITER, running=False), view("r1")]
    assert policy.decide(two, 0.0).action is Action.NONE


def test_planned_target_must_be_a_candidate() -> None:
    policy = FailoverPolicy(SETTINGS)
    views = cluster(policy, 0.0, {"r1": 9, "r2": 0})
    assert policy.planned_target(views, 0.0, "r1") == "r1"
    assert policy.planned_target(views, 0.0) == "r2"
    assert policy.planned_target(views, 0.0, "w1") is None
    assert policy.planned_target(views, 0.0, "nope") is None


@pytest.mark.parametrize(
    "values",
    [
        {"heartbeat_interval_ms": 10},
        {"heartbeat_interval_ms": 600, "writer_dead_after_ms": 1000},
        {"heartbeat_interval_ms": 100, "reader_stale_after_ms": 150},
    ],
)
def test_settings_are_checked(values: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        FailoverSettings(**values)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.floats(0, 1e4), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_promoted_reader_is_never_beaten_by_another_candidate(
    readers: list[tuple[int, int, float, bool]],
) -> None:
    policy = FailoverPolicy(SETTINGS)
    views = [view("w1", WRITER, running=False)]
    for index, (tier, lag_lsns, lag_ms, running) in enumerate(readers):
        name = f"r{index}"
        policy.heartbeat(name, beat(lag_lsns=lag_lsns, lag_ms=lag_ms), 0.0)
        views.append(view(name, tier=tier, running=running))
    decision = policy.decide(views, 0.0)
    usable = [(t, lsns, ms, f"r{i}") for i, (t, lsns, ms, run) in enumerate(readers) if run]
    if not usable:
        assert decision.action is Action.NONE
        return
    assert decision.action is Action.PROMOTE
    assert decision.target == min(usable)[3]
