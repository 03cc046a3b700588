from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("reader_name",)
    READER_NAME_FIELD_NUMBER: _ClassVar[int]
    reader_name: str
    def __init__(self, reader_name: _Optional[str] = ...) -> None: ...

class PgInfo(_message.Message):
    __slots__ = ("pg", "membership_epoch", "nodes", "lsn_last", "addresses", "azs")
    PG_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    LSN_LAST_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    AZS_FIELD_NUMBER: _ClassVar[int]
    pg: int
    membership_epoch: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    lsn_last: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    azs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pg: _Optional[int] = ..., membership_epoch: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., lsn_last: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ..., azs: _Optional[_Iterable[str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("subscriber_id", "volume_id", "volume_epoch", "pages_per_pg", "lsn_start", "page_count", "vdl", "pgs")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PAGES_PER_PG_FIELD_NUMBER: _ClassVar[int]
    LSN_START_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    PGS_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: int
    volume_id: int
    volume_epoch: int
    pages_per_pg: int
    lsn_start: int
    page_count: int
    vdl: int
    pgs: _containers.RepeatedCompositeFieldContainer[PgInfo]
    def __init__(self, subscriber_id: _Optional[int] = ..., volume_id: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., pages_per_pg: _Optional[int] = ..., lsn_start: _Optional[int] = ..., page_count: _Optional[int] = ..., vdl: _Optional[int] = ..., pgs: _Optional[_Iterable[_Union[PgInfo, _Mapping]]] = ...) -> None: ...

class CommitGroup(_message.Message):
    __slots__ = ("cpl", "commit_time_us", "records")
    CPL_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    cpl: int
    commit_time_us: int
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, cpl: _Optional[int] = ..., commit_time_us: _Optional[int] = ..., records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("group", "vdl", "pg_added", "pg_members")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    VDL_FIELD_NUMBER: _ClassVar[int]
    PG_ADDED_FIELD_NUMBER: _ClassVar[int]
    PG_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    group: CommitGroup
    vdl: int
    pg_added: PgInfo
    pg_members: PgInfo
    def __init__(self, group: _Optional[_Union[CommitGroup, _Mapping]] = ..., vdl: _Optional[int] = ..., pg_added: _Optional[_Union[PgInfo, _Mapping]] = ..., pg_members: _Optional[_Union[PgInfo, _Mapping]] = ...) -> None: ...

class ReplicationMessage(_message.Message):
    __slots__ = ("hello", "events", "resync_reason")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESYNC_REASON_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    events: _containers.RepeatedCompositeFieldContainer[Event]
    resync_reason: str
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., resync_reason: _Optional[str] = ...) -> None: ...

class ReadPointReport(_message.Message):
    __slots__ = ("subscriber_id", "read_point")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    READ_POINT_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: int
    read_point: int
    def __init__(self, subscriber_id: _Optional[int] = ..., read_point: _Optional[int] = ...) -> None: ...

class ReadPointAck(_message.Message):
    __slots__ = ("known", "pgmrpl")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    PGMRPL_FIELD_NUMBER: _ClassVar[int]
    known: bool
    pgmrpl: int
    def __init__(self, known: _Optional[bool] = ..., pgmrpl: _Optional[int] = ...) -> None: ...
