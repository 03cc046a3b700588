"""A compute instance's settings (table [compute_node] of its TOML file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROLES = ("writer", "reader")


@dataclass(frozen=True)
class ComputeNodeConfig:
    name: str
    data_dir: Path
    # cluster.json of the cluster: where the storage nodes are.
    cluster_file: Path
    role: str = "writer"
    host: str = "127.0.0.1"
    port: int = 0
    # HTTP port serving GET /metrics (Prometheus text); None: not served.
    metrics_port: int | None = None
    volume_id: int = 1
    # Pages per protection group; fixed when the volume is created.
    pages_per_pg: int = 65536
    buffer_cache_bytes: int = 256 * 2**20
    # Reading connections (each owned by its own worker thread).
    reader_connections: int = 2
    # How long a commit may wait for a write quorum before it fails.
    commit_timeout_ms: int = 30_000
    # A writer never runs more than this many LSNs ahead of VDL.
    lal_lsns: int = 1_000_000
    storage_rpc_timeout_ms: int = 5000
    shutdown_grace_ms: int = 5000
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not self.name:
            raise ValueError("name must not be empty")
        for field_name in ("pages_per_pg", "buffer_cache_bytes", "reader_connections", "lal_lsns"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name} must be positive")
