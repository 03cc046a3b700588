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
    # Continuous backup (storage_node/backup.py): the object store, file:///DIR or
    # s3://BUCKET/PREFIX; empty: no backup (and GC does not wait for one).
    backup_store_url: str = ""
    # An S3 API endpoint other than AWS's (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
    backup_endpoint_url: str = ""
    # Names the cluster's directory in the store (volumes/CLUSTER_ID-VOLUME_ID/).
    backup_cluster_id: str = ""
    backup_interval_ms: int = 1000
    # One log chunk or image part object.
    backup_chunk_bytes_max: int = 4 * 2**20
    # A page image set per PG this often (0: only when a PG's backup starts).
    backup_image_interval_s: float = 3600.0
    # Objects no restore within this many days needs are deleted (0: keep all).
    backup_retention_days: float = 7.0
    # Encryption at rest (docs/operations.md): the KMS that wraps the data keys,
    # local:///PATH or aws-kms://KEY_ID?endpoint=URL&region=R; empty: no encryption.
    kms_url: str = ""
    # The wrapped data keys, VOLUME:BASE64,... (VOLUME a volume id, or * for the
    # default key of every other volume); unwrapped through the KMS at start.
    data_keys: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if bool(self.kms_url) != bool(self.data_keys):
            raise ValueError("kms_url and data_keys are set together (or neither: no encryption)")
        if self.backup_store_url and not self.backup_cluster_id:
            raise ValueError("backup_store_url needs backup_cluster_id")
        if self.backup_store_url and not self.backup_store_url.startswith(("file:///", "s3://")):
            raise ValueError("backup_store_url must be file:///DIR or s3://BUCKET[/PREFIX]")
        if self.backup_image_interval_s < 0 or self.backup_retention_days < 0:
            raise ValueError(
                "backup_image_interval_s and backup_retention_days must not be negative"
            )
        for field_name in (
            "append_batch_records_max",
            "append_batch_bytes_max",
            "append_inflight_batches_max",
            "group_commit_batches_max",
            "read_records_bytes_max",
            "coalesce_deltas_max",
            "lmdb_map_size_bytes",
            "backup_interval_ms",
            "backup_chunk_bytes_max",
        ):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name} must be positive")

    @property
    def message_bytes_max(self) -> int:
        """gRPC message limit: a full batch plus its framing."""
        return self.append_batch_bytes_max + 2**20
