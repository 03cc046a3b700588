"""Bringing a segment that missed an epoch change up to the writer's epoch (sans-IO).

Recovery raises the volume epoch on the segments it reaches and truncates the
records above the new VDL on them. A segment it did not reach (its node was down
or partitioned), or one that took the new epoch but not the truncation, may still
hold records an old writer wrote above that VDL. Such a segment is never used
as it is: before the new writer appends to it (recovery at open for the nodes
that answer, the shipper later for the others), it gets SetEpoch with the
truncation ranges `catch_up_truncations` computes, which delete every record it
may hold that is not on the volume's chain. Storage applies each SetEpoch in one
transaction (epoch raise and deletion together), so an old writer is refused
from then on and the deleted records never come back (gossip only copies between
segments at the same epochs, and storage drops appended records that fall in its
last truncation range).

Why the ranges are right. LSNs are unique over the volume's history: each writer
allocates above the end of its recovery's truncation range, which covers
everything an older writer may have allocated. So a record is on the volume's
chain unless some recovery truncated it, and a record written by the writer of
epoch k is truncated exactly when its LSN is above VDL(k + 1). A segment whose
last applied truncation was that of the recovery that set its own epoch holds
nothing invalid at or below that recovery's VDL, hence nothing invalid at or
below the new VDL when it missed only the last change. When it missed more, or
its truncation state is older than its epoch, the only sure bound is its own
last truncation's start: everything above it goes (gossip refills what was
valid), then the new range is set again so that storage filters exactly the
new truncation range from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

from borealis.ids import LSN_NONE, Epoch, Lsn

TruncationRange = tuple[Lsn, Lsn]

NO_TRUNCATION: TruncationRange = (LSN_NONE, LSN_NONE)


@dataclass(frozen=True)
class EpochCatchUp:
    """What the new writer's recovery decided, for segments it could not finish."""

    volume_epoch: Epoch
    # The new truncation range (VDL, truncate_up_to].
    truncation: TruncationRange
    # The newest truncation range the segments held before this recovery (that of
    # the previous recovery, if it reached any segment read), or NO_TRUNCATION.
    truncation_before: TruncationRange


def catch_up_truncations(
    segment_volume_epoch: int, segment_truncation: TruncationRange, catch_up: EpochCatchUp
) -> list[TruncationRange]:
    """The SetEpoch truncations, in order, that bring a segment to the writer's epoch
    without any record that is off the volume's chain; [] if it is already there.

    The segment must not be at a newer epoch (that one fences the writer instead).
    """
    assert segment_volume_epoch <= catch_up.volume_epoch, (segment_volume_epoch, catch_up)
    vdl, up_to = catch_up.truncation
    if segment_volume_epoch == catch_up.volume_epoch and segment_truncation == catch_up.truncation:
        return []
    missed_only_the_last = (
        segment_volume_epoch >= catch_up.volume_epoch - 1
        and segment_truncation == catch_up.truncation_before
    )
    above = vdl if missed_only_the_last else Lsn(min(vdl, segment_truncation[0]))
    if above == vdl:
        return [(vdl, up_to)]
    # Everything above the segment's own last truncation goes; then the new range
    # becomes the one storage filters, so gossip can refill (above, vdl].
    return [(above, up_to), (vdl, up_to)]
