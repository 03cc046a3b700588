"""The volume client's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from compute_node.volume.durability import LAL_LSNS_DEFAULT
from compute_node.volume.reader import PageReaderConfig
from compute_node.volume.shipper import ShipperConfig
from compute_node.volume.topology import PAGES_PER_PG_DEFAULT


@dataclass(frozen=True)
class VolumeConfig:
    # For a new volume; a reopened one takes its PG size from its segments.
    pages_per_pg: int = PAGES_PER_PG_DEFAULT
    # The LSN allocation limit. Recovery relies on every writer of a volume using
    # the same value (its truncation range covers what an old writer may have used).
    lal_lsns: int = LAL_LSNS_DEFAULT
    # Added to the truncation range at open, above VDL + LAL.
    truncation_margin_lsns: int = 1024
    cache_capacity_bytes: int = 256 * 2**20
    # Deadline of each control call: ListSegments, SetMembership, SetEpoch, ReadRecords.
    control_rpc_timeout_ms: float = 5000.0
    # How long create and open keep asking storage nodes that do not answer
    # before going on without them.
    node_wait_ms: float = 5000.0
    # How long admit may wait: PG creation, and back-pressure at the LAL.
    admit_timeout_ms: float = 30_000.0
    # ReadRecords page size during recovery, and the first window of the backward
    # searches (for the last CPL and SIZE record below what was read).
    read_records_bytes_max: int = 4 * 2**20
    recovery_window_lsns: int = 4096
    shipper: ShipperConfig = field(default_factory=ShipperConfig)
    reader: PageReaderConfig = field(default_factory=PageReaderConfig)

    def __post_init__(self) -> None:
        assert self.pages_per_pg > 0 and self.lal_lsns > 0
        assert self.truncation_margin_lsns >= 0 and self.cache_capacity_bytes >= 0
        assert self.control_rpc_timeout_ms > 0 and self.admit_timeout_ms > 0
        assert self.node_wait_ms >= 0
        assert self.read_records_bytes_max > 0 and self.recovery_window_lsns > 0
