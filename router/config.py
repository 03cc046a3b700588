"""The router's settings (table [router] of its TOML file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RouterConfig:
    data_dir: Path
    # cluster.json: the instances and custom endpoints, re-read when it changes.
    cluster_file: Path
    # JSON file {user: SCRAM-SHA-256 verifier}; read at each login.
    users_file: Path
    # The secret the router presents to instances in place of a client's password.
    proxy_secret_file: Path
    name: str = "router"
    # gRPC (health and Admin) address.
    host: str = "127.0.0.1"
    port: int = 0
    # HTTP port serving GET /metrics (Prometheus text); None: not served.
    metrics_port: int | None = None
    # Where the PostgreSQL endpoints listen; port 0 picks a free port (see ports.json).
    pg_host: str = "127.0.0.1"
    writer_port: int = 0
    reader_port: int = 0
    # The endpoints' TLS certificate and key (PEM, `up --tls`): an SSLRequest is
    # then accepted. None: answered "N" (no TLS).
    pg_tls_cert_file: Path | None = None
    pg_tls_key_file: Path | None = None
    # Readers further behind the writer than this take no new reader-endpoint connections.
    reader_lag_max_ms: int = 1000
    topology_poll_ms: int = 200
    health_interval_ms: int = 500
    health_timeout_ms: int = 1000
    connections_max: int = 1000
    backend_connect_timeout_ms: int = 5000
    authentication_timeout_ms: int = 60_000
    # How long an idle session whose instance went away (restart, failover) waits
    # for an instance of its endpoint before it is closed.
    failover_wait_ms: int = 30_000
    # How long a new connection waits for an instance of its endpoint (a writer
    # restarting or failing over) before it gets FATAL 57P03.
    login_wait_ms: int = 10_000
    # Named prepared statements remembered per session, re-prepared when it moves.
    session_statements_max: int = 1000
    session_statement_bytes_max: int = 2**20
    message_bytes_max: int = 64 * 2**20
    shutdown_grace_ms: int = 5000
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        for field_name in (
            "topology_poll_ms",
            "health_interval_ms",
            "health_timeout_ms",
            "connections_max",
            "backend_connect_timeout_ms",
            "authentication_timeout_ms",
            "message_bytes_max",
        ):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name} must be positive")
        if self.failover_wait_ms < 0:
            raise ValueError("failover_wait_ms must not be negative")
        if self.login_wait_ms < 0:
            raise ValueError("login_wait_ms must not be negative")
        if (self.pg_tls_cert_file is None) != (self.pg_tls_key_file is None):
            raise ValueError("pg_tls_cert_file and pg_tls_key_file are set together")
        if self.reader_lag_max_ms < 0 or self.session_statements_max < 0:
            raise ValueError("reader_lag_max_ms and session_statements_max must not be negative")
