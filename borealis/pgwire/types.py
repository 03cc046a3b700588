"""PostgreSQL data types: the OIDs clients know, and (added with the server) the
text and binary codecs between wire values and the SQLite world's Python values.

The table is the one place type OIDs are written down; the catalog emulation
(pg_type) and the protocol server both read it.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, NamedTuple

from borealis.errors import SqlError


class PgType(NamedTuple):
    oid: int
    name: str
    length: int
    """typlen: bytes of a fixed-size value, -1 variable, -2 C string."""
    category: str
    """typcategory: B bool, N numeric, S string, D date/time, U user, T timespan, ..."""
    array_oid: int


TYPES: tuple[PgType, ...] = (
    PgType(16, "bool", 1, "B", 1000),
    PgType(17, "bytea", -1, "U", 1001),
    PgType(18, "char", 1, "Z", 1002),
    PgType(19, "name", 64, "S", 1003),
    PgType(20, "int8", 8, "N", 1016),
    PgType(21, "int2", 2, "N", 1005),
    PgType(22, "int2vector", -1, "A", 1006),
    PgType(23, "int4", 4, "N", 1007),
    PgType(24, "regproc", 4, "N", 1008),
    PgType(25, "text", -1, "S", 1009),
    PgType(26, "oid", 4, "N", 1028),
    PgType(30, "oidvector", -1, "A", 1013),
    PgType(114, "json", -1, "U", 199),
    PgType(194, "pg_node_tree", -1, "Z", 0),
    PgType(700, "float4", 4, "N", 1021),
    PgType(701, "float8", 8, "N", 1022),
    PgType(705, "unknown", -2, "X", 0),
    PgType(1042, "bpchar", -1, "S", 1014),
    PgType(1043, "varchar", -1, "S", 1015),
    PgType(1082, "date", 4, "D", 1182),
    PgType(1083, "time", 8, "D", 1183),
    PgType(1114, "timestamp", 8, "D", 1115),
    PgType(1184, "timestamptz", 8, "D", 1185),
    PgType(1186, "interval", 16, "T", 1187),
    PgType(1700, "numeric", -1, "N", 1231),
    PgType(2205, "regclass", 4, "N", 2210),
    PgType(2206, "regtype", 4, "N", 2211),
    PgType(2249, "record", -1, "P", 2287),
    PgType(2278, "void", 4, "P", 0),
    PgType(2950, "uuid", 16, "U", 2951),
    PgType(3802, "jsonb", -1, "U", 3807),
)

BY_OID: dict[int, PgType] = {each.oid: each for each in TYPES}
BY_NAME: dict[str, PgType] = {each.name: each for each in TYPES}
# Array types, for pg_type rows and element lookups: array OID -> element type.
ARRAY_ELEMENT: dict[int, PgType] = {each.array_oid: each for each in TYPES if each.array_oid}


def oid_of(name: str) -> int:
    """The OID of a canonical type name ("int4", "text", ...); unknown names are text."""
    found = BY_NAME.get(name)
    if found is None and name.startswith("_"):
        # An array type by its pg_type name ("_text"): the element's array OID.
        element = BY_NAME.get(name[1:])
        if element is not None and element.array_oid:
            return element.array_oid
    return found.oid if found is not None else BY_NAME["text"].oid


# ---------------------------------------------------------------------------
# Codecs between wire values and the SQLite world's values (None, int, float,
# str, bytes). Decoders take a parameter of a Bind message; encoders make the
# bytes of a result column. Bad client input raises SqlError, never a crash.
# ---------------------------------------------------------------------------

TEXT_FORMAT = 0
BINARY_FORMAT = 1

# PostgreSQL's epoch for binary dates and timestamps.
_POSTGRES_EPOCH_DATE = date(2000, 1, 1)
_POSTGRES_EPOCH_ORDINAL = _POSTGRES_EPOCH_DATE.toordinal()
_POSTGRES_EPOCH = datetime(2000, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)

# Limits of PostgreSQL's numeric: digits before and after the decimal point.
_NUMERIC_INTEGER_DIGITS_MAX = 131072
_NUMERIC_SCALE_MAX = 16383
_NUMERIC_GROUPS_MAX = (_NUMERIC_INTEGER_DIGITS_MAX + _NUMERIC_SCALE_MAX) // 4 + 2
_NUMERIC_POSITIVE = 0x0000
_NUMERIC_NEGATIVE = 0x4000
_NUMERIC_NAN = 0xC000
_NUMERIC_PINF = 0xD000
_NUMERIC_NINF = 0xF000

_INT_RANGES: dict[int, tuple[int, int, str]] = {
    21: (-(2**15), 2**15 - 1, "smallint"),
    23: (-(2**31), 2**31 - 1, "integer"),
    20: (_INT64_MIN, _INT64_MAX, "bigint"),
    26: (0, 2**32 - 1, "oid"),
    24: (0, 2**32 - 1, "oid"),
    2205: (0, 2**32 - 1, "oid"),
    2206: (0, 2**32 - 1, "oid"),
}
_INT_STRUCTS: dict[int, struct.Struct] = {
    21: struct.Struct("!h"),
    23: struct.Struct("!i"),
    20: struct.Struct("!q"),
    26: struct.Struct("!I"),
    24: struct.Struct("!I"),
    2205: struct.Struct("!I"),
    2206: struct.Struct("!I"),
}
_FLOAT4 = struct.Struct("!f")
_FLOAT4_MAX = 3.4028234663852886e38
_FLOAT4_ROUNDS_TO_MAX = 2.0**128 - 2.0**103
_FLOAT8 = struct.Struct("!d")
_INT32 = struct.Struct("!i")
_INT64 = struct.Struct("!q")
_NUMERIC_HEADER = struct.Struct("!hhHH")
_ARRAY_HEADER = struct.Struct("!iiIii")

_TRUE_WORDS = frozenset(("t", "true", "y", "yes", "on", "1"))
_FALSE_WORDS = frozenset(("f", "false", "n", "no", "off", "0"))
_STRING_OIDS = frozenset((0, 18, 19, 25, 194, 705, 1042, 1043))

Encoder = Callable[[Any], bytes]


def _invalid(type_name: str, text: object) -> SqlError:
    return SqlError(f'invalid input syntax for type {type_name}: "{text}"', "22P02")


def _bad_binary(type_name: str) -> SqlError:
    return SqlError(f"incorrect binary data format for type {type_name}", "22P03")


def _out_of_range(type_name: str) -> SqlError:
    return SqlError(f"value out of range for type {type_name}", "22003")


def _type_name(oid: int) -> str:
    found = BY_OID.get(oid)
    return found.name if found is not None else str(oid)


# --- text parsing, shared by the text decoders and the encoders of stored text ---


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SqlError('invalid byte sequence for encoding "UTF8"', "22021") from None


def parse_int(text: str, oid: int) -> int:
    low, high, name = _INT_RANGES[oid]
    try:
        value = int(text.strip())
    except ValueError:
        raise _invalid(name, text) from None
    if not low <= value <= high:
        raise SqlError(f'value "{text}" is out of range for type {name}', "22003")
    return value


def parse_float(text: str, type_name: str = "double precision") -> float:
    stripped = text.strip()
    # Python accepts "1_000" and "infinity" spellings PostgreSQL does not care
    # about either way; underscores are refused to match PostgreSQL.
    if "_" in stripped:
        raise _invalid(type_name, text)
    try:
        return float(stripped)
    except ValueError:
        raise _invalid(type_name, text) from None


def _single(value: float) -> float:
    """A float4 value holds what a float32 can: round as PostgreSQL's float4in does."""
    try:
        return float(_FLOAT4.unpack(_FLOAT4.pack(value))[0])
    except OverflowError:
        # struct refuses values past the float4 maximum that still round to it.
        if abs(value) < _FLOAT4_ROUNDS_TO_MAX:
            return math.copysign(_FLOAT4_MAX, value)
        raise _out_of_range("real") from None


def parse_numeric(text: str) -> Decimal:
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("infinity", "+infinity", "inf", "+inf"):
        return Decimal("Infinity")
    if lowered in ("-infinity", "-inf"):
        return Decimal("-Infinity")
    if "_" in stripped or lowered.startswith(("snan", "-snan", "+snan")):
        raise _invalid("numeric", text)
    try:
        value = Decimal(stripped)
    except InvalidOperation:
        raise _invalid("numeric", text) from None
    _check_numeric_range(value)
    return value


def _check_numeric_range(value: Decimal) -> None:
    if not value.is_finite():
        return
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if value.adjusted() >= _NUMERIC_INTEGER_DIGITS_MAX or -exponent > _NUMERIC_SCALE_MAX:
        raise SqlError("value overflows numeric format", "22003")


def numeric_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "-Infinity" if value < 0 else "Infinity"
    text = format(value, "f")
    return text[1:] if text.startswith("-") and not value else text


def parse_bool(text: str) -> int:
    lowered = text.strip().lower()
    if lowered in _TRUE_WORDS:
        return 1
    if lowered in _FALSE_WORDS:
        return 0
    raise _invalid("boolean", text)


def parse_bytea_text(text: str) -> bytes:
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise _invalid("bytea", text) from None
    return _parse_bytea_escape(text)


def _parse_bytea_escape(text: str) -> bytes:
    out = bytearray()
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char != "\\":
            out += char.encode("utf-8")
            index += 1
        elif text.startswith("\\\\", index):
            out.append(0x5C)
            index += 2
        elif _is_octal(text[index + 1 : index + 4]):
            out.append(int(text[index + 1 : index + 4], 8))
            index += 4
        else:
            raise _invalid("bytea", text)
    return bytes(out)


def _is_octal(digits: str) -> bool:
    return (
        len(digits) == 3
        and digits[0] in "0123"
        and digits[1] in "01234567"
        and digits[2] in "01234567"
    )


def parse_date(text: str) -> date:
    """Stored or client text of a date; a time part after it is ignored."""
    stripped = text.strip()
    try:
        return date.fromisoformat(stripped[:10])
    except ValueError:
        raise SqlError(f'invalid input syntax for type date: "{text}"', "22007") from None


def parse_timestamp(text: str, type_name: str = "timestamp") -> datetime:
    """Stored or client text of a timestamp: 'T' or space, optional fraction and zone."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    raise SqlError(f'invalid input syntax for type {type_name}: "{text}"', "22007")


def _utc(moment: datetime) -> datetime:
    """A naive timestamp is taken as UTC: the session TimeZone is always UTC."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def timestamp_text(moment: datetime) -> str:
    text = moment.strftime("%Y-%m-%d %H:%M:%S") if moment.year >= 1000 else _padded(moment)
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text


def _padded(moment: datetime) -> str:
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )


def timestamptz_text(moment: datetime) -> str:
    """As PostgreSQL prints a timestamptz with TimeZone UTC."""
    return timestamp_text(_utc(moment)) + "+00"


# How a timestamptz is stored: UTC with a zone SQLite's date functions read.
STORED_UTC_SUFFIX = "+00:00"


def timestamptz_stored(moment: datetime) -> str:
    """A timestamptz as stored in SQLite: UTC, 'YYYY-MM-DD HH:MM:SS[.ffffff]+00:00'."""
    return timestamp_text(_utc(moment)) + STORED_UTC_SUFFIX


def parse_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise _invalid("uuid", text) from None


def parse_json(text: str, type_name: str) -> str:
    try:
        json.loads(text)
    except ValueError:
        raise _invalid(type_name, text) from None
    return text


def float_text(value: float, digits_fixed_max: int = 15) -> str:
    """PostgreSQL 15's float8out: the shortest text that reads back exactly, fixed
    notation for decimal exponents in [-4, 15), exponential otherwise."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return _shortest_to_postgres(repr(value), digits_fixed_max)


def float4_text(value: float) -> str:
    """PostgreSQL's float4out: shortest digits that read back as the same float4."""
    if value != value or value in (math.inf, -math.inf):
        return float_text(value)
    single = _single(value)
    for precision in range(1, 10):
        candidate = f"{single:.{precision}g}"
        if abs(float(candidate)) < _FLOAT4_ROUNDS_TO_MAX and _single(float(candidate)) == single:
            return _shortest_to_postgres(repr(float(candidate)), 6)
    raise AssertionError("9 significant digits always round-trip a float4")


def _shortest_to_postgres(shortest: str, digits_fixed_max: int) -> str:
    """Rewrites Python's shortest repr into PostgreSQL's layout."""
    sign = "-" if shortest.startswith("-") else ""
    body = shortest.lstrip("-")
    mantissa, _, exponent_text = body.partition("e")
    exponent_shift = int(exponent_text) if exponent_text else 0
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return sign + "0"
    # The decimal exponent of the first significant digit.
    exponent = len(whole.lstrip("0")) - 1 + exponent_shift if whole.strip("0") else None
    if exponent is None:
        exponent = -(len(fraction) - len(fraction.lstrip("0")) + 1) + exponent_shift
    digits = digits.rstrip("0")
    if -4 <= exponent < digits_fixed_max:
        return sign + _fixed(digits, exponent)
    mantissa_text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa_text}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _fixed(digits: str, exponent: int) -> str:
    if exponent < 0:
        return "0." + "0" * (-exponent - 1) + digits
    if len(digits) <= exponent + 1:
        return digits + "0" * (exponent + 1 - len(digits))
    return digits[: exponent + 1] + "." + digits[exponent + 1 :]


# --- decoding Bind parameters ---


def decode_parameter(oid: int, format_code: int, data: bytes | None) -> Any:
    """A Bind parameter as a SQLite-world value (None, int, float, str, bytes)."""
    if data is None:
        return None
    if format_code == TEXT_FORMAT:
        decoder = _TEXT_DECODERS.get(oid)
        text = _utf8(data)
        return decoder(text) if decoder is not None else text
    if format_code == BINARY_FORMAT:
        binary = _BINARY_DECODERS.get(oid)
        if binary is None:
            raise SqlError(f"binary format for type {_type_name(oid)} is not supported", "0A000")
        return binary(data)
    raise SqlError(f"unsupported format code: {format_code}", "08P01")


def _decode_int_binary(oid: int) -> Callable[[bytes], int]:
    layout = _INT_STRUCTS[oid]
    name = _INT_RANGES[oid][2]

    def decode(data: bytes) -> int:
        if len(data) != layout.size:
            raise _bad_binary(name)
        return int(layout.unpack(data)[0])

    return decode


def _decode_float_binary(layout: struct.Struct, name: str) -> Callable[[bytes], float]:
    def decode(data: bytes) -> float:
        if len(data) != layout.size:
            raise _bad_binary(name)
        return float(layout.unpack(data)[0])

    return decode


def _decode_bool_binary(data: bytes) -> int:
    if len(data) != 1 or data[0] > 1:
        raise _bad_binary("boolean")
    return data[0]


def _decode_numeric_binary(data: bytes) -> str:
    if len(data) < _NUMERIC_HEADER.size:
        raise _bad_binary("numeric")
    groups_count, weight, sign, scale = _NUMERIC_HEADER.unpack_from(data)
    if sign == _NUMERIC_NAN:
        return "NaN"
    if sign in (_NUMERIC_PINF, _NUMERIC_NINF):
        return "Infinity" if sign == _NUMERIC_PINF else "-Infinity"
    valid = sign in (_NUMERIC_POSITIVE, _NUMERIC_NEGATIVE) and scale <= _NUMERIC_SCALE_MAX
    if not valid or groups_count < 0 or len(data) != _NUMERIC_HEADER.size + 2 * groups_count:
        raise _bad_binary("numeric")
    groups = struct.unpack_from(f"!{groups_count}h", data, _NUMERIC_HEADER.size)
    if any(not 0 <= group <= 9999 for group in groups):
        raise _bad_binary("numeric")
    value = _numeric_from_groups(groups, weight, scale, sign == _NUMERIC_NEGATIVE)
    _check_numeric_range(value)
    return numeric_text(value)


def _numeric_from_groups(
    groups: tuple[int, ...], weight: int, scale: int, negative: bool
) -> Decimal:
    digits = "".join(f"{group:04d}" for group in groups) or "0"
    exponent = 4 * (weight + 1 - len(groups)) if groups else 0
    value = Decimal(f"{'-' if negative else ''}{digits}E{exponent}")
    with localcontext() as context:
        context.prec = len(digits) + abs(exponent) + scale + 8
        return value.quantize(Decimal(1).scaleb(-scale))


def _decode_text_binary(data: bytes) -> str:
    return _utf8(data)


def _decode_date_binary(data: bytes) -> str:
    if len(data) != 4:
        raise _bad_binary("date")
    days = _INT32.unpack(data)[0]
    if days in (2**31 - 1, -(2**31)):
        return "infinity" if days > 0 else "-infinity"
    try:
        return date.fromordinal(_POSTGRES_EPOCH_ORDINAL + days).isoformat()
    except (ValueError, OverflowError):
        raise SqlError("date out of range", "22008") from None


def _decode_timestamp_binary(suffix: str) -> Callable[[bytes], str]:
    def decode(data: bytes) -> str:
        if len(data) != 8:
            raise _bad_binary("timestamp")
        microseconds = _INT64.unpack(data)[0]
        if microseconds in (_INT64_MAX, _INT64_MIN):
            return "infinity" if microseconds > 0 else "-infinity"
        try:
            moment = _POSTGRES_EPOCH + timedelta(microseconds=microseconds)
        except OverflowError:
            raise SqlError("timestamp out of range", "22008") from None
        return timestamp_text(moment) + suffix

    return decode


def _decode_uuid_binary(data: bytes) -> str:
    if len(data) != 16:
        raise _bad_binary("uuid")
    return str(uuid.UUID(bytes=data))


def _decode_json_binary(data: bytes) -> str:
    return parse_json(_utf8(data), "json")


def _decode_jsonb_binary(data: bytes) -> str:
    if not data or data[0] != 1:
        raise SqlError("unsupported jsonb version number", "22P03")
    return parse_json(_utf8(data[1:]), "jsonb")


def _decode_time_binary(data: bytes) -> str:
    if len(data) != 8:
        raise _bad_binary("time")
    microseconds = _INT64.unpack(data)[0]
    if not 0 <= microseconds <= 86_400_000_000:
        raise SqlError("time out of range", "22008")
    seconds, micro = divmod(microseconds, 1_000_000)
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text + (f".{micro:06d}".rstrip("0") if micro else "")


def _decode_timestamptz_text(text: str) -> str:
    return timestamptz_stored(parse_timestamp(text, "timestamp with time zone"))


def _decode_timestamp_text(text: str) -> str:
    if text.strip().lower() in ("infinity", "-infinity"):
        return text.strip().lower()
    return timestamp_text(parse_timestamp(text).replace(tzinfo=None))


_TEXT_DECODERS: dict[int, Callable[[str], Any]] = {
    16: parse_bool,
    17: parse_bytea_text,
    20: lambda text: parse_int(text, 20),
    21: lambda text: parse_int(text, 21),
    23: lambda text: parse_int(text, 23),
    26: lambda text: parse_int(text, 26),
    114: lambda text: parse_json(text, "json"),
    700: lambda text: _single(parse_float(text, "real")),
    701: parse_float,
    1082: lambda text: parse_date(text).isoformat(),
    1114: _decode_timestamp_text,
    1184: _decode_timestamptz_text,
    1700: lambda text: numeric_text(parse_numeric(text)),
    2950: parse_uuid,
    3802: lambda text: parse_json(text, "jsonb"),
}

_BINARY_DECODERS: dict[int, Callable[[bytes], Any]] = {
    16: _decode_bool_binary,
    17: bytes,
    20: _decode_int_binary(20),
    21: _decode_int_binary(21),
    23: _decode_int_binary(23),
    26: _decode_int_binary(26),
    114: _decode_json_binary,
    700: _decode_float_binary(_FLOAT4, "real"),
    701: _decode_float_binary(_FLOAT8, "double precision"),
    1082: _decode_date_binary,
    1083: _decode_time_binary,
    1114: _decode_timestamp_binary(""),
    1184: _decode_timestamp_binary(STORED_UTC_SUFFIX),
    1700: _decode_numeric_binary,
    2950: _decode_uuid_binary,
    3802: _decode_jsonb_binary,
}
for _oid in _STRING_OIDS:
    _BINARY_DECODERS[_oid] = _decode_text_binary


# --- encoding result values ---


def encoder(oid: int, format_code: int) -> Encoder:
    """The function that turns a SQLite-world value of a result column of type
    `oid` into its wire bytes in `format_code` (None is the caller's: length -1)."""
    if format_code == TEXT_FORMAT:
        return _TEXT_ENCODERS.get(oid, _encode_generic_text)
    if format_code == BINARY_FORMAT:
        found = _BINARY_ENCODERS.get(oid)
        if found is None:
            raise SqlError(f"binary format for type {_type_name(oid)} is not supported", "0A000")
        return found
    raise SqlError(f"unsupported format code: {format_code}", "08P01")


def encode_value(oid: int, format_code: int, value: Any) -> bytes | None:
    """One value's wire bytes (None for NULL); `encoder` is the fast path for rows."""
    return None if value is None else encoder(oid, format_code)(value)


def text_of(value: Any) -> str:
    """The text PostgreSQL would print for a value whose column type is unknown."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _encode_generic_text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return text_of(value).encode("utf-8")


def _encode_string_text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").encode("utf-8")
        except UnicodeDecodeError:
            return b"\\x" + value.hex().encode("ascii")
    return text_of(value).encode("utf-8")


def _as_int(value: Any, oid: int) -> int:
    low, high, name = _INT_RANGES[oid]
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _out_of_range(name)
        result = round(value)
    elif isinstance(value, str):
        result = parse_int(value, 20) if oid != 26 else parse_int(value, 26)
    else:
        raise _invalid(name, value)
    if not low <= result <= high:
        raise _out_of_range(name)
    return result


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        return parse_float(value, name)
    raise _invalid(name, value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        return bool(parse_bool(value))
    raise _invalid("boolean", value)


def _as_decimal(value: Any) -> Decimal:
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value:
            return Decimal("NaN")
        if math.isinf(value):
            return Decimal("Infinity") if value > 0 else Decimal("-Infinity")
        return Decimal(repr(value))
    if isinstance(value, str):
        return parse_numeric(value)
    raise _invalid("numeric", value)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return text_of(value).encode("utf-8")


def _as_datetime(value: Any, type_name: str) -> datetime:
    if isinstance(value, str):
        return parse_timestamp(value, type_name)
    if isinstance(value, int | float):
        # A number in a timestamp column is Unix seconds (SQLite's unixepoch()).
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    raise _invalid(type_name, value)


def _as_date(value: Any) -> date:
    if isinstance(value, str):
        return parse_date(value)
    raise _invalid("date", value)


def _as_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise _invalid("uuid", value) from None
    raise _invalid("uuid", value)


def _int_text_encoder(oid: int) -> Encoder:
    low, high, _ = _INT_RANGES[oid]

    def encode(value: Any) -> bytes:
        # Fast path: the common case is an int already in range.
        if type(value) is int and low <= value <= high:
            return str(value).encode("ascii")
        return str(_as_int(value, oid)).encode("ascii")

    return encode


def _int_binary_encoder(oid: int) -> Encoder:
    low, high, _ = _INT_RANGES[oid]
    pack = _INT_STRUCTS[oid].pack

    def encode(value: Any) -> bytes:
        if type(value) is int and low <= value <= high:
            return pack(value)
        return pack(_as_int(value, oid))

    return encode


def _encode_float8_text(value: Any) -> bytes:
    return float_text(_as_float(value, "double precision")).encode("ascii")


def _encode_float4_text(value: Any) -> bytes:
    return float4_text(_as_float(value, "real")).encode("ascii")


def _encode_float8_binary(value: Any) -> bytes:
    return _FLOAT8.pack(_as_float(value, "double precision"))


def _encode_float4_binary(value: Any) -> bytes:
    return _FLOAT4.pack(_single(_as_float(value, "real")))


def _encode_numeric_text(value: Any) -> bytes:
    if type(value) is int:
        return str(value).encode("ascii")
    return numeric_text(_as_decimal(value)).encode("ascii")


def _encode_numeric_binary(value: Any) -> bytes:
    number = _as_decimal(value)
    if number.is_nan():
        return _NUMERIC_HEADER.pack(0, 0, _NUMERIC_NAN, 0)
    if number.is_infinite():
        return _NUMERIC_HEADER.pack(0, 0, _NUMERIC_NINF if number < 0 else _NUMERIC_PINF, 0)
    sign, digit_tuple, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    if exponent > 0:
        digits += "0" * exponent
    scale = max(0, -exponent)
    digits = digits.rjust(scale + 1, "0")
    integer, fraction = digits[: len(digits) - scale], digits[len(digits) - scale :]
    integer = integer.lstrip("0")
    integer = integer.rjust((len(integer) + 3) // 4 * 4, "0")
    fraction = fraction.ljust((len(fraction) + 3) // 4 * 4, "0")
    groups = [int(integer[i : i + 4]) for i in range(0, len(integer), 4)]
    weight = len(groups) - 1
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    negative = sign == 1 and bool(groups)
    header = _NUMERIC_HEADER.pack(
        len(groups), weight, _NUMERIC_NEGATIVE if negative else _NUMERIC_POSITIVE, scale
    )
    return header + struct.pack(f"!{len(groups)}h", *groups)


def _encode_bool_text(value: Any) -> bytes:
    return b"t" if _as_bool(value) else b"f"


def _encode_bool_binary(value: Any) -> bytes:
    return b"\x01" if _as_bool(value) else b"\x00"


def _encode_bytea_text(value: Any) -> bytes:
    return b"\\x" + _as_bytes(value).hex().encode("ascii")


def _encode_date_text(value: Any) -> bytes:
    if isinstance(value, str) and value.strip().lower() in ("infinity", "-infinity"):
        return value.strip().lower().encode("ascii")
    return _as_date(value).isoformat().encode("ascii")


def _encode_date_binary(value: Any) -> bytes:
    if isinstance(value, str) and value.strip().lower() in ("infinity", "-infinity"):
        return _INT32.pack(2**31 - 1 if value.strip()[0] != "-" else -(2**31))
    return _INT32.pack(_as_date(value).toordinal() - _POSTGRES_EPOCH_ORDINAL)


def _infinite_timestamp(value: Any) -> str | None:
    if isinstance(value, str) and value.strip().lower() in ("infinity", "-infinity"):
        return value.strip().lower()
    return None


def _encode_timestamp_text(value: Any) -> bytes:
    infinite = _infinite_timestamp(value)
    if infinite is not None:
        return infinite.encode("ascii")
    return timestamp_text(_as_datetime(value, "timestamp").replace(tzinfo=None)).encode("ascii")


def _encode_timestamptz_text(value: Any) -> bytes:
    infinite = _infinite_timestamp(value)
    if infinite is not None:
        return infinite.encode("ascii")
    moment = _as_datetime(value, "timestamp with time zone")
    return timestamptz_text(moment).encode("ascii")


def _timestamp_binary(value: Any, type_name: str, with_zone: bool) -> bytes:
    infinite = _infinite_timestamp(value)
    if infinite is not None:
        return _INT64.pack(_INT64_MAX if infinite[0] != "-" else _INT64_MIN)
    moment = _as_datetime(value, type_name)
    moment = _utc(moment) if with_zone else moment.replace(tzinfo=None)
    return _INT64.pack((moment - _POSTGRES_EPOCH) // _MICROSECOND)


def _encode_timestamp_binary(value: Any) -> bytes:
    return _timestamp_binary(value, "timestamp", with_zone=False)


def _encode_timestamptz_binary(value: Any) -> bytes:
    return _timestamp_binary(value, "timestamp with time zone", with_zone=True)


def _encode_time_binary(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _invalid("time", value)
    try:
        moment = time.fromisoformat(value.strip())
    except ValueError:
        raise _invalid("time", value) from None
    micro = ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1_000_000
    return _INT64.pack(micro + moment.microsecond)


def _encode_uuid_text(value: Any) -> bytes:
    return str(_as_uuid(value)).encode("ascii")


def _encode_uuid_binary(value: Any) -> bytes:
    return _as_uuid(value).bytes


def _encode_jsonb_binary(value: Any) -> bytes:
    return b"\x01" + _as_bytes(value)


def _encode_char_text(value: Any) -> bytes:
    text = text_of(value)
    return text[:1].encode("utf-8")


def _vector_binary(element_oid: int) -> Encoder:
    """int2vector and oidvector in binary: one-dimensional arrays with lower bound 0."""
    pack_element = _INT_STRUCTS[element_oid].pack
    size = _INT_STRUCTS[element_oid].size

    def encode(value: Any) -> bytes:
        text = text_of(value).strip()
        items = [int(each) for each in text.split()] if text else []
        if not items:
            return struct.pack("!iiI", 0, 0, element_oid)
        body = b"".join(_INT32.pack(size) + pack_element(item) for item in items)
        return _ARRAY_HEADER.pack(1, 0, element_oid, len(items), 0) + body

    return encode


_TEXT_ENCODERS: dict[int, Encoder] = {
    16: _encode_bool_text,
    17: _encode_bytea_text,
    18: _encode_char_text,
    20: _int_text_encoder(20),
    21: _int_text_encoder(21),
    23: _int_text_encoder(23),
    26: _int_text_encoder(26),
    700: _encode_float4_text,
    701: _encode_float8_text,
    1082: _encode_date_text,
    1114: _encode_timestamp_text,
    1184: _encode_timestamptz_text,
    1700: _encode_numeric_text,
    2950: _encode_uuid_text,
}
for _oid in (19, 25, 114, 194, 705, 1042, 1043, 3802, 0):
    _TEXT_ENCODERS[_oid] = _encode_string_text

_BINARY_ENCODERS: dict[int, Encoder] = {
    16: _encode_bool_binary,
    17: _as_bytes,
    20: _int_binary_encoder(20),
    21: _int_binary_encoder(21),
    22: _vector_binary(21),
    23: _int_binary_encoder(23),
    24: _int_binary_encoder(24),
    26: _int_binary_encoder(26),
    30: _vector_binary(26),
    700: _encode_float4_binary,
    701: _encode_float8_binary,
    1082: _encode_date_binary,
    1083: _encode_time_binary,
    1114: _encode_timestamp_binary,
    1184: _encode_timestamptz_binary,
    1700: _encode_numeric_binary,
    2205: _int_binary_encoder(2205),
    2206: _int_binary_encoder(2206),
    2950: _encode_uuid_binary,
    3802: _encode_jsonb_binary,
}
for _oid in (18, 19, 25, 114, 194, 705, 1042, 1043):
    _BINARY_ENCODERS[_oid] = _as_bytes
