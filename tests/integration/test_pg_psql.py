"""Must hold 1: psql connects with a password, runs SQL, and describes tables."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import pg_endpoint as endpoints
from tests.support.pg_endpoint import PgEndpoint

pytestmark = pytest.mark.integration

# The shared fixtures, bound here so pytest finds them in this module.
deadline_guard = endpoints.deadline_guard
pg_endpoint = endpoints.pg_endpoint
table_name = endpoints.table_name

PSQL_TIMEOUT_S = 60.0


def psql(endpoint: PgEndpoint, *commands: str, tuples_only: bool = False) -> str:
    """Runs psql with each -c command in turn (stopping at the first error); its stdout."""
    binary = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    argv = [binary, "-X", "-v", "ON_ERROR_STOP=1", "--no-password"]
    if tuples_only:
        argv += ["-A", "-t"]
    for command in commands:
        argv += ["-c", command]
    result = subprocess.run(
        argv, env=endpoint.libpq_env(), capture_output=True, text=True, timeout=PSQL_TIMEOUT_S
    )
    assert result.returncode == 0, f"psql failed ({result.returncode}): {result.stderr}"
    return result.stdout


def test_psql_create_insert_select(pg_endpoint: PgEndpoint, table_name: str) -> None:
    psql(
        pg_endpoint,
        f"CREATE TABLE {table_name} (id integer PRIMARY KEY, name text NOT NULL)",
        f"INSERT INTO {table_name} VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    )
    output = psql(
        pg_endpoint,
        f"SELECT id, name FROM {table_name} WHERE id >= 2 ORDER BY id",
        tuples_only=True,
    )
    assert output.split() == ["2|two", "3|three"]


def test_psql_wrong_password_fails(pg_endpoint: PgEndpoint) -> None:
    env = {**pg_endpoint.libpq_env(), "PGPASSWORD": "not the password"}
    result = subprocess.run(
        ["psql", "-X", "--no-password", "-c", "SELECT 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PSQL_TIMEOUT_S,
    )
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr


def test_psql_describe_tables(pg_endpoint: PgEndpoint, table_name: str) -> None:
    psql(
        pg_endpoint,
        f"CREATE TABLE {table_name} (id integer PRIMARY KEY, name varchar(40) NOT NULL, "
        "price numeric(10,2), created timestamptz, flag boolean)",
        f"CREATE INDEX {table_name}_name_idx ON {table_name} (name)",
    )
    listing = psql(pg_endpoint, r"\dt")
    assert re.search(rf"^\s*public\s*\|\s*{table_name}\s*\|\s*table\s*\|", listing, re.M), listing

    described = psql(pg_endpoint, rf"\d {table_name}")
    assert f'Table "public.{table_name}"' in described, described
    columns = {
        "id": r"integer\s*\|\s*\|\s*not null",
        "name": r"character varying\(40\)\s*\|\s*\|\s*not null",
        "price": r"numeric\(10,2\)",
        "created": r"timestamp with time zone",
        "flag": r"boolean",
    }
    for column, type_pattern in columns.items():
        assert re.search(rf"^\s*{column}\s*\|\s*{type_pattern}", described, re.M), (
            column,
            described,
        )
    indexes = described.split("Indexes:", 1)[1]
    assert re.search(rf'"{table_name}_pkey" PRIMARY KEY, btree \(id\)', indexes), described
    assert re.search(rf'"{table_name}_name_idx" btree \(name\)', indexes), described
