"""Codecs between wire values and SQLite-world values, in both formats."""

from __future__ import annotations

import contextlib
import datetime as dt
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borealis.errors import SqlError
from borealis.pgwire import types
from borealis.pgwire.types import decode_parameter, encode_value, encoder, oid_of

pytestmark = pytest.mark.unit

FORMATS = [types.TEXT_FORMAT, types.BINARY_FORMAT]


def round_trip(type_name: str, value: Any, format_code: int) -> Any:
    oid = oid_of(type_name)
    return decode_parameter(oid, format_code, encoder(oid, format_code)(value))


def test_type_table_is_intact() -> None:
    assert oid_of("int4") == 23 and oid_of("no such type") == 25
    assert types.BY_OID[3802].name == "jsonb"


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.integers(-(2**15), 2**15 - 1))
def test_int2_round_trip(format_code: int, value: int) -> None:
    assert round_trip("int2", value, format_code) == value


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.integers(-(2**63), 2**63 - 1))
def test_int8_round_trip(format_code: int, value: int) -> None:
    assert round_trip("int8", value, format_code) == value
    if -(2**31) <= value < 2**31:
        assert round_trip("int4", value, format_code) == value


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.floats(allow_nan=False))
def test_float8_round_trip(format_code: int, value: float) -> None:
    assert round_trip("float8", value, format_code) == value


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.floats(width=32, allow_nan=False))
def test_float4_round_trip(format_code: int, value: float) -> None:
    assert round_trip("float4", value, format_code) == value


@pytest.mark.parametrize("format_code", FORMATS)
@given(
    value=st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 1000
    )
)
def test_numeric_round_trip(format_code: int, value: Decimal) -> None:
    decoded = round_trip("numeric", str(value), format_code)
    assert Decimal(decoded) == value
    assert decoded == types.numeric_text(Decimal(decoded))


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.text(alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=1)))
def test_text_round_trip(format_code: int, value: str) -> None:
    for type_name in ("text", "varchar", "bpchar"):
        assert round_trip(type_name, value, format_code) == value


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.binary())
def test_bytea_round_trip(format_code: int, value: bytes) -> None:
    assert round_trip("bytea", value, format_code) == value


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.dates())
def test_date_round_trip(format_code: int, value: dt.date) -> None:
    assert round_trip("date", value.isoformat(), format_code) == value.isoformat()


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.datetimes())
def test_timestamp_round_trip(format_code: int, value: dt.datetime) -> None:
    canonical = types.timestamp_text(value)
    assert round_trip("timestamp", canonical, format_code) == canonical
    assert round_trip("timestamp", value.isoformat(), format_code) == canonical


@pytest.mark.parametrize("format_code", FORMATS)
@given(
    value=st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 1, 1)),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_timestamptz_round_trip(format_code: int, value: dt.datetime, offset_minutes: int) -> None:
    zoned = value.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    # Stored in UTC with a zone SQLite reads; printed as PostgreSQL prints it.
    stored = types.timestamptz_stored(zoned)
    assert stored.endswith("+00:00")
    assert types.timestamptz_text(zoned) == stored.removesuffix(":00")
    assert round_trip("timestamptz", zoned.isoformat(), format_code) == stored
    assert round_trip("timestamptz", stored, format_code) == stored


@pytest.mark.parametrize("format_code", FORMATS)
@given(value=st.uuids())
def test_uuid_round_trip(format_code: int, value: Any) -> None:
    assert round_trip("uuid", str(value).upper(), format_code) == str(value)


@pytest.mark.parametrize("format_code", FORMATS)
@settings(max_examples=40)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=10,
    )
)
def test_json_round_trip(format_code: int, value: Any) -> None:
    import json

    text = json.dumps(value)
    for type_name in ("json", "jsonb"):
        assert round_trip(type_name, text, format_code) == text


@pytest.mark.parametrize("format_code", FORMATS)
def test_bool_round_trip(format_code: int) -> None:
    assert round_trip("bool", 1, format_code) == 1
    assert round_trip("bool", 0, format_code) == 0
    assert encoder(16, 0)(1) == b"t" and encoder(16, 1)(0) == b"\x00"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e15, "1e+15"),
        (123456789012345.0, "123456789012345"),
        (1234567890123456.0, "1.234567890123456e+15"),
        (1e16, "1e+16"),
        (1e-4, "0.0001"),
        (1.5e-5, "1.5e-05"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (float("nan"), "NaN"),
        (0.0, "0"),
        (-0.0, "-0"),
    ],
)
def test_float8_text_like_postgres(value: float, text: str) -> None:
    assert encoder(701, 0)(value) == text.encode()


def test_float4_text_like_postgres() -> None:
    assert encoder(700, 0)(0.1) == b"0.1"
    assert encoder(700, 0)(1e6) == b"1e+06"
    assert encoder(700, 0)(123456.0) == b"123456"
    assert encoder(700, 0)(3) == b"3"


def test_numeric_outputs() -> None:
    assert encoder(1700, 0)(12) == b"12"
    assert encoder(1700, 0)(2.5) == b"2.5"
    assert encoder(1700, 0)(1e20) == b"100000000000000000000"
    assert encoder(1700, 0)(float("inf")) == b"Infinity"
    assert encoder(1700, 0)("NaN") == b"NaN"
    assert decode_parameter(1700, 0, b" 1e3 ") == "1000"
    assert decode_parameter(1700, 1, encoder(1700, 1)("-Infinity")) == "-Infinity"
    assert decode_parameter(1700, 1, encoder(1700, 1)("0.00")) == "0.00"
    # PostgreSQL's own binary for 12345.678: ndigits 3, weight 1, scale 3.
    assert encoder(1700, 1)("12345.678") == struct.pack("!hhHHhhh", 3, 1, 0, 3, 1, 2345, 6780)


def test_timestamps_as_postgres_prints_them() -> None:
    assert encoder(1184, 0)("2024-01-02T03:04:05.123") == b"2024-01-02 03:04:05.123+00"
    assert encoder(1184, 0)("2024-01-02 05:04:05+02:00") == b"2024-01-02 03:04:05+00"
    assert encoder(1114, 0)("2024-01-02T03:04:05") == b"2024-01-02 03:04:05"
    assert encoder(1114, 1)("2000-01-01 00:00:01") == struct.pack("!q", 1_000_000)
    assert encoder(1082, 1)("2000-01-02") == struct.pack("!i", 1)
    assert decode_parameter(1184, 0, b"2024-01-02 03:04:05-01") == "2024-01-02 04:04:05+00:00"


def test_catalog_types() -> None:
    assert encoder(26, 0)(16384) == b"16384"
    assert encoder(2205, 0)("pg_class") == b"pg_class"
    assert encoder(22, 0)("1 2") == b"1 2"
    assert encoder(19, 0)("name") == b"name"
    assert encoder(18, 0)("r") == b"r"
    vector = encoder(22, 1)("1 3")
    assert vector == struct.pack("!iiIiiihih", 1, 0, 21, 2, 0, 2, 1, 2, 3)


def test_text_of_non_strings() -> None:
    assert encoder(25, 0)(5) == b"5"
    assert encoder(25, 0)(0.5) == b"0.5"
    assert encoder(17, 0)(b"\x01\xab") == b"\\x01ab"
    assert encode_value(25, 0, None) is None
    assert decode_parameter(17, 0, b"a\\\\b\\001") == b"a\\b\x01"


@pytest.mark.parametrize(
    ("oid", "format_code", "data", "sqlstate"),
    [
        (23, 0, b"12x", "22P02"),
        (23, 0, b"2147483648", "22003"),
        (21, 1, b"\x00\x00\x00", "22P03"),
        (701, 0, b"one", "22P02"),
        (1700, 0, b"1.2.3", "22P02"),
        (1700, 0, b"1e999999", "22003"),
        (1700, 1, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10", "22P03"),
        (16, 0, b"maybe", "22P02"),
        (17, 0, b"\\xzz", "22P02"),
        (1082, 0, b"2024-13-01", "22007"),
        (1184, 0, b"yesterday-ish", "22007"),
        (2950, 0, b"not-a-uuid", "22P02"),
        (2950, 1, b"\x00" * 15, "22P03"),
        (3802, 1, b"\x02{}", "22P03"),
        (114, 0, b"{", "22P02"),
        (25, 0, b"\xff\xfe", "22021"),
        (1186, 1, b"\x00" * 16, "0A000"),
    ],
)
def test_bad_parameters_raise_sql_errors(
    oid: int, format_code: int, data: bytes, sqlstate: str
) -> None:
    with pytest.raises(SqlError) as raised:
        decode_parameter(oid, format_code, data)
    assert raised.value.sqlstate == sqlstate


@pytest.mark.parametrize(
    ("oid", "format_code", "value", "sqlstate"),
    [
        (23, 0, 2**31, "22003"),
        (23, 1, -(2**31) - 1, "22003"),
        (21, 1, 40000, "22003"),
        (20, 0, "abc", "22P02"),
        (700, 1, 1e300, "22003"),
        (1082, 0, "garbage", "22007"),
        (2950, 1, "nope", "22P02"),
    ],
)
def test_bad_results_raise_sql_errors(
    oid: int, format_code: int, value: Any, sqlstate: str
) -> None:
    with pytest.raises(SqlError) as raised:
        encoder(oid, format_code)(value)
    assert raised.value.sqlstate == sqlstate


@given(
    oid=st.sampled_from([each.oid for each in types.TYPES]),
    format_code=st.sampled_from(FORMATS),
    data=st.binary(max_size=40),
)
def test_arbitrary_parameter_bytes_never_crash(oid: int, format_code: int, data: bytes) -> None:
    with contextlib.suppress(SqlError):
        decode_parameter(oid, format_code, data)
