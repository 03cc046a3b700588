"""COPY text and csv parsing across chunk boundaries, and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borealis.errors import SqlError
from borealis.pgwire.backend import CopySpec
from borealis.pgwire.copy import CopyInParser, format_rows

pytestmark = pytest.mark.unit

TEXT_IN = CopySpec("in", "text", 3)
CSV_IN = CopySpec("in", "csv", 3, delimiter=",", null="")


def parse_chunked(spec: CopySpec, data: bytes, chunk_bytes: int) -> list[list[str | None]]:
    parser = CopyInParser(spec)
    rows = []
    for start in range(0, len(data), chunk_bytes):
        rows.extend(parser.feed(data[start : start + chunk_bytes]))
    rows.extend(parser.finish())
    return rows


@pytest.mark.parametrize("chunk_bytes", [1, 3, 1000])
def test_text_rows_with_escapes_and_nulls(chunk_bytes: int) -> None:
    data = "1\tplain\t\\N\n2\ttab\\there\\\\\tnew\\nline\n3\tünï\t\\x41\\101\n".encode()
    assert parse_chunked(TEXT_IN, data, chunk_bytes) == [
        ["1", "plain", None],
        ["2", "tab\there\\", "new\nline"],
        ["3", "ünï", "AA"],
    ]


def test_text_end_marker_header_and_missing_final_newline() -> None:
    spec = CopySpec("in", "text", 2, header=True)
    assert parse_chunked(spec, b"a\tb\n1\t2\n\\.\nignored\n", 4) == [["1", "2"]]
    assert parse_chunked(CopySpec("in", "text", 1), b"1\n2", 10) == [["1"], ["2"]]


@pytest.mark.parametrize("chunk_bytes", [1, 5, 1000])
def test_csv_quotes_newlines_and_nulls(chunk_bytes: int) -> None:
    data = b'1,"a,b",\n2,"say ""hi""","multi\nline"\n3,"",x\r\n'
    assert parse_chunked(CSV_IN, data, chunk_bytes) == [
        ["1", "a,b", None],
        ["2", 'say "hi"', "multi\nline"],
        ["3", "", "x"],
    ]


def test_csv_header_and_custom_escape() -> None:
    spec = CopySpec("in", "csv", 2, delimiter=";", null="NULL", header=True, escape="\\")
    assert parse_chunked(spec, b'h1;h2\n"a\\"b";NULL\n', 3) == [['a"b', None]]


@pytest.mark.parametrize(
    ("spec", "data", "sqlstate"),
    [
        (TEXT_IN, b"1\t2\n", "22P04"),
        (TEXT_IN, b"1\t2\t3\t4\n", "22P04"),
        (CSV_IN, b'1,2,"open\n', "22P04"),
        (TEXT_IN, b"\xff\xfe\t1\t2\n", "22021"),
    ],
)
def test_bad_copy_input(spec: CopySpec, data: bytes, sqlstate: str) -> None:
    with pytest.raises(SqlError) as raised:
        parse_chunked(spec, data, 1000)
    assert raised.value.sqlstate == sqlstate


def test_row_longer_than_the_limit_is_54000() -> None:
    parser = CopyInParser(CopySpec("in", "text", 1), row_bytes_max=100)
    with pytest.raises(SqlError) as raised:
        for _ in range(10):
            parser.feed(b"x" * 50)
    assert raised.value.sqlstate == "54000"
    csv = CopyInParser(CopySpec("in", "csv", 1, delimiter=",", null=""), row_bytes_max=100)
    csv.feed(b'"open quoted field\n')
    with pytest.raises(SqlError) as raised:
        for _ in range(10):
            csv.feed(b"y" * 40 + b"\n")
    assert raised.value.sqlstate == "54000"


def test_format_rows_text_and_csv() -> None:
    text_out = CopySpec("out", "text", 3)
    assert format_rows(text_out, [23, 25, 16], [(1, "a\tb\nc\\", 1), (None, "x", 0)]) == [
        b"1\ta\\tb\\nc\\\\\tt\n",
        b"\\N\tx\tf\n",
    ]
    csv_out = CopySpec("out", "csv", 3, delimiter=",", null="", header=True)
    assert format_rows(
        csv_out, [25, 25, 701], [("", 'q"', 1.5), (None, "a,b", None)], ["a", "b", "c"]
    ) == [
        b"a,b,c\n",
        b'"","q""",1.5\n',
        b',"a,b",\n',
    ]


field = st.none() | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)


@given(rows=st.lists(st.lists(field, min_size=2, max_size=2), max_size=8), chunk=st.integers(1, 7))
def test_formatted_rows_parse_back(rows: list[list[str | None]], chunk: int) -> None:
    for fmt, delimiter, null in (("text", "\t", "\\N"), ("csv", ",", "")):
        out = CopySpec("out", fmt, 2, delimiter=delimiter, null=null)  # type: ignore[arg-type]
        data = b"".join(format_rows(out, [25, 25], rows))
        spec_in = CopySpec("in", fmt, 2, delimiter=delimiter, null=null)  # type: ignore[arg-type]
        parsed = parse_chunked(spec_in, data, chunk)
        # "\." alone on a line ends text data, as in PostgreSQL; skip that corner.
        if fmt == "text" and any(row[0] == "\\." for row in rows):
            continue
        assert parsed == rows
