"""compute_node/volume/epochs.py: which truncations bring a segment to a new epoch."""

from __future__ import annotations

import pytest

from borealis.ids import Epoch, Lsn
from compute_node.volume.epochs import NO_TRUNCATION, EpochCatchUp, catch_up_truncations

pytestmark = pytest.mark.unit

# Epoch 3's recovery: VDL 900, truncated (900, 2000]; epoch 2's had truncated (400, 1500].
BEFORE = (Lsn(400), Lsn(1500))
CATCH_UP = EpochCatchUp(Epoch(3), (Lsn(900), Lsn(2000)), BEFORE)


def test_a_segment_that_missed_only_the_last_change_loses_exactly_the_new_range() -> None:
    assert catch_up_truncations(2, BEFORE, CATCH_UP) == [(900, 2000)]


def test_a_segment_fenced_without_the_truncation_gets_it() -> None:
    assert catch_up_truncations(3, BEFORE, CATCH_UP) == [(900, 2000)]


def test_a_segment_already_caught_up_needs_nothing() -> None:
    assert catch_up_truncations(3, (Lsn(900), Lsn(2000)), CATCH_UP) == []


def test_a_segment_that_missed_two_changes_loses_everything_above_its_own_truncation() -> None:
    # At epoch 1 with epoch 1's truncation (100, 300]: it may hold epoch 1's writer's
    # records above 400 (truncated by epoch 2) that are below the new VDL.
    assert catch_up_truncations(1, (Lsn(100), Lsn(300)), CATCH_UP) == [
        (100, 2000),
        (900, 2000),
    ]


def test_a_segment_at_its_epoch_without_that_epochs_truncation_is_treated_as_older() -> None:
    # At epoch 2 but still with epoch 1's truncation (its recovery fenced it only).
    assert catch_up_truncations(2, (Lsn(100), Lsn(300)), CATCH_UP) == [(100, 2000), (900, 2000)]


def test_the_first_reopen_truncates_from_the_vdl() -> None:
    first = EpochCatchUp(Epoch(2), (Lsn(50), Lsn(1100)), NO_TRUNCATION)
    assert catch_up_truncations(1, NO_TRUNCATION, first) == [(50, 1100)]


def test_a_segment_ahead_of_the_writer_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        catch_up_truncations(4, BEFORE, CATCH_UP)
