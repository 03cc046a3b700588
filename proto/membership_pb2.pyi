from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReplaceStorageNodeRequest(_message.Message):
    __slots__ = ("old_node", "new_node", "new_address", "new_az", "timeout_ms")
    OLD_NODE_FIELD_NUMBER: _ClassVar[int]
    NEW_NODE_FIELD_NUMBER: _ClassVar[int]
    NEW_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NEW_AZ_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    old_node: str
    new_node: str
    new_address: str
    new_az: str
    timeout_ms: int
    def __init__(self, old_node: _Optional[str] = ..., new_node: _Optional[str] = ..., new_address: _Optional[str] = ..., new_az: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ReplaceStorageNodeResponse(_message.Message):
    __slots__ = ("pgs", "duration_ms")
    PGS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    pgs: _containers.RepeatedScalarFieldContainer[int]
    duration_ms: int
    def __init__(self, pgs: _Optional[_Iterable[int]] = ..., duration_ms: _Optional[int] = ...) -> None: ...
