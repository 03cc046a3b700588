from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AddReaderRequest(_message.Message):
    __slots__ = ("tier",)
    TIER_FIELD_NUMBER: _ClassVar[int]
    tier: int
    def __init__(self, tier: _Optional[int] = ...) -> None: ...

class AddReaderResponse(_message.Message):
    __slots__ = ("name", "endpoint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoint: str
    def __init__(self, name: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class RemoveReaderRequest(_message.Message):
    __slots__ = ("name", "drain_timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    drain_timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., drain_timeout_ms: _Optional[int] = ...) -> None: ...

class RemoveReaderResponse(_message.Message):
    __slots__ = ("sessions_closed",)
    SESSIONS_CLOSED_FIELD_NUMBER: _ClassVar[int]
    sessions_closed: int
    def __init__(self, sessions_closed: _Optional[int] = ...) -> None: ...

class CreateEndpointRequest(_message.Message):
    __slots__ = ("name", "instances")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    instances: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., instances: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateEndpointResponse(_message.Message):
    __slots__ = ("url",)
    URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    def __init__(self, url: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("name", "role", "pid", "lsn", "lag_lsns", "lag_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_LSNS_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    pid: int
    lsn: int
    lag_lsns: int
    lag_ms: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., pid: _Optional[int] = ..., lsn: _Optional[int] = ..., lag_lsns: _Optional[int] = ..., lag_ms: _Optional[float] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...

class FailoverRequest(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: str
    def __init__(self, target: _Optional[str] = ...) -> None: ...

class FailoverResponse(_message.Message):
    __slots__ = ("old_writer", "new_writer", "switchover_ms")
    OLD_WRITER_FIELD_NUMBER: _ClassVar[int]
    NEW_WRITER_FIELD_NUMBER: _ClassVar[int]
    SWITCHOVER_MS_FIELD_NUMBER: _ClassVar[int]
    old_writer: str
    new_writer: str
    switchover_ms: int
    def __init__(self, old_writer: _Optional[str] = ..., new_writer: _Optional[str] = ..., switchover_ms: _Optional[int] = ...) -> None: ...

class ReplaceStorageNodeRequest(_message.Message):
    __slots__ = ("name", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ReplaceStorageNodeResponse(_message.Message):
    __slots__ = ("old_node", "new_node", "pgs", "duration_ms")
    OLD_NODE_FIELD_NUMBER: _ClassVar[int]
    NEW_NODE_FIELD_NUMBER: _ClassVar[int]
    PGS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    old_node: str
    new_node: str
    pgs: _containers.RepeatedScalarFieldContainer[int]
    duration_ms: int
    def __init__(self, old_node: _Optional[str] = ..., new_node: _Optional[str] = ..., pgs: _Optional[_Iterable[int]] = ..., duration_ms: _Optional[int] = ...) -> None: ...
