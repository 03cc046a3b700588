"""The storage node's settings (table [storage_node] of its TOML file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StorageNodeConfig:
    name: str
    data_dir: Path
    az: str = "az-a"
    host: str = "127.0.0.1"
    port: int = 0
    # HTTP port serving GET /metrics (Prometheus text); None: not served.
    metrics_port: int | None = None
    # LMDB reserves the map as sparse virtual memory; the file grows as data does.
    lmdb_map_size_bytes: int = 8 * 2**30
    # One AppendRedo batch. Larger batches are refused with INVALID_ARGUMENT.
    append_batch_records_max: int = 8192
    append_batch_bytes_max: int = 16 * 2**20
    # Batches accepted but not yet synced; more callers wait for a slot.
    append_inflight_batches_max: int = 256
    # Batches the writer thread folds into one LMDB transaction and one fsync.
    group_commit_batches_max: int = 64
    read_records_bytes_max: int = 4 * 2**20
    # Delta chain length at which the coalescer writes a new page image.
    coalesce_deltas_max: int = 16
    coalesce_interval_ms: int = 1000
    gossip_interval_ms: int = 1000
    gc_interval_ms: int = 5000
    scrub_interval_ms: int = 60_000
    # Records and images the scrubber checks per pass before it yields.
    scrub_items_per_pass_max: int = 100_000
    # Deadline of every call this node makes to a peer.
    peer_rpc_timeout_ms: int = 5000
    # Grace period for in-flight RPCs on SIGTERM.
    shutdown_grace_ms: int = 2000
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        for field_name in (
            "append_batch_records_max",
            "append_batch_bytes_max",
            "append_inflight_batches_max",
            "group_commit_batches_max",
            "read_records_bytes_max",
            "coalesce_deltas_max",
            "lmdb_map_size_bytes",
        ):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name} must be positive")

    @property
    def message_bytes_max(self) -> int:
        """gRPC message limit: a full batch plus its framing."""
        return self.append_batch_bytes_max + 2**20
