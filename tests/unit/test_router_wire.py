"""The router's message scanner: boundaries found however the stream is chunked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borealis.pgwire import messages as m
from router import wire

pytestmark = pytest.mark.unit

_Z = frozenset({wire.READY_FOR_QUERY})


def _stream() -> tuple[bytes, list[wire.Event]]:
    parts = [
        (b"1", b""),
        (b"D", b"\x00\x01\x00\x00\x00\x03abc"),
        (b"C", b"SELECT 1\x00"),
        (b"Z", b"I"),
        (b"T", b"x" * 300),
        (b"Z", b"T"),
    ]
    data = b"".join(wire.message(kind, body) for kind, body in parts)
    expected = [(k[0], body) for k, body in parts if k == b"Z"]
    return data, expected


@given(st.lists(st.integers(min_value=1, max_value=400), max_size=20))
def test_events_do_not_depend_on_chunking(cuts: list[int]) -> None:
    data, expected = _stream()
    scanner = wire.MessageScanner(_Z, _Z, 1024)
    events: list[wire.Event] = []
    position = 0
    for cut in cuts:
        events += scanner.feed(data[position : position + cut])
        position += cut
    events += scanner.feed(data[position:])
    assert events == expected
    assert not scanner.mid_message
    assert scanner.last_kind == ord("Z")


@given(st.lists(st.integers(min_value=1, max_value=400), max_size=20))
def test_uncaptured_reported_kinds_come_at_their_header(cuts: list[int]) -> None:
    data, _ = _stream()
    scanner = wire.MessageScanner(frozenset({ord("T"), ord("D")}), frozenset(), 1024)
    events: list[wire.Event] = []
    position = 0
    for cut in cuts:
        events += scanner.feed(data[position : position + cut])
        position += cut
    events += scanner.feed(data[position:])
    assert events == [(ord("D"), None), (ord("T"), None)]


def test_mid_message_while_a_message_is_incomplete() -> None:
    scanner = wire.MessageScanner(frozenset({wire.QUERY}), frozenset({wire.QUERY}), 1024)
    query = wire.message(b"Q", b"select 1\x00")
    assert scanner.feed(query[:3]) == []
    assert scanner.mid_message
    assert scanner.feed(query[3:7]) == []
    assert scanner.mid_message
    assert scanner.feed(query[7:]) == [(wire.QUERY, b"select 1\x00")]
    assert not scanner.mid_message


def test_bad_length_and_oversized_capture_are_protocol_violations() -> None:
    with pytest.raises(m.ProtocolViolation):
        wire.MessageScanner(_Z, _Z, 1024).feed(b"Z\x00\x00\x00\x02")
    with pytest.raises(m.ProtocolViolation):
        wire.MessageScanner(_Z, _Z, 8).feed(wire.message(b"Z", b"x" * 9))


def test_startup_message_parses_back() -> None:
    packet = wire.startup_message({"user": "alice", "database": "db"})
    parsed = m.parse_startup(packet[4:])
    assert isinstance(parsed, m.StartupMessage)
    assert parsed.parameters == {"user": "alice", "database": "db"}
    assert parsed.version == m.PROTOCOL_VERSION_3


def test_cancel_request_parses_back() -> None:
    assert m.parse_startup(wire.cancel_request(7, -3)[4:]) == m.CancelRequest(7, -3)


def test_deallocate_detection_and_error_fields() -> None:
    assert wire.is_deallocate(b"  DEALLOCATE foo\x00")
    assert not wire.is_deallocate(b"select 'deallocate'\x00")
    body = m.error_response("28P01", "nope", severity="FATAL")[5:]
    assert wire.error_fields(body)["C"] == "28P01"
    assert wire.error_fields(body)["M"] == "nope"
