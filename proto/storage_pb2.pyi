from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRef(_message.Message):
    __slots__ = ("volume_id", "pg", "volume_epoch", "membership_epoch")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    volume_id: int
    pg: int
    volume_epoch: int
    membership_epoch: int
    def __init__(
        self,
        volume_id: int | None = ...,
        pg: int | None = ...,
        volume_epoch: int | None = ...,
        membership_epoch: int | None = ...,
    ) -> None: ...

class AppendRedoRequest(_message.Message):
    __slots__ = ("segment", "records")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(
        self, segment: SegmentRef | _Mapping | None = ..., records: _Iterable[bytes] | None = ...
    ) -> None: ...

class AppendRedoResponse(_message.Message):
    __slots__ = ("scl", "highest_lsn", "records_new")
    SCL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_LSN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_NEW_FIELD_NUMBER: _ClassVar[int]
    scl: int
    highest_lsn: int
    records_new: int
    def __init__(
        self, scl: int | None = ..., highest_lsn: int | None = ..., records_new: int | None = ...
    ) -> None: ...

class GetPageRequest(_message.Message):
    __slots__ = ("segment", "page", "lsn")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    page: int
    lsn: int
    def __init__(
        self,
        segment: SegmentRef | _Mapping | None = ...,
        page: int | None = ...,
        lsn: int | None = ...,
    ) -> None: ...

class GetPageResponse(_message.Message):
    __slots__ = ("image", "page_lsn")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_LSN_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    page_lsn: int
    def __init__(self, image: bytes | None = ..., page_lsn: int | None = ...) -> None: ...

class ReadRecordsRequest(_message.Message):
    __slots__ = ("segment", "after_lsn", "up_to_lsn", "bytes_max")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_LSN_FIELD_NUMBER: _ClassVar[int]
    UP_TO_LSN_FIELD_NUMBER: _ClassVar[int]
    BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    after_lsn: int
    up_to_lsn: int
    bytes_max: int
    def __init__(
        self,
        segment: SegmentRef | _Mapping | None = ...,
        after_lsn: int | None = ...,
        up_to_lsn: int | None = ...,
        bytes_max: int | None = ...,
    ) -> None: ...

class ReadRecordsResponse(_message.Message):
    __slots__ = ("records", "more", "scl")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    more: bool
    scl: int
    def __init__(
        self, records: _Iterable[bytes] | None = ..., more: bool | None = ..., scl: int | None = ...
    ) -> None: ...

class GetSegmentStateRequest(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    def __init__(self, segment: SegmentRef | _Mapping | None = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentState]
    def __init__(self, segments: _Iterable[SegmentState | _Mapping] | None = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("node", "address", "az")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    az: str
    def __init__(
        self, node: str | None = ..., address: str | None = ..., az: str | None = ...
    ) -> None: ...

class SegmentState(_message.Message):
    __slots__ = (
        "volume_id",
        "pg",
        "scl",
        "highest_lsn",
        "volume_epoch",
        "membership_epoch",
        "pgmrpl",
        "first_page",
        "page_count",
        "records",
        "record_bytes",
        "truncated_above_lsn",
        "truncated_up_to_lsn",
        "members",
    )
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PG_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_LSN_FIELD_NUMBER: _ClassVar[int]
    VOLUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PGMRPL_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RECORD_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_ABOVE_LSN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_UP_TO_LSN_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    volume_id: int
    pg: int
    scl: int
    highest_lsn: int
    volume_epoch: int
    membership_epoch: int
    pgmrpl: int
    first_page: int
    page_count: int
    records: int
    record_bytes: int
    truncated_above_lsn: int
    truncated_up_to_lsn: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(
        self,
        volume_id: int | None = ...,
        pg: int | None = ...,
        scl: int | None = ...,
        highest_lsn: int | None = ...,
        volume_epoch: int | None = ...,
        membership_epoch: int | None = ...,
        pgmrpl: int | None = ...,
        first_page: int | None = ...,
        page_count: int | None = ...,
        records: int | None = ...,
        record_bytes: int | None = ...,
        truncated_above_lsn: int | None = ...,
        truncated_up_to_lsn: int | None = ...,
        members: _Iterable[Member | _Mapping] | None = ...,
    ) -> None: ...

class SetMembershipRequest(_message.Message):
    __slots__ = ("segment", "first_page", "page_count", "members")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    first_page: int
    page_count: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(
        self,
        segment: SegmentRef | _Mapping | None = ...,
        first_page: int | None = ...,
        page_count: int | None = ...,
        members: _Iterable[Member | _Mapping] | None = ...,
    ) -> None: ...

class SetEpochRequest(_message.Message):
    __slots__ = ("segment", "truncate", "truncate_above_lsn", "truncate_up_to_lsn")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_ABOVE_LSN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_UP_TO_LSN_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    truncate: bool
    truncate_above_lsn: int
    truncate_up_to_lsn: int
    def __init__(
        self,
        segment: SegmentRef | _Mapping | None = ...,
        truncate: bool | None = ...,
        truncate_above_lsn: int | None = ...,
        truncate_up_to_lsn: int | None = ...,
    ) -> None: ...

class SetPgmrplRequest(_message.Message):
    __slots__ = ("segment", "pgmrpl")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PGMRPL_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    pgmrpl: int
    def __init__(
        self, segment: SegmentRef | _Mapping | None = ..., pgmrpl: int | None = ...
    ) -> None: ...
