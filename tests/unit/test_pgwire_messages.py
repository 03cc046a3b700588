"""The sans-IO framing: frontend parsing (malformed input included) and backend builders."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borealis.errors import SqlError
from borealis.pgwire import messages as m
from borealis.pgwire import types
from borealis.pgwire.backend import Column

pytestmark = pytest.mark.unit


def typed(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def startup_packet(parameters: dict[str, str]) -> bytes:
    body = struct.pack("!i", m.PROTOCOL_VERSION_3)
    body += b"".join(f"{k}\x00{v}\x00".encode() for k, v in parameters.items()) + b"\x00"
    return struct.pack("!i", len(body) + 4) + body


def parser(query_bytes_max: int = 1024, startup: bool = False) -> m.FrontendParser:
    made = m.FrontendParser(message_bytes_max=4096, query_bytes_max=query_bytes_max)
    made.startup_phase = startup
    return made


def all_messages(feed: m.FrontendParser) -> list[m.FrontendMessage]:
    found = []
    while (message := feed.next()) is not None:
        found.append(message)
    return found


def test_startup_ssl_and_cancel_packets() -> None:
    feed = parser(startup=True)
    feed.feed(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
    feed.feed(struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE))
    feed.feed(startup_packet({"user": "bob", "database": "db"}))
    feed.feed(typed(b"S", b""))
    assert all_messages(feed) == [
        m.SSLRequest(),
        m.GSSENCRequest(),
        m.StartupMessage(m.PROTOCOL_VERSION_3, {"user": "bob", "database": "db"}),
        m.Sync(),
    ]
    cancel = parser(startup=True)
    cancel.feed(struct.pack("!iiii", 16, m.CANCEL_REQUEST_CODE, 7, -9))
    assert cancel.next() == m.CancelRequest(7, -9)


def test_every_typed_message_parses_even_fed_byte_by_byte() -> None:
    stream = b"".join(
        [
            typed(b"Q", b"SELECT 1\x00"),
            typed(b"P", b"s\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"),
            typed(
                b"B",
                b"p\x00s\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff\x00\x00",
            ),
            typed(b"D", b"Pp\x00"),
            typed(b"E", b"p\x00\x00\x00\x00\x05"),
            typed(b"C", b"Ss\x00"),
            typed(b"H", b""),
            typed(b"d", b"1\t2\n"),
            typed(b"c", b""),
            typed(b"f", b"oops\x00"),
            typed(b"p", b"raw"),
            typed(b"X", b""),
        ]
    )
    feed = parser()
    found = []
    for index in range(len(stream)):
        feed.feed(stream[index : index + 1])
        found.extend(all_messages(feed))
    assert found == [
        m.Query(b"SELECT 1"),
        m.Parse(b"s", b"SELECT $1", (23,)),
        m.Bind(b"p", b"s", (1,), (b"hi", None), ()),
        m.Describe(b"P", b"p"),
        m.Execute(b"p", 5),
        m.Close(b"S", b"s"),
        m.Flush(),
        m.CopyData(b"1\t2\n"),
        m.CopyDone(),
        m.CopyFail(b"oops"),
        m.PasswordMessage(b"raw"),
        m.Terminate(),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        typed(b"Q", b"SELECT 1"),  # no NUL terminator
        typed(b"Q", b"SELECT 1\x00extra"),  # trailing bytes
        typed(b"Z", b""),  # not a frontend message type
        b"Q\x00\x00\x00\x02",  # length below 4
        typed(b"B", b"p\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x01x"),  # count > data
        typed(b"B", b"p\x00s\x00\x00\x01\x00\x07\x00\x00\x00\x00"),  # format code 7
        typed(b"D", b"Xname\x00"),  # describe kind
        typed(b"E", b"p\x00\x00\x00"),  # truncated int32
        typed(b"S", b"x"),  # Sync with a body
        typed(b"d", b"x" * 5000),  # over message_bytes_max
    ],
)
def test_malformed_messages_are_protocol_violations(raw: bytes) -> None:
    feed = parser()
    feed.feed(raw)
    with pytest.raises(m.ProtocolViolation) as raised:
        feed.next()
    assert raised.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("!i", 4),  # shorter than a code
        struct.pack("!i", 20000) + b"\x00" * 16,  # over the startup limit
        b"GET / HTTP/1.1\r\n",
        struct.pack("!ii", 12, m.SSL_REQUEST_CODE) + b"\x00" * 4,  # SSLRequest with extra
        struct.pack("!ii", 14, m.PROTOCOL_VERSION_3) + b"user\x00x",  # unterminated
    ],
)
def test_malformed_startup_packets(raw: bytes) -> None:
    feed = parser(startup=True)
    feed.feed(raw)
    with pytest.raises(m.ProtocolViolation):
        feed.next()


def test_oversized_query_is_skipped_without_buffering() -> None:
    feed = parser(query_bytes_max=100)
    body = b"x" * 100_000 + b"\x00"
    stream = typed(b"Q", body) + typed(b"S", b"")
    feed.feed(stream[:1000])
    assert feed.next() == m.Oversized(b"Q", len(body))
    assert feed.buffered_bytes == 0
    for start in range(1000, len(stream), 4096):
        feed.feed(stream[start : start + 4096])
        assert feed.buffered_bytes <= 5
    assert all_messages(feed) == [m.Sync()]


def test_oversized_parse_fully_buffered_is_skipped() -> None:
    feed = parser(query_bytes_max=10)
    feed.feed(typed(b"P", b"\x00" + b"y" * 50 + b"\x00\x00\x00") + typed(b"H", b""))
    assert all_messages(feed) == [m.Oversized(b"P", 54), m.Flush()]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    for startup in (True, False):
        feed = parser(startup=startup)
        feed.feed(data)
        with contextlib.suppress(m.ProtocolViolation):
            all_messages(feed)


def test_sasl_initial_response() -> None:
    body = b"SCRAM-SHA-256\x00" + struct.pack("!i", 3) + b"abc"
    assert m.parse_sasl_initial_response(body) == ("SCRAM-SHA-256", b"abc")
    with pytest.raises(m.ProtocolViolation):
        m.parse_sasl_initial_response(b"SCRAM-SHA-256\x00" + struct.pack("!i", 9) + b"abc")


def test_error_response_fields() -> None:
    built = m.error_response("42601", "syntax error", detail="d", hint="h", position=12)
    assert built[:1] == b"E"
    assert struct.unpack("!i", built[1:5])[0] == len(built) - 1
    fields = built[5:].split(b"\x00")
    assert fields[:7] == [b"SERROR", b"VERROR", b"C42601", b"Msyntax error", b"Dd", b"Hh", b"P12"]
    assert m.error_response("01000", "n", severity="NOTICE", notice=True)[:1] == b"N"


def test_row_description_and_data_rows() -> None:
    columns = (Column("a", 23, 1234, 1), Column("b", 25))
    built = m.row_description(columns, [1, 0])
    assert built[:1] == b"T"
    assert built[5:7] == b"\x00\x02"
    assert built[7:9] == b"a\x00"
    assert struct.unpack("!iHIhih", built[9:27]) == (1234, 1, 23, 4, -1, 1)
    builder = m.DataRowBuilder([types.encoder(23, 1), types.encoder(25, 0)])
    row = builder.build((7, None))
    assert (
        row == b"D" + struct.pack("!ih", 4 + 2 + 8 + 4, 2) + struct.pack("!ii", 4, 7) + b"\xff" * 4
    )
    with pytest.raises(SqlError):
        builder.build((1,))


def test_small_backend_messages() -> None:
    assert m.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert m.command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    assert (
        m.parameter_description([23, 25])
        == b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"
    )
    assert m.copy_in_response(False, 2) == b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"
    assert m.authentication_sasl(["SCRAM-SHA-256"]).endswith(b"SCRAM-SHA-256\x00\x00")
    assert m.backend_key_data(1, -1) == b"K\x00\x00\x00\x0c\x00\x00\x00\x01\xff\xff\xff\xff"
