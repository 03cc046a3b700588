"""Must hold 7: committed data survives a restart of the server (for Borealis, every
process of the cluster: `borealis down` then `borealis up`), and uncommitted data
does not."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from deploy.ports import PortAllocator
from deploy.postgres import LocalPostgres
from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint
table_name = endpoints.table_name

ROWS = 2000


def test_data_survives_restart(pg_endpoint: PgEndpoint, table_name: str) -> None:
    conn = psycopg.connect(**pg_endpoint.connect_kwargs())
    try:
        conn.execute(
            f"CREATE TABLE {table_name} (id serial PRIMARY KEY, name text NOT NULL, "
            "amount numeric(12,2), at timestamptz DEFAULT now())"
        )
        conn.execute(f"CREATE INDEX {table_name}_name_idx ON {table_name} (name)")
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table_name} (name, amount) VALUES (%s, %s)",
                [(f"name {index}", Decimal(index) / 100) for index in range(ROWS)],
            )
        conn.commit()
        # Left open and uncommitted when the server stops: it must not survive.
        conn.execute(f"INSERT INTO {table_name} (name, amount) VALUES ('uncommitted', 0)")
        pg_endpoint.restart()
    finally:
        # The server ended this session; closing only frees the client's side.
        conn.close()

    with psycopg.connect(**pg_endpoint.connect_kwargs()) as conn:
        count, total, distinct_ids = conn.execute(
            f"SELECT count(*), sum(amount), count(DISTINCT id) FROM {table_name}"
        ).fetchone() or (None, None, None)
        assert count == ROWS
        assert distinct_ids == ROWS
        assert total == sum(Decimal(index) / 100 for index in range(ROWS))
        found = conn.execute(
            f"SELECT amount FROM {table_name} WHERE name = %s", ["name 1234"]
        ).fetchall()
        assert found == [(Decimal("12.34"),)]
        # The sequence behind SERIAL carries on past the rows it handed out.
        (new_id,) = conn.execute(
            f"INSERT INTO {table_name} (name) VALUES ('after restart') RETURNING id"
        ).fetchone() or (None,)
        assert new_id is not None and new_id > ROWS
        conn.commit()


def test_local_postgres_launcher(tmp_path: Path, port_allocator: PortAllocator) -> None:
    """deploy/postgres.py: SCRAM only, fsync on, a restart keeps data, and stop()
    leaves no server behind."""
    server = LocalPostgres(
        tmp_path / "pg",
        user="launcher",
        password="pass word'",
        dbname="launched",
        ports=port_allocator,
    )
    with server:
        assert server.execute("SHOW fsync") == [("on",)]
        assert server.execute("SHOW password_encryption") == [("scram-sha-256",)]
        assert server.execute("SELECT current_user, current_database()") == [
            ("launcher", "launched")
        ]
        server.execute("CREATE TABLE kept (id integer)")
        server.execute("INSERT INTO kept VALUES (7)")
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT id FROM kept").fetchall() == [(7,)]
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(server.dsn.replace("password='pass word\\''", "password=wrong"))
        server.restart()
        assert server.execute("SELECT id FROM kept") == [(7,)]
        process = server.process
        assert process is not None
    assert not server.is_running()
    assert process.poll() is not None
    # The postmaster removes its pid file on a clean shutdown.
    assert not (server.data_dir / "postmaster.pid").exists()
