from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    def __init__(self, volume_id: _Optional[int] = ..., pg: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., membership_epoch: _Optional[int] = ...) -> None: ...

class AppendRedoRequest(_message.Message):
    __slots__ = ("segment", "records")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppendRedoResponse(_message.Message):
    __slots__ = ("scl", "highest_lsn", "records_new")
    SCL_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_LSN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_NEW_FIELD_NUMBER: _ClassVar[int]
    scl: int
    highest_lsn: int
    records_new: int
    def __init__(self, scl: _Optional[int] = ..., highest_lsn: _Optional[int] = ..., records_new: _Optional[int] = ...) -> None: ...

class GetPageRequest(_message.Message):
    __slots__ = ("segment", "page", "lsn")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    page: int
    lsn: int
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., page: _Optional[int] = ..., lsn: _Optional[int] = ...) -> None: ...

class GetPageResponse(_message.Message):
    __slots__ = ("image", "page_lsn")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_LSN_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    page_lsn: int
    def __init__(self, image: _Optional[bytes] = ..., page_lsn: _Optional[int] = ...) -> None: ...

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
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., after_lsn: _Optional[int] = ..., up_to_lsn: _Optional[int] = ..., bytes_max: _Optional[int] = ...) -> None: ...

class ReadRecordsResponse(_message.Message):
    __slots__ = ("records", "more", "scl")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    SCL_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    more: bool
    scl: int
    def __init__(self, records: _Optional[_Iterable[bytes]] = ..., more: _Optional[bool] = ..., scl: _Optional[int] = ...) -> None: ...

class GetSegmentStateRequest(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentState]
    def __init__(self, segments: _Optional[_Iterable[_Union[SegmentState, _Mapping]]] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("node", "address", "az")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AZ_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    az: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., az: _Optional[str] = ...) -> None: ...

class SegmentState(_message.Message):
    __slots__ = ("volume_id", "pg", "scl", "highest_lsn", "volume_epoch", "membership_epoch", "pgmrpl", "first_page", "page_count", "records", "record_bytes", "truncated_above_lsn", "truncated_up_to_lsn", "members", "members_old", "hydrating")
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
    MEMBERS_OLD_FIELD_NUMBER: _ClassVar[int]
    HYDRATING_FIELD_NUMBER: _ClassVar[int]
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
    members_old: _containers.RepeatedCompositeFieldContainer[Member]
    hydrating: bool
    def __init__(self, volume_id: _Optional[int] = ..., pg: _Optional[int] = ..., scl: _Optional[int] = ..., highest_lsn: _Optional[int] = ..., volume_epoch: _Optional[int] = ..., membership_epoch: _Optional[int] = ..., pgmrpl: _Optional[int] = ..., first_page: _Optional[int] = ..., page_count: _Optional[int] = ..., records: _Optional[int] = ..., record_bytes: _Optional[int] = ..., truncated_above_lsn: _Optional[int] = ..., truncated_up_to_lsn: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., members_old: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., hydrating: _Optional[bool] = ...) -> None: ...

class SetMembershipRequest(_message.Message):
    __slots__ = ("segment", "first_page", "page_count", "members", "members_old", "hydrate")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_OLD_FIELD_NUMBER: _ClassVar[int]
    HYDRATE_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    first_page: int
    page_count: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    members_old: _containers.RepeatedCompositeFieldContainer[Member]
    hydrate: bool
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., first_page: _Optional[int] = ..., page_count: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., members_old: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., hydrate: _Optional[bool] = ...) -> None: ...

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
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., truncate: _Optional[bool] = ..., truncate_above_lsn: _Optional[int] = ..., truncate_up_to_lsn: _Optional[int] = ...) -> None: ...

class SetPgmrplRequest(_message.Message):
    __slots__ = ("segment", "pgmrpl")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PGMRPL_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    pgmrpl: int
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., pgmrpl: _Optional[int] = ...) -> None: ...

class ReadPageImagesRequest(_message.Message):
    __slots__ = ("segment", "lsn", "start_page", "bytes_max")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    START_PAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentRef
    lsn: int
    start_page: int
    bytes_max: int
    def __init__(self, segment: _Optional[_Union[SegmentRef, _Mapping]] = ..., lsn: _Optional[int] = ..., start_page: _Optional[int] = ..., bytes_max: _Optional[int] = ...) -> None: ...

class PageImage(_message.Message):
    __slots__ = ("page", "page_lsn", "image")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_LSN_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    page: int
    page_lsn: int
    image: bytes
    def __init__(self, page: _Optional[int] = ..., page_lsn: _Optional[int] = ..., image: _Optional[bytes] = ...) -> None: ...

class ReadPageImagesResponse(_message.Message):
    __slots__ = ("images", "more", "next_page")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[PageImage]
    more: bool
    next_page: int
    def __init__(self, images: _Optional[_Iterable[_Union[PageImage, _Mapping]]] = ..., more: _Optional[bool] = ..., next_page: _Optional[int] = ...) -> None: ...
