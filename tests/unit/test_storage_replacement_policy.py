"""The storage node replacement policy (control_plane/storage_replacement.py), driven
with a fake clock: the down-time threshold, a node that comes back resets its
timer, one replacement at a time (oldest down first), no replacement without a
writer, retries after a failure, and 0 meaning never."""

from __future__ import annotations

import pytest

from control_plane.storage_replacement import (
    NOTHING,
    Action,
    Change,
    ReplacementSettings,
    StorageReplacementPolicy,
)

pytestmark = pytest.mark.unit

SETTINGS = ReplacementSettings(replace_after_s=10.0, retry_after_s=5.0, check_interval_s=1.0)
NODES = [f"s{index}" for index in range(1, 7)]


def policy_with(down: dict[str, float], now_s: float = 0.0) -> StorageReplacementPolicy:
    """A policy that saw every node up at `now_s`, then `down` nodes down at their times."""
    policy = StorageReplacementPolicy(SETTINGS)
    for node in NODES:
        policy.observe(node, True, now_s)
    for node, at_s in down.items():
        policy.observe(node, False, at_s)
    return policy


def test_a_node_is_replaced_once_down_for_the_configured_time() -> None:
    policy = policy_with({"s2": 100.0})
    assert policy.decide(109.9, writer_available=True) == NOTHING
    decision = policy.decide(110.0, writer_available=True)
    assert decision.action is Action.REPLACE
    assert decision.node == "s2"
    assert decision.down_for_s == pytest.approx(10.0)
    assert "down for 10.0 s" in decision.reason


def test_observations_report_changes_once() -> None:
    policy = policy_with({})
    assert policy.observe("s3", False, 1.0) is Change.WENT_DOWN
    # Still down: the timer keeps its start.
    assert policy.observe("s3", False, 2.0) is Change.NONE
    assert policy.down_for_s("s3", 5.0) == pytest.approx(4.0)
    assert policy.observe("s3", True, 3.0) is Change.CAME_BACK
    assert policy.observe("s3", True, 4.0) is Change.NONE
    assert policy.down_for_s("s3", 5.0) is None


def test_a_node_that_comes_back_resets_its_timer() -> None:
    policy = policy_with({"s4": 100.0})
    policy.observe("s4", True, 108.0)
    policy.observe("s4", False, 109.0)
    # 10 s after the first loss, but only 2 s after the second.
    assert policy.decide(111.0, writer_available=True) == NOTHING
    assert policy.decide(118.9, writer_available=True) == NOTHING
    assert policy.decide(119.0, writer_available=True).node == "s4"


def test_one_replacement_at_a_time_oldest_down_first() -> None:
    policy = policy_with({"s5": 103.0, "s1": 101.0, "s3": 102.0})
    first = policy.decide(120.0, writer_available=True)
    assert (first.action, first.node) == (Action.REPLACE, "s1")
    policy.started("s1")
    # Others are due too, but wait for the replacement in progress.
    assert policy.decide(121.0, writer_available=True) == NOTHING
    policy.finished("s1", succeeded=True, now_s=130.0)
    assert policy.down_for_s("s1", 130.0) is None
    assert policy.decide(130.0, writer_available=True).node == "s3"


def test_a_manual_replacement_holds_automatic_ones_back() -> None:
    policy = policy_with({"s6": 100.0})
    policy.started("s2")
    assert policy.decide(200.0, writer_available=True) == NOTHING
    policy.finished("s2", succeeded=True, now_s=200.0)
    assert policy.decide(200.0, writer_available=True).node == "s6"


def test_no_replacement_while_the_writer_is_down() -> None:
    policy = policy_with({"s2": 100.0})
    waiting = policy.decide(115.0, writer_available=False)
    assert (waiting.action, waiting.node) == (Action.WAIT_FOR_WRITER, "s2")
    assert "no writer" in waiting.reason
    assert policy.in_progress is None
    # Once a writer serves again, the node is replaced at the next decision.
    assert policy.decide(116.0, writer_available=True).action is Action.REPLACE


def test_a_failed_replacement_is_retried_after_the_retry_delay() -> None:
    policy = policy_with({"s2": 100.0})
    policy.started("s2")
    policy.finished("s2", succeeded=False, now_s=120.0)
    assert policy.in_progress is None
    assert policy.decide(124.9, writer_available=True) == NOTHING
    assert policy.decide(125.0, writer_available=True).node == "s2"


def test_a_node_down_and_failing_does_not_hold_back_another() -> None:
    policy = policy_with({"s2": 100.0, "s4": 105.0})
    policy.started("s2")
    policy.finished("s2", succeeded=False, now_s=120.0)
    # s2 waits for its retry; s4 is due meanwhile.
    assert policy.decide(121.0, writer_available=True).node == "s4"


def test_zero_means_never() -> None:
    policy = StorageReplacementPolicy(ReplacementSettings(replace_after_s=0))
    assert not policy.settings.enabled
    policy.observe("s1", False, 0.0)
    assert policy.decide(1e9, writer_available=True) == NOTHING


def test_a_forgotten_node_is_not_replaced() -> None:
    policy = policy_with({"s2": 100.0})
    policy.forget("s2")
    assert policy.decide(1000.0, writer_available=True) == NOTHING


@pytest.mark.parametrize(
    "values",
    [
        {"replace_after_s": -1.0},
        {"retry_after_s": 0.0},
        {"check_interval_s": 0.0},
        {"replace_timeout_s": 0.0},
        # One look could not tell a node that is down from one that blinked.
        {"replace_after_s": 1.0, "check_interval_s": 1.0},
    ],
)
def test_bad_settings_are_refused(values: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReplacementSettings(**values)


def test_two_replacements_at_once_are_a_programming_error() -> None:
    policy = policy_with({})
    policy.started("s1")
    with pytest.raises(AssertionError):
        policy.started("s2")


def test_nodes_that_left_the_cluster_are_forgotten() -> None:
    policy = policy_with({"s2": 100.0, "s3": 100.0})
    policy.retain({"s1", "s3", "s4", "s5", "s6", "s7"})
    assert policy.down_for_s("s2", 200.0) is None
    assert policy.decide(200.0, writer_available=True).node == "s3"
