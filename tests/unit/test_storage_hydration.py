"""Hydration's pieces without a network: segment meta with members_old and hydrating,
the choice of source peer and base, the checks on a peer's answers, and the store
operations that copy images and records and then start the chain at the base
(driven in one thread on a temporary LMDB)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import lmdb
import pytest

from borealis import redo
from borealis.errors import Corruption, StaleEpoch
from borealis.ids import Epoch, Epochs, Lsn
from storage_node.chain import SegmentChain
from storage_node.client import StorageClient
from storage_node.convert import state_of, state_to_proto
from storage_node.hydration import check_images, check_records, pick_source
from storage_node.peers import Peers
from storage_node.segment import Member, Segment, SegmentMeta
from storage_node.store import IncomingRecord, Publish, SegmentStore
from tests.support.redo_model import RedoModel

pytestmark = pytest.mark.unit

OLD = [Member(f"s{n}", f"127.0.0.1:{7000 + n}", f"az-{n % 3}") for n in range(1, 7)]
NEW = OLD[:5] + [Member("s7", "127.0.0.1:7007", "az-0")]
EPOCHS = Epochs(Epoch(1), Epoch(2))
PAGE_COUNT = 16


def meta(**changes: object) -> SegmentMeta:
    values: dict[str, object] = {
        "volume_id": 7,
        "pg": 0,
        "first_page": 0,
        "page_count": PAGE_COUNT,
        "volume_epoch": EPOCHS.volume,
        "membership_epoch": EPOCHS.membership,
        "members": list(NEW),
        **changes,
    }
    return SegmentMeta(**values)  # type: ignore[arg-type]


# -- meta and state ------------------------------------------------------------------


def test_meta_json_round_trips_members_old_and_hydrating() -> None:
    original = meta(members_old=list(OLD), hydrating=True, scl=0, highest_lsn=42)
    loaded = SegmentMeta.from_json(original.to_json())
    assert loaded == original
    assert loaded.members_old == OLD and loaded.hydrating
    settled = meta(scl=9)
    assert SegmentMeta.from_json(settled.to_json()) == settled


def test_meta_json_written_before_membership_changes_still_loads() -> None:
    values = json.loads(meta(scl=5, pgmrpl=3).to_json())
    del values["members_old"], values["hydrating"]
    loaded = SegmentMeta.from_json(json.dumps(values).encode())
    assert (loaded.members_old, loaded.hydrating, loaded.scl, loaded.pgmrpl) == ([], False, 5, 3)
    assert loaded.members == NEW


def test_meta_copy_does_not_share_member_lists() -> None:
    original = meta(members_old=list(OLD))
    copied = original.copy()
    copied.members_old.clear()
    copied.members.clear()
    assert (original.members_old, original.members) == (OLD, NEW)


def test_segment_state_carries_members_old_and_hydrating() -> None:
    for hydrating, members_old in ((True, OLD), (False, [])):
        original = meta(members_old=list(members_old), hydrating=hydrating)
        message = state_to_proto(Segment(original, SegmentChain()))
        assert (message.hydrating, len(message.members_old)) == (hydrating, len(members_old))
        assert state_of(message) == original


def test_peers_are_the_union_of_both_member_sets_without_this_node() -> None:
    async def scenario() -> list[str]:
        peers = Peers("s2", timeout_s=1.0)
        try:
            segment = Segment(meta(members_old=list(OLD)), SegmentChain())
            return [member.node for member, _client in peers.of(segment)]
        finally:
            await peers.close()

    assert sorted(asyncio.run(scenario())) == ["s1", "s3", "s4", "s5", "s6", "s7"]


# -- choosing the source -------------------------------------------------------------


def peer_states(*states: SegmentMeta) -> list[tuple[StorageClient, SegmentMeta]]:
    # pick_source never calls the clients; a plain object stands for each.
    return [(object(), state) for state in states]  # type: ignore[misc]


def test_source_is_the_most_complete_peer_and_base_its_pgmrpl() -> None:
    states = peer_states(
        meta(scl=90, pgmrpl=40),
        meta(scl=120, pgmrpl=50),
        # Ahead, but at another membership epoch or still hydrating: not a source.
        meta(scl=200, pgmrpl=60, membership_epoch=1),
        meta(scl=300, pgmrpl=0, hydrating=True),
    )
    source = pick_source(states, EPOCHS)
    assert source is not None
    assert source == (states[1][0], 50)


def test_a_peer_complete_below_its_own_pgmrpl_is_no_source() -> None:
    # It cannot answer reads at its PGMRPL yet.
    assert pick_source(peer_states(meta(scl=30, pgmrpl=40)), EPOCHS) is None


def test_an_empty_pg_hydrates_at_zero_only_when_a_read_quorum_says_so() -> None:
    empty = [meta(scl=0, highest_lsn=0) for _ in range(3)]
    assert pick_source(peer_states(*empty), EPOCHS) == (None, 0)
    assert pick_source(peer_states(*empty[:2]), EPOCHS) is None
    assert pick_source([], EPOCHS) is None


# -- checking a peer's answers ---------------------------------------------------------


def segment_of(**changes: object) -> Segment:
    return Segment(meta(**changes), SegmentChain())


def test_check_images_refuses_what_a_peer_must_not_send() -> None:
    segment = segment_of()
    page = bytes(redo.PAGE_SIZE_BYTES)
    check_images(segment, [(1, Lsn(5), page), (3, Lsn(10), page)], base=10, start_page=0)
    for bad in (
        [(1, Lsn(5), page[:-1])],  # not a whole page
        [(PAGE_COUNT, Lsn(5), page)],  # outside the segment
        [(3, Lsn(5), page), (2, Lsn(5), page)],  # not ascending
        [(1, Lsn(11), page)],  # above the base
        [(1, Lsn(0), page)],  # no version
    ):
        with pytest.raises(Corruption):
            check_images(segment, bad, base=10, start_page=0)
    with pytest.raises(Corruption):
        check_images(segment, [(1, Lsn(5), page)], base=10, start_page=2)


def test_check_records_refuses_bad_out_of_order_and_out_of_range_records() -> None:
    segment = segment_of()
    model = RedoModel(first_page=0, page_count=4, seed=3)
    records = model.records(6)
    checked = check_records(segment, records, after=0, base=model.lsn)
    assert [item[0] for item in checked] == list(range(1, 7))
    with pytest.raises(Corruption):
        check_records(segment, records, after=0, base=model.lsn - 1)
    with pytest.raises(Corruption):
        check_records(segment, records[::-1], after=0, base=model.lsn)
    with pytest.raises(Corruption):
        damaged = records[0][:-1] + bytes([records[0][-1] ^ 0xFF])
        check_records(segment, [damaged], after=0, base=model.lsn)
    outside = RedoModel(first_page=PAGE_COUNT, page_count=1, seed=4).records(1)
    with pytest.raises(Corruption):
        check_records(segment, outside, after=0, base=10)


# -- store operations ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SegmentStore]:
    segment_store = SegmentStore(tmp_path / "segments", 2**26)
    try:
        yield segment_store
    finally:
        segment_store.close()


def run_op(store: SegmentStore, operation: Callable[[lmdb.Transaction], Publish]) -> object:
    """What the writer thread does with one operation: a transaction, then publish."""
    with store.env.begin(write=True) as txn:
        publish = operation(txn)
    return publish()


def incoming(records: list[bytes]) -> list[IncomingRecord]:
    checked = []
    for data in records:
        _, lsn, _, prev_lsn_pg, _, page, kind, _, _, _ = redo.check(data)
        checked.append((lsn, prev_lsn_pg, page, kind, data))
    return checked


def hydrating_segment(store: SegmentStore) -> Segment:
    created = run_op(store, partial(store.op_create, meta=meta(members_old=OLD, hydrating=True)))
    assert isinstance(created, Segment)
    return created


def peer_copy(model: RedoModel, base: int) -> tuple[list[tuple[int, int, bytes]], list[bytes]]:
    """What a peer collected at `base` answers: the images as of base, and the records it
    still holds at or below base (the newest of each page)."""
    images = []
    kept = set()
    for page in sorted(model.pages):
        image, page_lsn = model.page_at(page, base)
        if page_lsn:
            images.append((page, page_lsn, image))
            kept.add(page_lsn)
    records = [data for data in model.encoded if redo.HEADER.unpack_from(data)[1] in kept]
    return images, records


def test_hydration_ops_start_the_chain_at_the_base_and_keep_what_the_writer_sent(
    store: SegmentStore,
) -> None:
    model = RedoModel(first_page=0, page_count=6, seed=11)
    model.records(80)
    last_at_or_below_base = model.lsn
    # The base need not be a record of the PG: the chain restarts at the newest one.
    base = last_at_or_below_base + 3
    model.lsn += 5
    sent_meanwhile = model.records(10)
    segment = hydrating_segment(store)

    # The writer's records arrive first: held above the hole, the SCL stays 0.
    run_op(store, partial(store.op_append, segment=segment, records=incoming(sent_meanwhile)))
    assert (segment.scl, segment.meta.highest_lsn, segment.chain.pending()) == (0, model.lsn, 10)

    images, records = peer_copy(model, base)
    assert run_op(
        store,
        partial(store.op_put_hydrated_images, segment=segment, images=images, epochs=EPOCHS),
    ) == len(images)
    copy = partial(
        store.op_put_hydrated_records, segment=segment, records=incoming(records), epochs=EPOCHS
    )
    assert run_op(store, copy) == len(records)
    # A retried copy stores nothing twice.
    assert run_op(store, copy) == 0
    assert segment.scl == 0 and segment.meta.hydrating

    assert redo.HEADER.unpack_from(sent_meanwhile[0])[3] == last_at_or_below_base
    finish = partial(store.op_finish_hydration, segment=segment, base=base, epochs=EPOCHS)
    assert run_op(store, finish) == model.lsn
    assert (segment.scl, segment.pgmrpl, segment.meta.hydrating) == (model.lsn, base, False)
    assert segment.meta.records == len(records) + len(sent_meanwhile)
    for page in sorted(model.pages):
        for lsn in (base, base + 3, model.lsn):
            assert store.read_page(segment, page, lsn) == model.page_at(page, lsn)
    assert store.page_images(segment, base, 0, 2**20) == (images, False, PAGE_COUNT)

    # What is on disk says the same after a reload.
    store.load()
    assert (segment.scl, segment.pgmrpl, segment.meta.hydrating) == (model.lsn, base, False)


def test_hydration_ops_refuse_changed_epochs_and_survive_a_truncation(
    store: SegmentStore,
) -> None:
    model = RedoModel(first_page=0, page_count=4, seed=12)
    model.records(30)
    base = model.lsn
    doomed = model.records(5)
    segment = hydrating_segment(store)
    run_op(store, partial(store.op_append, segment=segment, records=incoming(doomed)))
    images, records = peer_copy(model, base)
    run_op(
        store, partial(store.op_put_hydrated_images, segment=segment, images=images, epochs=EPOCHS)
    )

    # Recovery raises the volume epoch and truncates above the base meanwhile.
    truncate = (base, base + 100)
    run_op(store, partial(store.op_set_epoch, segment=segment, volume_epoch=2, truncate=truncate))
    assert segment.chain.pending() == 0 and segment.scl == 0
    with pytest.raises(StaleEpoch):
        run_op(
            store,
            partial(store.op_finish_hydration, segment=segment, base=base, epochs=EPOCHS),
        )
    assert segment.meta.hydrating

    # The next pass, at the new epochs, finishes; the truncated records stay gone.
    epochs = Epochs(Epoch(2), EPOCHS.membership)
    run_op(
        store,
        partial(
            store.op_put_hydrated_records,
            segment=segment,
            records=incoming(records + doomed),
            epochs=epochs,
        ),
    )
    run_op(store, partial(store.op_finish_hydration, segment=segment, base=base, epochs=epochs))
    assert (segment.scl, segment.meta.highest_lsn) == (base, base)
    assert segment.meta.records == len(records)
    held, more = store.read_records(segment, 0, 2**63 - 1, 2**20)
    assert (held, more) == (records, False)


def test_page_images_pages_by_bytes_with_at_least_one_image_per_call(
    store: SegmentStore,
) -> None:
    model = RedoModel(first_page=2, page_count=7, seed=13)
    records = model.records(60)
    segment = hydrating_segment(store)
    run_op(store, partial(store.op_finish_hydration, segment=segment, base=0, epochs=EPOCHS))
    run_op(store, partial(store.op_append, segment=segment, records=incoming(records)))
    assert segment.scl == model.lsn
    expected = [
        (page, model.page_at(page, model.lsn)[1], model.page_at(page, model.lsn)[0])
        for page in sorted(model.pages)
    ]
    page_bytes = redo.PAGE_SIZE_BYTES
    for bytes_max, per_call in ((1, 1), (page_bytes, 1), (2 * page_bytes + 1, 2)):
        images: list[tuple[int, int, bytes]] = []
        start_page = 0
        for _ in range(PAGE_COUNT):
            batch, more, start_page = store.page_images(segment, model.lsn, start_page, bytes_max)
            assert len(batch) == (per_call if more else len(batch))
            images.extend(batch)
            if not more:
                break
        assert images == expected
    assert store.page_images(segment, 0, 0, 2**20) == ([], False, PAGE_COUNT)
