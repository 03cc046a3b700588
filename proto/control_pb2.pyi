from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PauseRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("paused", "pause_ms")
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_MS_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    pause_ms: int
    def __init__(self, paused: _Optional[bool] = ..., pause_ms: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("resumed", "resume_ms", "writer")
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    RESUME_MS_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    resumed: bool
    resume_ms: int
    writer: str
    def __init__(self, resumed: _Optional[bool] = ..., resume_ms: _Optional[int] = ..., writer: _Optional[str] = ...) -> None: ...

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

class ScalingSettings(_message.Message):
    __slots__ = ("min_capacity_bcu", "max_capacity_bcu", "min_readers", "max_readers", "reader_metric", "reader_target", "scale_out_cooldown_s", "scale_in_cooldown_s", "capacity_down_after_s", "capacity_up_cooldown_s", "capacity_down_cooldown_s", "auto_pause_s", "enabled", "scale_in_after_s")
    MIN_CAPACITY_BCU_FIELD_NUMBER: _ClassVar[int]
    MAX_CAPACITY_BCU_FIELD_NUMBER: _ClassVar[int]
    MIN_READERS_FIELD_NUMBER: _ClassVar[int]
    MAX_READERS_FIELD_NUMBER: _ClassVar[int]
    READER_METRIC_FIELD_NUMBER: _ClassVar[int]
    READER_TARGET_FIELD_NUMBER: _ClassVar[int]
    SCALE_OUT_COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_IN_COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_DOWN_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_UP_COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_DOWN_COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_S_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SCALE_IN_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    min_capacity_bcu: float
    max_capacity_bcu: float
    min_readers: int
    max_readers: int
    reader_metric: str
    reader_target: float
    scale_out_cooldown_s: float
    scale_in_cooldown_s: float
    capacity_down_after_s: float
    capacity_up_cooldown_s: float
    capacity_down_cooldown_s: float
    auto_pause_s: float
    enabled: bool
    scale_in_after_s: float
    def __init__(self, min_capacity_bcu: _Optional[float] = ..., max_capacity_bcu: _Optional[float] = ..., min_readers: _Optional[int] = ..., max_readers: _Optional[int] = ..., reader_metric: _Optional[str] = ..., reader_target: _Optional[float] = ..., scale_out_cooldown_s: _Optional[float] = ..., scale_in_cooldown_s: _Optional[float] = ..., capacity_down_after_s: _Optional[float] = ..., capacity_up_cooldown_s: _Optional[float] = ..., capacity_down_cooldown_s: _Optional[float] = ..., auto_pause_s: _Optional[float] = ..., enabled: _Optional[bool] = ..., scale_in_after_s: _Optional[float] = ...) -> None: ...

class GetScalingHistoryRequest(_message.Message):
    __slots__ = ("limit", "instance")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    limit: int
    instance: str
    def __init__(self, limit: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class ScalingEvent(_message.Message):
    __slots__ = ("time_unix_s", "instance", "kind", "from_value", "to_value", "reason", "inputs", "error")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TIME_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FROM_VALUE_FIELD_NUMBER: _ClassVar[int]
    TO_VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    time_unix_s: float
    instance: str
    kind: str
    from_value: float
    to_value: float
    reason: str
    inputs: _containers.ScalarMap[str, float]
    error: str
    def __init__(self, time_unix_s: _Optional[float] = ..., instance: _Optional[str] = ..., kind: _Optional[str] = ..., from_value: _Optional[float] = ..., to_value: _Optional[float] = ..., reason: _Optional[str] = ..., inputs: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ...) -> None: ...

class ScalingHistory(_message.Message):
    __slots__ = ("events", "settings", "capacity_bcu")
    class CapacityBcuEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BCU_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ScalingEvent]
    settings: ScalingSettings
    capacity_bcu: _containers.ScalarMap[str, float]
    def __init__(self, events: _Optional[_Iterable[_Union[ScalingEvent, _Mapping]]] = ..., settings: _Optional[_Union[ScalingSettings, _Mapping]] = ..., capacity_bcu: _Optional[_Mapping[str, float]] = ...) -> None: ...
