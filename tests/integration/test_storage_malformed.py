"""Must-hold 6: malformed requests get INVALID_ARGUMENT, store nothing, and the node keeps
serving.

Every case sends one malformed request to all six nodes of one shared cluster, each
case on its own segment, then checks that the segment is unchanged and that the
nodes still report SERVING and take a valid append and GetPage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest
from crc32c import crc32c

from borealis import metrics, redo, rpc
from borealis.errors import InvalidRequest, NotFound
from borealis.ids import Lsn
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from storage_node.client import StorageClient, encode_append
from tests.conftest import ClusterBuilder
from tests.support.redo_model import RedoModel
from tests.support.storage import (
    EPOCHS,
    append_all,
    clients,
    close_all,
    create_segment,
    members,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration

BATCH_RECORDS_MAX = 16
PAGES_PER_PG = 16
APPEND_REDO = "/borealis.storage.Storage/AppendRedo"
UNDECODABLE_STATUSES = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.INVALID_ARGUMENT,
}


@pytest.fixture(scope="module")
def shared_builder(tmp_path_factory, port_allocator: PortAllocator) -> Iterator[ClusterBuilder]:  # type: ignore[no-untyped-def]
    """One cluster for every case (each case works on its own segment), checked for
    unexpected ERROR log lines once all cases ran."""
    builder = ClusterBuilder(tmp_path_factory.mktemp("malformed"), port_allocator)
    try:
        builder(append_batch_records_max=BATCH_RECORDS_MAX).start()
        yield builder
    finally:
        unexpected = builder.teardown()
    assert not unexpected, "unexpected ERROR lines in node logs:\n" + "\n".join(unexpected)


@pytest.fixture
def cluster(shared_builder: ClusterBuilder) -> LocalCluster:
    return shared_builder.clusters[0]


def record(model: RedoModel, offset: int = 1, **fields: object) -> bytes:
    """A well-formed record `offset` LSNs above the model's last one, unless `fields` say
    otherwise. The model does not advance: the record is for a request that fails."""
    lsn = model.lsn + offset
    values: dict[str, object] = {
        "lsn": Lsn(lsn),
        "prev_lsn_volume": Lsn(lsn - 1),
        "prev_lsn_pg": Lsn(model.last_lsn_pg),
        "prev_lsn_page": Lsn(0),
        "page": model.first_page,
        "kind": redo.Kind.DELTA,
        "payload": redo.delta_payload([(100, b"\x01\x02\x03")]),
        "cpl": True,
    }
    values.update(fields)
    return redo.encode(redo.RedoRecord(**values))  # type: ignore[arg-type]


def with_bad_crc(model: RedoModel) -> list[bytes]:
    data = bytearray(record(model, offset=2))
    data[-1] ^= 0x01
    return [record(model), bytes(data)]


def lsn_not_increasing(model: RedoModel) -> list[bytes]:
    return [record(model, offset=2), record(model, offset=1)]


def lsn_repeated(model: RedoModel) -> list[bytes]:
    return [record(model), record(model)]


def image_of_wrong_size(model: RedoModel) -> list[bytes]:
    # encode() computes a correct CRC over whatever it is given: only the size is wrong.
    image = record(model, kind=redo.Kind.IMAGE, payload=bytes(redo.PAGE_SIZE_BYTES - 1))
    assert redo.CRC.unpack_from(image)[0] == crc32c(image[redo.CRC.size :])
    return [image]


def delta_past_page_end(model: RedoModel) -> list[bytes]:
    return [record(model, payload=redo.delta_payload([(redo.PAGE_SIZE_BYTES - 4, bytes(8))]))]


def page_outside_segment(model: RedoModel) -> list[bytes]:
    return [record(model, page=model.first_page + model.page_count)]


def oversized_batch(model: RedoModel) -> list[bytes]:
    batch = []
    for offset in range(1, BATCH_RECORDS_MAX + 2):
        batch.append(record(model, offset=offset, prev_lsn_pg=Lsn(model.lsn + offset - 1)))
    return batch


def garbage(model: RedoModel) -> list[bytes]:
    return [record(model), model.random.randbytes(redo.HEADER_BYTES + 40)]


def shorter_than_header(model: RedoModel) -> list[bytes]:
    return [record(model)[: redo.HEADER_BYTES - 1]]


BAD_BATCHES: dict[str, tuple[Callable[[RedoModel], list[bytes]], str]] = {
    "bad_crc": (with_bad_crc, "CRC32C mismatch"),
    "lsn_not_increasing": (lsn_not_increasing, "LSNs must increase"),
    "lsn_repeated": (lsn_repeated, "LSNs must increase"),
    "image_wrong_size": (image_of_wrong_size, "wrong page size"),
    "delta_past_page_end": (delta_past_page_end, "delta range outside the page"),
    "page_outside_segment": (page_outside_segment, "outside the segment's page range"),
    "oversized_batch": (oversized_batch, "too many records"),
    "garbage_bytes": (garbage, "CRC32C mismatch"),
    "shorter_than_header": (shorter_than_header, "shorter than its header"),
}


async def prepare(cluster: LocalCluster, all_clients: list[StorageClient], pg: int) -> RedoModel:
    first_page = pg * PAGES_PER_PG
    await create_segment(all_clients, cluster, pg, first_page, PAGES_PER_PG)
    model = RedoModel(first_page=first_page, page_count=PAGES_PER_PG, seed=pg)
    await append_all(all_clients, pg, model.records(10))
    return model


async def invalid_appends(client: StorageClient) -> float:
    samples = metrics.parse(await client.metrics())
    return samples.get('borealis_storage_invalid_requests_total{rpc="AppendRedo"}', 0)


async def assert_still_serving(
    cluster: LocalCluster, all_clients: list[StorageClient], pg: int, model: RedoModel
) -> None:
    """Nothing of the bad request was stored, and a valid append and GetPage work."""
    for node in cluster.storage_nodes:
        assert node.is_running(), f"{node.name} died"
        assert await rpc.health_status(node.address, 2.0) == "SERVING"
    states = await asyncio.gather(*(c.state(segment_id(pg)) for c in all_clients))
    assert {(s.scl, s.highest_lsn, s.records) for s in states} == {
        (model.lsn, model.lsn, len(model.encoded))
    }
    acks = await append_all(all_clients, pg, model.records(5))
    assert {ack.scl for ack in acks} == {model.lsn}
    for client in all_clients:
        for page in (model.first_page, *model.pages):
            got = await client.get_page(segment_id(pg), EPOCHS, page, model.lsn)
            assert got == model.page_at(page, model.lsn)


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_malformed_append_is_refused(cluster: LocalCluster, case: str) -> None:
    pg = 1 + list(BAD_BATCHES).index(case)
    make_batch, message = BAD_BATCHES[case]

    async def scenario() -> None:
        all_clients = clients(cluster)
        try:
            model = await prepare(cluster, all_clients, pg)
            invalid_before = [await invalid_appends(c) for c in all_clients]
            batch = make_batch(model)
            for client in all_clients:
                with pytest.raises(InvalidRequest, match=message):
                    await client.append(segment_id(pg), EPOCHS, batch)
            invalid_after = [await invalid_appends(c) for c in all_clients]
            assert invalid_after == [count + 1 for count in invalid_before]
            await assert_still_serving(cluster, all_clients, pg, model)
        finally:
            await close_all(all_clients)

    run(scenario)


async def read_records_reversed(client: StorageClient, pg: int, model: RedoModel) -> None:
    await client.read_records(segment_id(pg), EPOCHS, model.lsn, model.lsn - 1)


async def membership_without_pages(
    client: StorageClient, pg: int, model: RedoModel, cluster: LocalCluster
) -> None:
    # A segment that does not exist yet: the refusal must not create it either.
    await client.set_membership(segment_id(pg + 100), EPOCHS, 0, 0, members(cluster))


async def membership_without_pages_existing(
    client: StorageClient, pg: int, model: RedoModel, cluster: LocalCluster
) -> None:
    await client.set_membership(segment_id(pg), EPOCHS, model.first_page, 0, members(cluster))


OTHER_REQUESTS: dict[str, tuple[Callable[..., Awaitable[None]], type[Exception], str]] = {
    "read_records_up_to_below_after": (
        lambda client, pg, model, cluster: read_records_reversed(client, pg, model),
        InvalidRequest,
        "up_to_lsn is below after_lsn",
    ),
    "set_membership_page_count_0_new": (
        membership_without_pages,
        InvalidRequest,
        "at least one page",
    ),
    "set_membership_page_count_0_existing": (
        membership_without_pages_existing,
        InvalidRequest,
        "at least one page",
    ),
    "append_to_unknown_segment": (
        lambda client, pg, model, cluster: client.append(
            segment_id(pg + 200), EPOCHS, [record(model)]
        ),
        NotFound,
        "no such segment",
    ),
    "get_page_of_unknown_segment": (
        lambda client, pg, model, cluster: client.get_page(segment_id(pg + 200), EPOCHS, 0, 1),
        NotFound,
        "no such segment",
    ),
    "read_records_of_unknown_segment": (
        lambda client, pg, model, cluster: client.read_records(segment_id(pg + 200), EPOCHS, 0, 10),
        NotFound,
        "no such segment",
    ),
    "state_of_unknown_segment": (
        lambda client, pg, model, cluster: client.state(segment_id(pg + 200)),
        NotFound,
        "no such segment",
    ),
}


@pytest.mark.parametrize("case", list(OTHER_REQUESTS))
def test_malformed_request_is_refused(cluster: LocalCluster, case: str) -> None:
    pg = 1 + len(BAD_BATCHES) + list(OTHER_REQUESTS).index(case)
    send, error, message = OTHER_REQUESTS[case]

    async def scenario() -> None:
        all_clients = clients(cluster)
        try:
            model = await prepare(cluster, all_clients, pg)
            for client in all_clients:
                with pytest.raises(error, match=message):
                    await send(client, pg, model, cluster)
                listed = {(s.volume_id, s.pg) for s in await client.list_segments()}
                assert (segment_id(pg).volume_id, pg + 100) not in listed
                assert (segment_id(pg).volume_id, pg + 200) not in listed
                state = await client.state(segment_id(pg))
                assert (state.first_page, state.page_count) == (model.first_page, PAGES_PER_PG)
            await assert_still_serving(cluster, all_clients, pg, model)
        finally:
            await close_all(all_clients)

    run(scenario)


def test_undecodable_request_body_is_refused(
    shared_builder: ClusterBuilder, cluster: LocalCluster
) -> None:
    """Bytes that are no protobuf at all: gRPC refuses them before any handler runs."""
    # grpc's own server code logs the failed decoding at ERROR, with a traceback.
    shared_builder.allowed_errors.append(
        r"logger=grpc\._cython\.cygrpc event=\"Unexpected \[DecodeError\] raised by servicer "
        r"method \[/borealis\.storage\.Storage/AppendRedo\]\""
    )
    pg = 1 + len(BAD_BATCHES) + len(OTHER_REQUESTS)
    bodies = [
        b"\xff" * 16,  # a tag varint that never ends
        b"\x0a\xff\xff\xff\x0f",  # field 1 claims far more bytes than follow
        b"\x12\x05abc",  # field 2 (records) truncated
    ]

    async def scenario() -> None:
        all_clients = clients(cluster)
        try:
            model = await prepare(cluster, all_clients, pg)
            for node in cluster.storage_nodes:
                async with rpc.channel(node.address, 2**20) as channel:
                    call = channel.unary_unary(
                        APPEND_REDO, request_serializer=None, response_deserializer=None
                    )
                    for body in bodies:
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            await call(body, timeout=5.0)
                        # grpcio 1.x answers UNKNOWN ("Unexpected DecodeError").
                        assert refused.value.code() in UNDECODABLE_STATUSES
                    # The same channel still carries a well-formed request.
                    good = encode_append(segment_id(pg), EPOCHS, model.encoded[-1:])
                    response = await call(good, timeout=5.0)
                    assert response  # an AppendRedoResponse, serialized
            await assert_still_serving(cluster, all_clients, pg, model)
        finally:
            await close_all(all_clients)

    run(scenario)
