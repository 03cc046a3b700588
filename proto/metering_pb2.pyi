from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCostRequest(_message.Message):
    __slots__ = ("since_unix_s", "prices_json")
    SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    PRICES_JSON_FIELD_NUMBER: _ClassVar[int]
    since_unix_s: int
    prices_json: str
    def __init__(self, since_unix_s: _Optional[int] = ..., prices_json: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("since_unix_s", "until_unix_s", "seconds", "capacity_unit_seconds", "capacity_sources", "storage_byte_seconds", "storage_bytes_last", "io_reads", "io_writes", "write_counter", "backup_byte_seconds")
    class CapacityUnitSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CapacitySourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_UNIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_SOURCES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_LAST_FIELD_NUMBER: _ClassVar[int]
    IO_READS_FIELD_NUMBER: _ClassVar[int]
    IO_WRITES_FIELD_NUMBER: _ClassVar[int]
    WRITE_COUNTER_FIELD_NUMBER: _ClassVar[int]
    BACKUP_BYTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    since_unix_s: float
    until_unix_s: float
    seconds: float
    capacity_unit_seconds: _containers.ScalarMap[str, float]
    capacity_sources: _containers.ScalarMap[str, str]
    storage_byte_seconds: float
    storage_bytes_last: float
    io_reads: float
    io_writes: float
    write_counter: str
    backup_byte_seconds: float
    def __init__(self, since_unix_s: _Optional[float] = ..., until_unix_s: _Optional[float] = ..., seconds: _Optional[float] = ..., capacity_unit_seconds: _Optional[_Mapping[str, float]] = ..., capacity_sources: _Optional[_Mapping[str, str]] = ..., storage_byte_seconds: _Optional[float] = ..., storage_bytes_last: _Optional[float] = ..., io_reads: _Optional[float] = ..., io_writes: _Optional[float] = ..., write_counter: _Optional[str] = ..., backup_byte_seconds: _Optional[float] = ...) -> None: ...

class CostLine(_message.Message):
    __slots__ = ("item", "quantity", "unit", "unit_price", "amount")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    item: str
    quantity: float
    unit: str
    unit_price: float
    amount: float
    def __init__(self, item: _Optional[str] = ..., quantity: _Optional[float] = ..., unit: _Optional[str] = ..., unit_price: _Optional[float] = ..., amount: _Optional[float] = ...) -> None: ...

class OptionCost(_message.Message):
    __slots__ = ("name", "title", "lines", "total", "io_share", "monthly_total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IO_SHARE_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    title: str
    lines: _containers.RepeatedCompositeFieldContainer[CostLine]
    total: float
    io_share: float
    monthly_total: float
    def __init__(self, name: _Optional[str] = ..., title: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[CostLine, _Mapping]]] = ..., total: _Optional[float] = ..., io_share: _Optional[float] = ..., monthly_total: _Optional[float] = ...) -> None: ...

class CostReport(_message.Message):
    __slots__ = ("usage", "options", "currency", "cheaper", "reason", "io_share_threshold", "notes")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CHEAPER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IO_SHARE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    options: _containers.RepeatedCompositeFieldContainer[OptionCost]
    currency: str
    cheaper: str
    reason: str
    io_share_threshold: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., options: _Optional[_Iterable[_Union[OptionCost, _Mapping]]] = ..., currency: _Optional[str] = ..., cheaper: _Optional[str] = ..., reason: _Optional[str] = ..., io_share_threshold: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
