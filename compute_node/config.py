"""A compute instance's settings (table [compute_node] of its TOML file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compute_node.capacity import BCU_DEFAULT, bcu_problem

ROLES = ("writer", "reader")
# Written in the instance's directory while its process is parked (the cluster is
# paused, compute_node/instance.py); the control plane waits for it.
PARKED_FILE = "parked"


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
    # The PostgreSQL endpoint (0: any free port).
    pg_port: int = 0
    # The database name clients connect to (the one database of the volume).
    database: str = "borealis"
    # JSON file {user: SCRAM-SHA-256 verifier}, written by the launcher (mode 0600).
    users_file: Path | None = None
    # The router's secret (file, mode 0600): a login presenting it skips SCRAM, the
    # router having authenticated the client itself. None: no proxy logins.
    proxy_secret_file: Path | None = None
    # The PostgreSQL endpoint's TLS certificate and key (PEM, `up --tls`): an
    # SSLRequest is then accepted. None: answered "N" (no TLS).
    pg_tls_cert_file: Path | None = None
    pg_tls_key_file: Path | None = None
    pg_connections_max: int = 200
    # A Query or Parse message with a longer statement gets SQLSTATE 54000.
    pg_statement_bytes_max: int = 2**20
    # Translated statement shapes kept (LRU).
    statement_cache_entries: int = 4096
    volume_id: int = 1
    # Pages per protection group; fixed when the volume is created.
    pages_per_pg: int = 65536
    # The capacity the instance starts at, in BCUs (compute_node/capacity.py: 1 BCU =
    # 128 MiB of buffer cache + 2 reader connections, 0.5 steps within [0.5, 16]). The
    # control plane changes it at run time (Capacity.SetCapacity); a promoted reader
    # keeps the capacity it had.
    capacity_bcu: float = BCU_DEFAULT
    # Explicit starting sizes instead of those capacity_bcu gives (tests, small
    # machines). Either holds only until the first SetCapacity, which sets both.
    buffer_cache_bytes: int | None = None
    # Reading connections (each owned by its own worker thread).
    reader_connections: int | None = None
    # How long a commit may wait for a write quorum before it fails.
    commit_timeout_ms: int = 30_000
    # A writer never runs more than this many LSNs ahead of VDL.
    lal_lsns: int = 1_000_000
    storage_rpc_timeout_ms: int = 5000
    shutdown_grace_ms: int = 5000
    # A reader's writer: its gRPC host:port. Empty: the writer named in the cluster
    # file (instances[role=writer].address), looked up again at each resubscription.
    writer_address: str = ""
    # A new reader prewarms its buffer cache before it serves: it asks the writer
    # for its hottest pages (as many as its own cache holds) and reads them from
    # storage, `prewarm_concurrency` at a time, for at most `prewarm_timeout_ms`
    # (then it serves with what it has read).
    prewarm: bool = True
    prewarm_timeout_ms: int = 5000
    prewarm_concurrency: int = 8
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not self.name:
            raise ValueError("name must not be empty")
        for field_name in (
            "pages_per_pg",
            "buffer_cache_bytes",
            "reader_connections",
            "lal_lsns",
            "pg_connections_max",
            "pg_statement_bytes_max",
            "statement_cache_entries",
            "prewarm_timeout_ms",
            "prewarm_concurrency",
        ):
            value = getattr(self, field_name)
            if value is not None and value <= 0:
                raise ValueError(f"{field_name} must be positive")
        problem = bcu_problem(self.capacity_bcu)
        if problem is not None:
            raise ValueError(f"capacity_bcu: {problem}")
        if (self.pg_tls_cert_file is None) != (self.pg_tls_key_file is None):
            raise ValueError("pg_tls_cert_file and pg_tls_key_file are set together")
