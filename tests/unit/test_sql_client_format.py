"""The bundled client's pure parts: statement splitting, psql-style tables, errors, settings.

The expected tables are psql 15's own output for the same results (captured with
`psql -c ... | cat -A`), so `borealis sql` prints what a PostgreSQL user expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from borealis.cli.sql import (
    format_aligned,
    format_error,
    format_error_position,
    format_expanded,
    pattern_filters,
    read_password_file,
    resolve_target,
    split_statements,
)
from borealis.errors import InvalidRequest, NotFound

pytestmark = pytest.mark.unit

# (input text, complete statements, remainder state)
SPLIT_CASES = [
    ("select 1;", ["select 1"], "="),
    ("select 1; select 2;", ["select 1", "select 2"], "="),
    ("select 1", [], "-"),
    ("select 'a;b';", ["select 'a;b'"], "="),
    ("select 'it''s;';", ["select 'it''s;'"], "="),
    ("select E'a\\';b';", ["select E'a\\';b'"], "="),
    # Without E, a backslash is an ordinary character: the string ends at the second quote.
    ("select 'a\\';b';", ["select 'a\\'"], "'"),
    ('select 1 as "x;y";', ['select 1 as "x;y"'], "="),
    ("select $$a;b$$;", ["select $$a;b$$"], "="),
    ("select $fn$ $$; $fn$;", ["select $fn$ $$; $fn$"], "="),
    ("select $1;", ["select $1"], "="),
    ("select a$b$c from t;", ["select a$b$c from t"], "="),
    ("select 1 -- no; end\n;", ["select 1 -- no; end"], "="),
    ("select /* a; /* nested; */ b; */ 1;", ["select /* a; /* nested; */ b; */ 1"], "="),
    ("-- only a comment\n;", [], "="),
    (";;  ;", [], "="),
    ("select 'open", [], "'"),
    ('select "open', [], '"'),
    ("select $$open", [], "$"),
    ("select /* open", [], "*"),
    ("select (1;", [], "("),
    ("select 1; select 'x", ["select 1"], "'"),
    ("create rule r as on insert to t do (insert into u values (1); select 1);", None, "="),
]


@pytest.mark.parametrize(("text", "statements", "state"), SPLIT_CASES)
def test_split_statements(text: str, statements: list[str] | None, state: str) -> None:
    split = split_statements(text)
    expected = statements if statements is not None else [text[:-1]]
    assert split.statements == expected
    assert split.state == state
    if state == "=":
        assert split.remainder == ""
    else:
        assert split.remainder.strip(), "an unfinished statement keeps its text"


def test_split_is_incremental_line_by_line() -> None:
    """Feeding lines one at a time finds the same statements as the whole text."""
    script = "select 1,\n  'two;\nlines';\ncreate function f() returns int as $$\n"
    script += "  select 1;\n$$ language sql; select 3\n;"
    buffer, found = "", []
    for line in script.splitlines(keepends=True):
        split = split_statements(buffer + line)
        found += split.statements
        buffer = split.remainder
    assert found == split_statements(script).statements
    assert len(found) == 3 and buffer == ""


def test_aligned_table_matches_psql() -> None:
    rows = [("1", "alice", "1.50", "t", "multi\nline"), ("2", "bob", "-22.00", None, None)]
    lines = format_aligned(
        ["id", "name", "v", "b", "note"], rows, [True, False, True, False, False]
    )
    assert lines == [
        " id | name  |   v    | b | note  ",
        "----+-------+--------+---+-------",
        "  1 | alice |   1.50 | t | multi+",
        "    |       |        |   | line",
        "  2 | bob   | -22.00 |   | ",
        "(2 rows)",
    ]


def test_aligned_multiline_cells_and_headers_match_psql() -> None:
    assert format_aligned(["x", "y", "z"], [("a\nbc", "1", "p\nq\nr")], [False, True, False]) == [
        " x  | y | z ",
        "----+---+---",
        " a +| 1 | p+",
        " bc |   | q+",
        "    |   | r",
        "(1 row)",
    ]
    assert format_aligned(["x", "y"], [("a\nb\nc", "12")], [False, True]) == [
        " x | y  ",
        "---+----",
        " a+| 12",
        " b+| ",
        " c | ",
        "(1 row)",
    ]
    assert format_aligned(["multi\nhead", "?column?"], [("ab", "1")], [False, True]) == [
        " multi+| ?column? ",
        " head  |          ",
        "-------+----------",
        " ab    |        1",
        "(1 row)",
    ]


def test_aligned_empty_results_match_psql() -> None:
    assert format_aligned(["?column?"], [], [False]) == [" ?column? ", "----------", "(0 rows)"]
    assert format_aligned([], [()], []) == ["--", "(1 row)"]


def test_aligned_counts_wide_characters_as_two_columns() -> None:
    lines = format_aligned(["name"], [("日本",), ("ab",)], [False])
    assert lines[:2] == [" name ", "------"]
    assert lines[2:4] == [" 日本", " ab"]


def test_expanded_matches_psql() -> None:
    lines = format_expanded(["a", "bb"], [("1", "hello world"), ("22", "x")])
    assert lines == [
        "-[ RECORD 1 ]---",
        "a  | 1",
        "bb | hello world",
        "-[ RECORD 2 ]---",
        "a  | 22",
        "bb | x",
    ]
    lines = format_expanded(["y", "z" * 25], [("ab\nc", "1")])
    assert lines == [
        "-[ RECORD 1 ]-------------+---",
        "y                         | ab+",
        "                          | c",
        "zzzzzzzzzzzzzzzzzzzzzzzzz | 1",
    ]
    assert format_expanded(["id", "note"], [("1", None)]) == [
        "-[ RECORD 1 ]",
        "id   | 1",
        "note | ",
    ]
    assert format_expanded(["a"], []) == ["(0 rows)"]


def test_error_position_points_at_the_character() -> None:
    assert format_error_position("select *\nfrom nope", 15) == [
        "LINE 2: from nope",
        "             ^",
    ]
    assert format_error_position("selec 1", 1) == ["LINE 1: selec 1", "        ^"]


def test_error_position_cuts_long_lines_around_the_cursor() -> None:
    statement = "select " + ", ".join(f"column_{index}" for index in range(40)) + " from t"
    position = statement.index("column_30") + 1
    line, caret = format_error_position(statement, position)
    assert line.startswith("LINE 1: ...") and line.endswith("...")
    assert len(line) <= len("LINE 1: ") + 6 + 60
    assert line[caret.index("^") :].startswith("column_30")


def test_error_lines_carry_sqlstate_detail_and_hint() -> None:
    lines = format_error(
        "ERROR",
        "23505",
        'duplicate key value violates unique constraint "t_pkey"',
        "insert into t values (1)",
        None,
        "Key (id)=(1) already exists.",
        "Pick another id.",
    )
    assert lines == [
        'ERROR:  23505: duplicate key value violates unique constraint "t_pkey"',
        "DETAIL:  Key (id)=(1) already exists.",
        "HINT:  Pick another id.",
    ]


def test_pattern_filters() -> None:
    assert pattern_filters("") == ("", [])
    assert pattern_filters("Orders") == ("\n  AND c.relname = %s", ["orders"])
    assert pattern_filters('"Orders"') == ("\n  AND c.relname = %s", ["Orders"])
    assert pattern_filters("public.ord*") == (
        "\n  AND n.nspname = %s\n  AND c.relname LIKE %s",
        ["public", "ord%"],
    )
    assert pattern_filters("t?") == ("\n  AND c.relname LIKE %s", ["t_"])


def _cluster(tmp_path: Path, endpoints: dict[str, str], password_mode: int = 0o600) -> Path:
    password_file = tmp_path / "password"
    password_file.write_text("from-file\n")
    password_file.chmod(password_mode)
    document = {"endpoints": endpoints, "user": "admin", "password_file": str(password_file)}
    (tmp_path / "cluster.json").write_text(json.dumps(document))
    return tmp_path


WRITER = "postgresql://admin@127.0.0.1:7500/borealis"
READER = "postgresql://admin@127.0.0.1:7501/borealis"


def test_target_from_cluster_file(tmp_path: Path) -> None:
    data_dir = _cluster(tmp_path, {"writer": WRITER, "reader": READER})
    target = resolve_target(data_dir, reader=False, dsn=None, environ={})
    assert (target.url, target.user, target.password, target.note) == (
        WRITER,
        "admin",
        "from-file",
        None,
    )
    assert resolve_target(data_dir, reader=True, dsn=None, environ={}).url == READER
    assert resolve_target(data_dir, False, None, {"PGPASSWORD": "env"}).password == "env"


def test_reader_falls_back_to_the_writer_with_a_note(tmp_path: Path) -> None:
    target = resolve_target(_cluster(tmp_path, {"writer": WRITER}), True, None, {})
    assert target.url == WRITER
    assert target.note is not None and "writer" in target.note


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    data_dir = _cluster(tmp_path, {"writer": WRITER}, password_mode=0o644)
    with pytest.raises(InvalidRequest, match="chmod 600"):
        resolve_target(data_dir, False, None, {})
    # PGPASSWORD wins: the file is not read at all.
    assert resolve_target(data_dir, False, None, {"PGPASSWORD": "env"}).password == "env"
    with pytest.raises(NotFound):
        read_password_file(tmp_path / "missing")


def test_missing_cluster_file_or_writer_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="cluster.json"):
        resolve_target(tmp_path, False, None, {})
    with pytest.raises(NotFound, match="endpoints.writer"):
        resolve_target(_cluster(tmp_path, {}), False, None, {})
