"""`borealis sql` as a user runs it: -c, -f and a pipe, against a real server.

The server is the `pg_endpoint` of tests/support/pg_endpoint.py (a throwaway
PostgreSQL 15, or a Borealis cluster with BOREALIS_PG_TARGET=borealis). Each test
writes a cluster.json of its own pointing at it, with the password in a 0600 file,
as `borealis up` does.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from borealis.cli.sql import Shell, Target, connect
from tests.support.pg_endpoint import PgEndpoint, pg_endpoint, table_name  # noqa: F401

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT_S = 60.0


def _write_cluster(
    directory: Path, endpoint: PgEndpoint, password: str | None = None, mode: int = 0o600
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "password"
    password_file.write_text((endpoint.password if password is None else password) + "\n")
    password_file.chmod(mode)
    writer = f"postgresql://{endpoint.user}@{endpoint.host}:{endpoint.port}/{endpoint.dbname}"
    document = {
        "endpoints": {"writer": writer},
        "user": endpoint.user,
        "password_file": str(password_file),
    }
    (directory / "cluster.json").write_text(json.dumps(document))
    return directory


def borealis_sql(
    data_dir: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    borealis = Path(sys.executable).with_name("borealis")
    environment = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    environment.update(env or {})
    environment["HOME"] = str(data_dir)  # no history file in the real home
    return subprocess.run(
        [str(borealis), "sql", "--data-dir", str(data_dir), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        env=environment,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path, pg_endpoint: PgEndpoint) -> Path:  # noqa: F811
    return _write_cluster(tmp_path / "cluster", pg_endpoint)


def test_command_runs_sql_and_prints_an_aligned_table(data_dir: Path, table_name: str) -> None:  # noqa: F811
    created = borealis_sql(
        data_dir,
        "-c",
        f"CREATE TABLE {table_name} (id integer PRIMARY KEY, name text NOT NULL); "
        f"INSERT INTO {table_name} VALUES (1, 'one'), (22, 'twenty-two')",
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout == "CREATE TABLE\nINSERT 0 2\n"
    selected = borealis_sql(data_dir, "-c", f"SELECT id, name FROM {table_name} ORDER BY id")
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout == (
        " id |    name    \n----+------------\n  1 | one\n 22 | twenty-two\n(2 rows)\n\n"
    )


def test_command_error_shows_sqlstate_and_caret_and_exits_1(data_dir: Path) -> None:
    result = borealis_sql(data_dir, "-c", "SELECT 1;\nSELECT *\n  FROM no_such_table_x")
    assert result.returncode == 1
    assert "(1 row)" in result.stdout, "the statement before the error ran"
    lines = result.stderr.splitlines()
    assert lines[0] == 'ERROR:  42P01: relation "no_such_table_x" does not exist'
    assert lines[1] == "LINE 2:   FROM no_such_table_x"
    assert lines[2] == " " * len("LINE 2:   FROM ") + "^"


def test_file_runs_multiline_statements_and_meta_commands(
    data_dir: Path,
    table_name: str,  # noqa: F811
) -> None:
    script = data_dir / "script.sql"
    script.write_text(
        f"CREATE TABLE {table_name} (\n"
        "  id integer PRIMARY KEY,  -- the key; not the end\n"
        "  note text DEFAULT 'a;b'\n"
        ");\n"
        f"CREATE INDEX {table_name}_note ON {table_name} (note);\n"
        f"INSERT INTO {table_name} (id) VALUES (1); /* ; */\n"
        f"INSERT INTO {table_name} VALUES (2, $$two; 'quoted'$$);\n"
        "\\x\n"
        f"SELECT id, note FROM {table_name} ORDER BY id;\n"
        "\\x off\n"
        f"SELECT count(*) AS n FROM {table_name}\n"  # the last statement needs no `;`
    )
    result = borealis_sql(data_dir, "-f", str(script))
    assert result.returncode == 0, result.stderr
    assert "-[ RECORD 1 ]-------\nid   | 1\nnote | a;b\n-[ RECORD 2 ]" in result.stdout
    assert "note | two; 'quoted'\n" in result.stdout
    assert result.stdout.endswith(" n \n---\n 2\n(1 row)\n\n")

    described = borealis_sql(data_dir, "-c", f"\\d {table_name}")
    assert described.returncode == 0, described.stderr
    output = described.stdout
    assert f'Table "public.{table_name}"' in output
    assert " Column |  Type   | Nullable |   Default   " in output
    assert " id     | integer | not null | " in output
    assert " note   | text    |          | 'a;b'::text" in output
    assert f'"{table_name}_pkey" PRIMARY KEY, btree (id)' in output
    assert f'"{table_name}_note" btree (note)' in output

    listed = borealis_sql(data_dir, "-c", f"\\dt {table_name}")
    assert listed.returncode == 0, listed.stderr
    assert f" public | {table_name} | table | " in listed.stdout
    missing = borealis_sql(data_dir, "-c", "\\d no_such_relation_x")
    assert missing.returncode == 1
    assert 'Did not find any relation named "no_such_relation_x".' in missing.stderr


def test_piped_stdin_runs_statements_and_continues_after_errors(
    data_dir: Path,
    table_name: str,  # noqa: F811
) -> None:
    piped = (
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text);\n"
        f"INSERT INTO {table_name} VALUES (1, 'x');\n"
        f"INSERT INTO {table_name} VALUES (1, 'duplicate');\n"
        f"COPY {table_name} FROM STDIN;\n2\tcopied\n3\t\\N\n\\.\n"
        "\\timing on\n"
        f"SELECT v FROM {table_name} ORDER BY id;\n"
        f"COPY (SELECT id FROM {table_name} ORDER BY id) TO STDOUT;\n"
    )
    result = borealis_sql(data_dir, stdin=piped)
    assert result.returncode == 1, "a failed statement makes the exit status 1"
    assert "ERROR:  23505: duplicate key value" in result.stderr
    # PostgreSQL also names the value, "Key (id)=(1)"; SQLite's message has no value.
    assert "DETAIL:  Key (id)" in result.stderr
    assert "COPY 2\n" in result.stdout
    assert "   v    \n--------\n x\n copied\n \n(3 rows)\n" in result.stdout
    assert "Timing is on.\n" in result.stdout
    assert result.stdout.count("Time: ") == 2
    assert result.stdout.endswith("1\n2\n3\nCOPY 3\nTime: " + result.stdout.rsplit("Time: ", 1)[1])


def test_password_sources(tmp_path: Path, pg_endpoint: PgEndpoint) -> None:  # noqa: F811
    wrong = _write_cluster(tmp_path / "wrong", pg_endpoint, password="not the password")
    refused = borealis_sql(wrong, "-c", "SELECT 1")
    assert refused.returncode == 2
    assert "password authentication failed" in refused.stderr
    # PGPASSWORD wins over the file.
    right = borealis_sql(wrong, "-c", "SELECT 1", env={"PGPASSWORD": pg_endpoint.password})
    assert right.returncode == 0, right.stderr

    open_file = _write_cluster(tmp_path / "open", pg_endpoint, mode=0o644)
    result = borealis_sql(open_file, "-c", "SELECT 1")
    assert result.returncode == 2
    assert "mode 0644" in result.stderr and "chmod 600" in result.stderr

    fallback = borealis_sql(open_file, "--reader", "-c", "SELECT 1", env={"PGPASSWORD": "x"})
    assert "no reader endpoint" in fallback.stderr


def test_prompt_follows_statement_and_transaction_state(pg_endpoint: PgEndpoint) -> None:  # noqa: F811
    target = Target(pg_endpoint.url, None, None)
    out, err = io.StringIO(), io.StringIO()
    with connect(target) as connection:
        shell = Shell(connection, out, err)
        database = pg_endpoint.dbname
        assert shell.prompt(database) == f"{database}=> "
        shell.feed_line("SELECT 1,")
        assert shell.prompt(database) == f"{database}-> "
        shell.feed_line("'open")
        assert shell.prompt(database) == f"{database}'> "
        shell.feed_line("';")
        assert "(1 row)" in out.getvalue()
        shell.feed_line("BEGIN;")
        assert shell.prompt(database) == f"{database}=*> "
        shell.feed_line("SELECT 1/0;")
        assert shell.prompt(database) == f"{database}=!> "
        assert "ERROR:  22012: division by zero" in err.getvalue()
        shell.feed_line("ROLLBACK;")
        assert shell.prompt(database) == f"{database}=> "
        assert shell.feed_line("\\q") == "quit"
