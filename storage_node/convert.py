"""Protobuf <-> domain types for the storage API (the only module that builds them)."""

from __future__ import annotations

from borealis.ids import Epoch, Epochs, PgIndex, SegmentId, VolumeId
from proto import storage_pb2
from storage_node.segment import Member, Segment, SegmentMeta


def segment_ref(segment_id: SegmentId, epochs: Epochs) -> storage_pb2.SegmentRef:
    return storage_pb2.SegmentRef(
        volume_id=segment_id.volume_id,
        pg=segment_id.pg,
        volume_epoch=epochs.volume,
        membership_epoch=epochs.membership,
    )


def segment_id_of(ref: storage_pb2.SegmentRef) -> SegmentId:
    return SegmentId(VolumeId(ref.volume_id), PgIndex(ref.pg))


def epochs_of(ref: storage_pb2.SegmentRef) -> Epochs:
    return Epochs(Epoch(ref.volume_epoch), Epoch(ref.membership_epoch))


def members_to_proto(members: list[Member]) -> list[storage_pb2.Member]:
    return [storage_pb2.Member(node=m.node, address=m.address, az=m.az) for m in members]


def members_of(members: list[storage_pb2.Member]) -> list[Member]:
    return [Member(node=m.node, address=m.address, az=m.az) for m in members]


def state_to_proto(segment: Segment) -> storage_pb2.SegmentState:
    meta = segment.meta
    return storage_pb2.SegmentState(
        volume_id=meta.volume_id,
        pg=meta.pg,
        # The published SCL: meta.scl may be ahead while a commit is in flight.
        scl=segment.scl,
        highest_lsn=meta.highest_lsn,
        volume_epoch=meta.volume_epoch,
        membership_epoch=meta.membership_epoch,
        pgmrpl=segment.pgmrpl,
        first_page=meta.first_page,
        page_count=meta.page_count,
        records=meta.records,
        record_bytes=meta.record_bytes,
        truncated_above_lsn=meta.truncated_above_lsn,
        truncated_up_to_lsn=meta.truncated_up_to_lsn,
        members=members_to_proto(meta.members),
        members_old=members_to_proto(meta.members_old),
        hydrating=meta.hydrating,
    )


def state_of(message: storage_pb2.SegmentState) -> SegmentMeta:
    return SegmentMeta(
        volume_id=message.volume_id,
        pg=message.pg,
        first_page=message.first_page,
        page_count=message.page_count,
        volume_epoch=message.volume_epoch,
        membership_epoch=message.membership_epoch,
        members=members_of(list(message.members)),
        members_old=members_of(list(message.members_old)),
        hydrating=message.hydrating,
        scl=message.scl,
        highest_lsn=message.highest_lsn,
        pgmrpl=message.pgmrpl,
        truncated_above_lsn=message.truncated_above_lsn,
        truncated_up_to_lsn=message.truncated_up_to_lsn,
        records=message.records,
        record_bytes=message.record_bytes,
    )
