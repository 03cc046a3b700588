from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SetCapacityRequest(_message.Message):
    __slots__ = ("bcu",)
    BCU_FIELD_NUMBER: _ClassVar[int]
    bcu: float
    def __init__(self, bcu: _Optional[float] = ...) -> None: ...

class GetCapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HotPagesRequest(_message.Message):
    __slots__ = ("max_pages",)
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    max_pages: int
    def __init__(self, max_pages: _Optional[int] = ...) -> None: ...

class HotPagesResponse(_message.Message):
    __slots__ = ("pages",)
    PAGES_FIELD_NUMBER: _ClassVar[int]
    pages: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pages: _Optional[_Iterable[int]] = ...) -> None: ...

class Signals(_message.Message):
    __slots__ = ("cpu_fraction", "cache_hit_ratio", "cache_evictions_total", "active_sessions", "queued_statements", "connections", "statements_total")
    CPU_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    CACHE_EVICTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    cpu_fraction: float
    cache_hit_ratio: float
    cache_evictions_total: int
    active_sessions: int
    queued_statements: int
    connections: int
    statements_total: int
    def __init__(self, cpu_fraction: _Optional[float] = ..., cache_hit_ratio: _Optional[float] = ..., cache_evictions_total: _Optional[int] = ..., active_sessions: _Optional[int] = ..., queued_statements: _Optional[int] = ..., connections: _Optional[int] = ..., statements_total: _Optional[int] = ...) -> None: ...

class CapacityState(_message.Message):
    __slots__ = ("bcu", "cache_bytes", "sql_workers", "signals", "role")
    BCU_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SQL_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    bcu: float
    cache_bytes: int
    sql_workers: int
    signals: Signals
    role: str
    def __init__(self, bcu: _Optional[float] = ..., cache_bytes: _Optional[int] = ..., sql_workers: _Optional[int] = ..., signals: _Optional[_Union[Signals, _Mapping]] = ..., role: _Optional[str] = ...) -> None: ...
