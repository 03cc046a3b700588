"""compute_node/volume/shipper.py against in-process fake storage nodes.

The fakes keep each segment's chain with storage's own sans-IO SegmentChain, so
their SCLs follow the same rules as a real node's: group commit batching, one
encoding per batch, quorum with slow or failed nodes, resends to lagging
segments and holes, waiters, stalls and their errors, fencing, bounded retention.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from borealis import redo
from borealis.errors import NotFound, StaleEpoch, Unavailable, WriterFenced, sqlstate_of
from borealis.ids import Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.redo import Kind, RedoRecord
from compute_node.volume import shipper as shipper_module
from compute_node.volume.durability import DurabilityTracker
from compute_node.volume.epochs import NO_TRUNCATION, EpochCatchUp
from compute_node.volume.lsn import LsnAllocator
from compute_node.volume.shipper import Shipper, ShipperConfig
from compute_node.volume.topology import Topology
from proto import storage_pb2
from storage_node.chain import SegmentChain
from storage_node.client import AppendAck
from storage_node.segment import Member, SegmentMeta

pytestmark = pytest.mark.unit

VOLUME = VolumeId(3)
EPOCHS = Epochs(Epoch(1), Epoch(1))
PAGES_PER_PG = 16
MEMBERS = [
    Member(name, f"fake:{name}", f"az-{name[0]}") for name in ("a1", "a2", "b1", "b2", "c1", "c2")
]
NODES = [member.node for member in MEMBERS]


class FakeNode:
    """One storage node in process: segments as chains, with knobs for faults."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chains: dict[int, SegmentChain] = {}
        self.epochs = EPOCHS
        self.delay_s = 0.0
        self.down = False
        # While set, calls wait for it (then honour their deadline); per PG too.
        self.gate: asyncio.Event | None = None
        self.pg_gates: dict[int, asyncio.Event] = {}
        # Calls to fail (after receiving them) before behaving again.
        self.fail_next = 0
        self.calls = 0
        self.requests: list[bytes] = []
        # Every record held per PG (for truncation), and each record's PG backlink.
        self.held: dict[int, list[Lsn]] = {}
        self.prev_by_lsn: dict[Lsn, Lsn] = {}
        self.truncation: tuple[Lsn, Lsn] = (Lsn(0), Lsn(0))
        self.set_epoch_calls: list[tuple[int, int] | None] = []

    def create(self, pg: int) -> None:
        self.chains.setdefault(pg, SegmentChain())

    def scl(self, pg: int) -> Lsn:
        return self.chains[pg].scl

    async def append_encoded(self, request: bytes, timeout_s: float | None = None) -> AppendAck:
        self.calls += 1
        self.requests.append(request)
        try:
            async with asyncio.timeout(timeout_s):
                if self.gate is not None:
                    await self.gate.wait()
                pg = storage_pb2.AppendRedoRequest.FromString(request).segment.pg
                if pg in self.pg_gates:
                    await self.pg_gates[pg].wait()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
        except TimeoutError:
            raise Unavailable("deadline exceeded", node=self.name) from None
        if self.down:
            raise Unavailable("connection refused", node=self.name)
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("lost on the way", node=self.name)
        message = storage_pb2.AppendRedoRequest.FromString(request)
        epochs = Epochs(
            Epoch(message.segment.volume_epoch), Epoch(message.segment.membership_epoch)
        )
        if epochs != self.epochs:
            raise StaleEpoch("request epochs do not match the segment's", node=self.name)
        chain = self.chains.get(message.segment.pg)
        if chain is None:
            raise NotFound("no such segment on this node", node=self.name)
        new = 0
        above, up_to = self.truncation
        for data in message.records:
            header = redo.check(data)
            lsn, prev = Lsn(header[1]), Lsn(header[3])
            if above < lsn <= up_to:
                continue
            added = chain.add(lsn, prev)
            if added:
                self.held.setdefault(message.segment.pg, []).append(lsn)
                self.prev_by_lsn[lsn] = prev
            new += added
        return AppendAck(chain.scl, chain.highest_lsn, new)

    async def set_membership(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        first_page: int,
        page_count: int,
        members: list[Member],
        timeout_s: float | None = None,
        members_old: list[Member] | None = None,
        hydrate: bool = False,
    ) -> None:
        if self.down:
            raise Unavailable("connection refused", node=self.name)
        self.create(segment_id.pg)

    async def state(self, segment_id: SegmentId, timeout_s: float | None = None) -> SegmentMeta:
        if self.down:
            raise Unavailable("connection refused", node=self.name)
        chain = self.chains[segment_id.pg]
        above, up_to = self.truncation
        return SegmentMeta(
            volume_id=segment_id.volume_id,
            pg=segment_id.pg,
            first_page=segment_id.pg * PAGES_PER_PG,
            page_count=PAGES_PER_PG,
            volume_epoch=self.epochs.volume,
            membership_epoch=self.epochs.membership,
            scl=chain.scl,
            highest_lsn=chain.highest_lsn,
            truncated_above_lsn=above,
            truncated_up_to_lsn=up_to,
        )

    async def set_epoch(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        truncate: tuple[int, int] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        if self.down:
            raise Unavailable("connection refused", node=self.name)
        assert epochs.volume >= self.epochs.volume, (epochs, self.epochs)
        self.epochs = epochs
        self.set_epoch_calls.append(truncate)
        if truncate is not None:
            above, up_to = truncate
            chain = self.chains[segment_id.pg]
            kept = [lsn for lsn in self.held[segment_id.pg] if not above < lsn <= up_to]
            self.held[segment_id.pg] = kept
            self.truncation = (Lsn(above), Lsn(up_to))
            # Rebuilt from what is left, as storage does from its log.
            self.chains[segment_id.pg] = rebuilt = SegmentChain()
            for lsn in kept:
                rebuilt.add(lsn, self.prev_by_lsn[lsn])
            del chain


class Rig:
    """A tracker, a shipper on six fake nodes, and a writer making commit groups."""

    def __init__(self, pgs: int = 1, missing: tuple[str, ...] = (), **config: Any) -> None:
        self.nodes = {name: FakeNode(name) for name in NODES}
        self.topology = Topology(VOLUME, MEMBERS, PAGES_PER_PG)
        self.allocator = LsnAllocator()
        self.tracker = DurabilityTracker()
        self.vdls: list[Lsn] = []
        self.scls: list[tuple[PgIndex, str, Lsn]] = []
        self.shipper = Shipper(
            VOLUME,
            self.tracker,
            self.nodes,
            ShipperConfig(**{"retry_delay_min_ms": 5.0, "retry_delay_max_ms": 20.0, **config}),
            on_scl=lambda pg, node, scl: self.scls.append((pg, node, scl)),
            on_vdl=self.vdls.append,
        )
        for pg in range(pgs):
            for name, node in self.nodes.items():
                if name not in missing:
                    node.create(pg)
            self.shipper.add_pg(
                PgIndex(pg),
                MEMBERS,
                EPOCHS,
                pg * PAGES_PER_PG,
                PAGES_PER_PG,
                missing=missing,
            )

    def commit(self, pages: list[int]) -> Lsn:
        """One commit group of small deltas to `pages`; returns its CPL."""
        assignments = self.allocator.assign(pages, self.topology)
        records = [
            redo.encode(
                RedoRecord(
                    lsn=a.lsn,
                    prev_lsn_volume=a.prev_lsn_volume,
                    prev_lsn_pg=a.prev_lsn_pg,
                    prev_lsn_page=a.prev_lsn_page,
                    page=a.page,
                    kind=Kind.DELTA,
                    payload=redo.delta_payload([(a.lsn % 4000, b"x" * 8)]),
                    cpl=a.cpl,
                    commit_time_us=1 if a.cpl else 0,
                )
            )
            for a in assignments
        ]
        self.shipper.submit(assignments, records)
        return assignments[-1].lsn

    def node(self, index: int) -> FakeNode:
        return self.nodes[NODES[index]]

    def scls_of(self, pg: int = 0) -> list[Lsn]:
        return [node.scl(pg) if pg in node.chains else Lsn(0) for node in self.nodes.values()]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- group commit -------------------------------------------------------------------------


def test_group_commit_batches_concurrent_groups_and_encodes_each_batch_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encodings: list[bytes] = []
    real_encode = shipper_module.encode_append

    def counting_encode(*args: Any) -> bytes:
        encodings.append(real_encode(*args))
        return encodings[-1]

    monkeypatch.setattr(shipper_module, "encode_append", counting_encode)

    async def scenario() -> None:
        rig = Rig()
        for node in rig.nodes.values():
            node.delay_s = 0.005
        # Eight "sessions" each committing 25 single-page groups, interleaved.
        cpls = []
        for _ in range(25):
            for session in range(8):
                cpls.append(rig.commit([session]))
            await asyncio.sleep(0.001)
        await asyncio.wait_for(rig.shipper.wait_durable(cpls[-1]), 5)
        stats = rig.shipper.stats
        assert stats.groups == 200 and stats.records == 200
        # Records of many groups share a batch: far fewer batches than groups.
        assert stats.batches < stats.groups / 4, stats
        assert stats.batch_records == 200
        assert stats.rpcs_per_segment_per_commit() < 1
        # Each batch was encoded once and the same bytes went to all six nodes.
        assert len(encodings) == stats.batches
        assert stats.rpcs == 6 * stats.batches and stats.catchup_rpcs == 0
        for node in rig.nodes.values():
            assert node.requests == encodings
        # Every segment is complete, nothing is retained.
        await until(lambda: all(scl == cpls[-1] for scl in rig.scls_of()))
        await until(lambda: rig.shipper.retained_bytes() == 0)
        assert rig.vdls[-1] == cpls[-1] and rig.vdls == sorted(rig.vdls)

    run(scenario)


def test_batches_are_bounded_in_records_and_bytes() -> None:
    async def scenario() -> None:
        rig = Rig(batch_records_max=7)
        gate = asyncio.Event()
        for node in rig.nodes.values():
            node.gate = gate
        first = rig.commit([0])  # in flight while the rest queue up
        await asyncio.sleep(0.01)
        last = first
        for page in range(40):
            last = rig.commit([page % PAGES_PER_PG])
        gate.set()
        await asyncio.wait_for(rig.shipper.wait_durable(last), 5)
        stats = rig.shipper.stats
        assert stats.batches == 1 + 6  # 40 records in batches of at most 7
        for node in rig.nodes.values():
            sizes = [
                len(storage_pb2.AppendRedoRequest.FromString(r).records) for r in node.requests
            ]
            assert max(sizes) <= 7

    run(scenario)


def test_a_group_across_pgs_is_durable_only_when_every_pg_has_a_quorum() -> None:
    async def scenario() -> None:
        rig = Rig(pgs=2)
        gate = asyncio.Event()
        # PG 1's records reach only 3 nodes until the gate opens.
        for index in (3, 4, 5):
            rig.node(index).pg_gates[1] = gate
        cpl = rig.commit([1, PAGES_PER_PG + 1])
        await until(lambda: rig.tracker.pgcl(PgIndex(0)) == cpl - 1)
        waiter = asyncio.ensure_future(rig.shipper.wait_durable(cpl))
        await asyncio.sleep(0.05)
        assert not waiter.done() and rig.tracker.vdl == 0
        gate.set()
        assert await asyncio.wait_for(waiter, 5) == cpl

    run(scenario)


# -- quorum, retries, resends --------------------------------------------------------------


def test_writes_continue_with_two_nodes_slow_and_down_then_they_catch_up() -> None:
    async def scenario() -> None:
        rig = Rig(rpc_timeout_ms=100.0)
        slow_gate = asyncio.Event()
        rig.node(0).gate = slow_gate  # never answers in time
        rig.node(5).down = True
        started = time.monotonic()
        last = Lsn(0)
        for round_index in range(20):
            last = rig.commit([round_index % PAGES_PER_PG])
            await asyncio.wait_for(rig.shipper.wait_durable(last), 2)
        elapsed_s = time.monotonic() - started
        # Nothing waited for the two bad nodes (one would cost a 100 ms deadline).
        assert elapsed_s < 1.0, elapsed_s
        assert rig.tracker.vdl == last
        stats = rig.shipper.stats
        assert stats.rpc_failures >= 1
        assert rig.node(0).scl(0) < last and rig.node(5).scl(0) == 0
        # Retained for them; the quorum's records are all there.
        assert rig.shipper.retained_bytes() > 0
        # They recover: each is sent what it is missing from its last SCL.
        rig.node(0).gate = None
        slow_gate.set()
        rig.node(5).down = False
        await until(lambda: rig.scls_of() == [last] * 6)
        assert stats.catchup_rpcs >= 2
        await until(lambda: rig.shipper.retained_bytes() == 0)
        # The node that was down got records only in order (no hole, no pending).
        assert rig.node(5).chains[0].pending() == 0

    run(scenario)


def test_a_lost_call_leaves_a_hole_that_is_resent() -> None:
    async def scenario() -> None:
        rig = Rig(requests_per_segment_max=2)
        lagging = rig.node(2)
        gate = asyncio.Event()
        lagging.gate = gate
        first = rig.commit([1])
        await until(lambda: rig.tracker.vdl == first)
        # Its first call fails after the second was sent: the second lands above a hole.
        second = rig.commit([2])
        await until(lambda: rig.tracker.vdl == second)
        assert lagging.calls == 2
        lagging.fail_next = 1
        gate.set()
        await until(lambda: lagging.scl(0) == second)
        assert rig.shipper.stats.rpc_failures == 1
        assert rig.shipper.stats.catchup_rpcs >= 1
        assert lagging.chains[0].pending() == 0

    run(scenario)


def test_a_node_without_the_segment_gets_it_created_and_filled() -> None:
    async def scenario() -> None:
        rig = Rig(missing=(NODES[4],))
        last = Lsn(0)
        for page in range(5):
            last = rig.commit([page])
        await asyncio.wait_for(rig.shipper.wait_durable(last), 5)
        await until(lambda: rig.scls_of() == [last] * 6)
        assert rig.shipper.stats.segments_recreated == 1

    run(scenario)


# -- waiters, stalls, fencing -----------------------------------------------------------------


def test_without_a_write_quorum_waiters_fail_naming_the_pg_and_then_recover() -> None:
    async def scenario() -> None:
        rig = Rig(pgs=2, rpc_timeout_ms=50.0)
        ok = rig.commit([0, PAGES_PER_PG])
        await asyncio.wait_for(rig.shipper.wait_durable(ok), 5)
        for index in (1, 3, 5):
            rig.node(index).down = True
        stalled = rig.commit([PAGES_PER_PG + 2])  # PG 1 only
        with pytest.raises(Unavailable) as caught:
            await rig.shipper.wait_durable(stalled, timeout_s=0.3)
        error = caught.value
        assert error.context["pg"] == 1 and error.context["lsn"] == stalled
        assert "PG 1 has no write quorum" in str(error)
        assert "connection refused" in error.context["errors"]
        assert rig.shipper.stats.waiter_timeouts == 1
        assert rig.tracker.vdl == ok
        # A worker thread's waiter fails the same way.
        future: concurrent.futures.Future[Lsn] = concurrent.futures.Future()
        rig.shipper.add_waiter(stalled, future, 0.05)
        with pytest.raises(Unavailable):
            await asyncio.wrap_future(future)
        # The nodes return: the retained records go out and the commit becomes durable.
        for index in (1, 3, 5):
            rig.node(index).down = False
        assert await asyncio.wait_for(rig.shipper.wait_durable(stalled), 5) == stalled

    run(scenario)


def test_waiters_from_threads_are_released_in_lsn_order() -> None:
    async def scenario() -> None:
        rig = Rig()
        gate = asyncio.Event()
        for node in rig.nodes.values():
            node.gate = gate
        loop = asyncio.get_running_loop()
        cpls = [rig.commit([page]) for page in range(3)]
        released: list[Lsn] = []

        def wait_in_thread(lsn: Lsn) -> None:
            future: concurrent.futures.Future[Lsn] = concurrent.futures.Future()
            loop.call_soon_threadsafe(rig.shipper.add_waiter, lsn, future, 5.0)
            future.result(6)
            released.append(lsn)

        threads = [threading.Thread(target=wait_in_thread, args=(lsn,)) for lsn in cpls]
        for thread in threads:
            thread.start()
        await asyncio.sleep(0.05)
        assert released == [] and rig.shipper.waiters() == 3
        gate.set()
        await until(lambda: len(released) == 3)
        for thread in threads:
            thread.join()
        assert rig.shipper.waiters() == 0
        # An LSN already durable resolves at once.
        assert await rig.shipper.wait_durable(cpls[0]) == cpls[-1]

    run(scenario)


def test_three_segments_refusing_the_epoch_fence_the_writer() -> None:
    async def scenario() -> None:
        rig = Rig()
        newer = Epochs(Epoch(2), Epoch(1))
        for index in (0, 2, 4):
            rig.node(index).epochs = newer
        cpl = rig.commit([1])
        with pytest.raises(StaleEpoch, match="fenced"):
            await asyncio.wait_for(rig.shipper.wait_durable(cpl), 5)
        assert rig.shipper.fenced is not None
        # Later groups are not sent, and their waiters fail at once.
        calls = sum(node.calls for node in rig.nodes.values())
        later = rig.commit([2])
        with pytest.raises(StaleEpoch):
            await rig.shipper.wait_durable(later)
        assert sum(node.calls for node in rig.nodes.values()) == calls

    run(scenario)


def test_close_fails_the_waiters_left() -> None:
    async def scenario() -> None:
        rig = Rig()
        for node in rig.nodes.values():
            node.gate = asyncio.Event()
        cpl = rig.commit([1])
        waiter = asyncio.ensure_future(rig.shipper.wait_durable(cpl))
        await asyncio.sleep(0.01)
        await rig.shipper.close()
        with pytest.raises(Unavailable, match="closed"):
            await waiter

    run(scenario)


# -- retention -----------------------------------------------------------------------------------


def test_retention_is_bounded_and_a_segment_beyond_it_is_left_behind() -> None:
    async def scenario() -> None:
        rig = Rig(retained_bytes_max=2000)
        rig.node(3).down = True
        last = Lsn(0)
        for page in range(60):
            last = rig.commit([page % PAGES_PER_PG])
            await asyncio.wait_for(rig.shipper.wait_durable(last), 2)
        stats = rig.shipper.stats
        # Records complete at a write quorum were dropped beyond the bound.
        assert rig.shipper.retained_bytes() <= 2000 + 200
        assert stats.segments_left_behind == 1
        # Back up, it gets what is retained (above a hole only gossip can fill)
        # and new batches; it stays behind, and nothing loops resending.
        rig.node(3).down = False
        rpcs_before = stats.rpcs
        for page in range(5):
            last = rig.commit([page])
        await asyncio.wait_for(rig.shipper.wait_durable(last), 2)
        await until(lambda: rig.node(3).chains[0].highest_lsn == last)
        assert rig.node(3).scl(0) == 0
        await asyncio.sleep(0.1)
        assert stats.rpcs - rpcs_before <= 6 * 5 + 10
        assert stats.segments_left_behind == 1
        # Gossip fills the hole from a peer. Nothing new is written, yet the
        # shipper learns the new SCL (a quorum may be waiting on this segment).
        source, behind = rig.node(0), rig.node(3)
        for lsn in source.held[0]:
            behind.chains[0].add(lsn, source.prev_by_lsn[lsn])
        assert behind.scl(0) == last
        await until(lambda: rig.shipper.segment_view(PgIndex(0))[behind.name]["scl"] == last)
        assert not rig.shipper.segment_view(PgIndex(0))[behind.name]["left_behind"]

    run(scenario)


def test_lsn_readable_is_the_pgs_newest_record_at_or_below() -> None:
    async def scenario() -> None:
        rig = Rig(pgs=2)
        gate = asyncio.Event()
        rig.node(0).gate = gate  # keeps records retained
        a = rig.commit([0])
        b = rig.commit([PAGES_PER_PG])
        c = rig.commit([1])
        await asyncio.wait_for(rig.shipper.wait_durable(c), 5)
        pg0, pg1 = PgIndex(0), PgIndex(1)
        assert rig.shipper.lsn_readable(pg0, c) == c
        assert rig.shipper.lsn_readable(pg0, b) == a
        assert rig.shipper.lsn_readable(pg1, c) == b
        assert rig.shipper.lsn_readable(pg1, a) == 0  # PG 1 had no record yet
        gate.set()
        await until(lambda: rig.shipper.retained_bytes() == 0)
        # Dropped records: the floor still answers.
        assert rig.shipper.lsn_readable(pg1, c) == b
        assert rig.shipper.lsn_readable(pg0, Lsn(c + 10)) == c

    run(scenario)


# -- epochs after a recovery -----------------------------------------------------------------


def test_a_segment_behind_the_epoch_is_caught_up_with_its_truncation_not_counted_as_fencing() -> (
    None
):
    async def scenario() -> None:
        # The writer of epoch 2 recovered VDL 0 and truncated (0, 500]; three nodes were
        # down and still hold an old writer's records in that range at epoch 1.
        rig = Rig()
        catch_up = EpochCatchUp(Epoch(2), (Lsn(0), Lsn(500)), NO_TRUNCATION)
        rig.shipper = Shipper(
            VOLUME,
            DurabilityTracker(Lsn(0), lsn_allocation_floor=Lsn(500)),
            rig.nodes,
            ShipperConfig(retry_delay_min_ms=5.0, retry_delay_max_ms=20.0),
            catch_up=catch_up,
        )
        rig.allocator = LsnAllocator(start_after=Lsn(500))
        new_epochs = Epochs(Epoch(2), Epoch(1))
        behind = (1, 3, 5)
        for index in range(6):
            node = rig.node(index)
            node.create(0)
            if index in behind:
                # An old writer's record at LSN 7 (from nothing): off the chain now.
                chain = node.chains[0]
                chain.add(Lsn(7), Lsn(0))
                node.held[0] = [Lsn(7)]
                node.prev_by_lsn[Lsn(7)] = Lsn(0)
            else:
                node.epochs = new_epochs
                node.truncation = (Lsn(0), Lsn(500))
        checked = [NODES[index] for index in range(6) if index not in behind]
        rig.shipper.add_pg(
            PgIndex(0), MEMBERS, new_epochs, 0, PAGES_PER_PG, Lsn(0), checked=checked
        )
        assert rig.scls_of() == [0, 7, 0, 7, 0, 7]
        cpl = rig.commit([1, 2])
        # Three up-to-date segments are not a write quorum: the other three must be
        # caught up (not taken for a newer writer) before the commit is durable.
        assert await asyncio.wait_for(rig.shipper.wait_durable(cpl), 5) >= cpl
        assert rig.shipper.fenced is None
        for index in behind:
            node = rig.node(index)
            assert node.epochs == new_epochs
            assert node.set_epoch_calls == [(0, 500)]
            assert Lsn(7) not in node.held[0]
        await until(lambda: rig.scls_of() == [cpl] * 6)
        assert rig.shipper.stats.segments_caught_up == 3
        await rig.shipper.close()

    run(scenario)


def test_fenced_writer_fails_every_waiter_and_later_commit_with_writer_fenced() -> None:
    async def scenario() -> None:
        rig = Rig()
        for node in rig.nodes.values():
            node.epochs = Epochs(Epoch(2), Epoch(1))
        cpl = rig.commit([1])
        with pytest.raises(WriterFenced, match="no longer the writer"):
            await asyncio.wait_for(rig.shipper.wait_durable(cpl), 5)
        assert sqlstate_of_fenced(rig.shipper.fenced) == "25006"
        later = rig.commit([2])
        with pytest.raises(WriterFenced):
            await rig.shipper.wait_durable(later)
        # Nothing was ever durable at the old epoch.
        assert rig.shipper.vdl == 0

    run(scenario)


def sqlstate_of_fenced(error: BaseException | None) -> str:
    assert isinstance(error, WriterFenced)
    return sqlstate_of(error)
