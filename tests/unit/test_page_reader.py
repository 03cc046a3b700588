"""The page reader's choice, hedging and fallback logic, against in-process fake nodes."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borealis import metrics
from borealis.errors import (
    BorealisError,
    Corruption,
    NotFound,
    StaleEpoch,
    Unavailable,
    VersionGone,
)
from borealis.ids import Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId
from borealis.redo import PAGE_SIZE_BYTES
from compute_node.volume.reader import PageReader, PageReaderConfig
from storage_node.segment import Member

pytestmark = pytest.mark.unit

VOLUME = VolumeId(3)
EPOCHS = Epochs(Epoch(1), Epoch(1))
PAGES_PER_PG = 8
NODES = ("s1", "s2", "s3", "s4", "s5", "s6")


def expected_image(page: int, lsn: int) -> bytes:
    return (page.to_bytes(4, "big") + lsn.to_bytes(8, "big")).ljust(PAGE_SIZE_BYTES, b"\0")


@dataclass
class FakeState:
    scl: int


@dataclass
class FakeNode:
    """A storage node in the test's process: answers after `delay_s`, refuses reads
    above its SCL like the real one, or misbehaves as told."""

    name: str
    scl: int = 1000
    delay_s: float = 0.0
    stall: bool = False  # never answers (until the call's deadline)
    error: BorealisError | None = None
    bad_image: bool = False
    get_calls: list[tuple[int, int]] = field(default_factory=list)
    state_calls: int = 0
    cancelled: int = 0
    in_flight: int = 0
    in_flight_max: int = 0

    async def get_page(
        self,
        segment_id: SegmentId,
        epochs: Epochs,
        page: int,
        lsn: int,
        timeout_s: float | None = None,
    ) -> tuple[bytes, Lsn]:
        assert segment_id == SegmentId(VOLUME, PgIndex(page // PAGES_PER_PG))
        assert epochs == EPOCHS and timeout_s is not None
        self.get_calls.append((page, lsn))
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            return await asyncio.wait_for(self._answer(page, lsn), timeout_s)
        except TimeoutError:
            raise Unavailable("deadline exceeded", status="DEADLINE_EXCEEDED") from None
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _answer(self, page: int, lsn: int) -> tuple[bytes, Lsn]:
        if self.stall:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if lsn > self.scl:
            raise Unavailable("segment is not complete to the read point", scl=self.scl)
        if self.bad_image:
            return b"short", Lsn(lsn)
        return expected_image(page, lsn), Lsn(lsn)

    async def state(self, segment_id: SegmentId, timeout_s: float | None = None) -> FakeState:
        assert timeout_s is not None
        self.state_calls += 1
        if self.stall:
            await asyncio.sleep(timeout_s)
            raise Unavailable("deadline exceeded", status="DEADLINE_EXCEEDED")
        if isinstance(self.error, Unavailable):
            raise self.error
        return FakeState(self.scl)

    async def close(self) -> None:
        pass


class FakeCluster:
    def __init__(self) -> None:
        self.nodes = {name: FakeNode(name) for name in NODES}
        self.members = [Member(name, f"fake:{index}", "az") for index, name in enumerate(NODES)]

    def reader(self, rng_seed: int = 0, **config: object) -> PageReader:
        settings_ = {"explore_ratio": 0.0, "hedge_delay_ms": 1000.0, **config}
        return PageReader(
            VOLUME,
            pg_of=lambda page: PgIndex(page // PAGES_PER_PG),
            placement=lambda pg: self.members,
            epochs_of=lambda pg: EPOCHS,
            client_of=lambda member: self.nodes[member.node],
            config=PageReaderConfig(**settings_),  # type: ignore[arg-type]
            rng=random.Random(rng_seed),
        )

    def calls(self) -> dict[str, int]:
        return {name: len(node.get_calls) for name, node in self.nodes.items()}

    def note_all(self, reader: PageReader, pg: int = 0) -> None:
        for name, node in self.nodes.items():
            reader.note_scl(PgIndex(pg), name, Lsn(node.scl))


async def settle() -> None:
    """Lets cancellations reach the fakes (through their wait_for) before checking."""
    await asyncio.sleep(0.01)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_reads_one_segment_and_learns_scls_by_state_when_unknown() -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        async with cluster.reader() as reader:
            assert await reader.read_page(3, Lsn(500)) == (expected_image(3, 500), 500)
            # Nothing known: one state() round, then one GetPage (no quorum read).
            assert sum(node.state_calls for node in cluster.nodes.values()) >= 1
            assert sum(cluster.calls().values()) == 1
            assert reader.stats.scl_refreshes == 1
            # Now the SCLs are known: no more state() calls for reads below them.
            await reader.read_page(4, Lsn(900))
            assert reader.stats.scl_refreshes == 1

    run(scenario())


def test_only_segments_complete_to_the_read_point_are_asked_first() -> None:
    cluster = FakeCluster()
    for name in ("s1", "s2", "s4", "s6"):
        cluster.nodes[name].scl = 100

    async def scenario() -> None:
        async with cluster.reader() as reader:
            cluster.note_all(reader)
            for page in range(PAGES_PER_PG):
                await reader.read_page(page, Lsn(500))
            assert reader.stats.scl_refreshes == 0 and reader.stats.retries == 0
            calls = cluster.calls()
            assert calls["s3"] + calls["s5"] == PAGES_PER_PG
            assert sum(calls.values()) == PAGES_PER_PG

    run(scenario())


def test_chooses_the_fastest_node_after_measuring_each_once() -> None:
    cluster = FakeCluster()
    for index, name in enumerate(NODES):
        cluster.nodes[name].delay_s = 0.002 + 0.004 * ((index + 3) % 6)
    fastest = NODES[3]  # (3 + 3) % 6 == 0

    async def scenario() -> None:
        async with cluster.reader() as reader:
            cluster.note_all(reader)
            for index in range(6):
                await reader.read_page(index, Lsn(10))
            assert all(count == 1 for count in cluster.calls().values())
            for index in range(20):
                await reader.read_page(index % PAGES_PER_PG, Lsn(10))
            assert cluster.calls()[fastest] == 21
            ewma = reader.stats.nodes[fastest].latency_ewma_s
            assert ewma is not None and ewma < 0.01

    run(scenario())


def test_exploration_sometimes_tries_another_complete_node() -> None:
    cluster = FakeCluster()
    for name in NODES[1:]:
        # s1 is clearly the fastest, also on a loaded machine (whose scheduling delays
        # add to every node's measured latency).
        cluster.nodes[name].delay_s = 0.02

    async def scenario() -> None:
        async with cluster.reader(explore_ratio=0.5, rng_seed=7) as reader:
            cluster.note_all(reader)
            for index in range(66):
                await reader.read_page(index % PAGES_PER_PG, Lsn(10))
            calls = cluster.calls()
            # After one measuring read each, about half of the other 60 reads explore.
            assert 15 <= sum(calls.values()) - calls["s1"] - 5 <= 45
            assert sum(1 for name in NODES[1:] if calls[name] > 1) >= 4

    run(scenario())


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("node down"),
        Corruption("bad crc"),
        NotFound("no such segment"),
        BorealisError("internal"),
    ],
)
def test_refusals_move_on_to_the_next_segment(error: BorealisError) -> None:
    cluster = FakeCluster()
    cluster.nodes["s1"].error = error
    cluster.nodes["s2"].error = error

    async def scenario() -> None:
        async with cluster.reader() as reader:
            cluster.note_all(reader)
            started = time.monotonic()
            assert await reader.read_page(1, Lsn(10)) == (expected_image(1, 10), 10)
            # Refusals move on at once, not after the (1 s) hedge delay.
            assert time.monotonic() - started < 0.5
            assert reader.stats.retries == 2 and reader.stats.hedged_reads == 0
            assert reader.stats.nodes["s1"].failures == 1
            # Failed nodes go to the back of the order while in cooldown.
            await reader.read_page(2, Lsn(10))
            assert cluster.calls()["s1"] == 1 and cluster.calls()["s2"] == 1

    run(scenario())


def test_a_segment_behind_is_skipped_and_the_read_succeeds_elsewhere() -> None:
    cluster = FakeCluster()
    cluster.nodes["s1"].scl = 5

    async def scenario() -> None:
        async with cluster.reader() as reader:
            # The reader believes s1 is complete (an old ack), but it is behind.
            reader.note_scl(PgIndex(0), "s1", Lsn(50))
            assert await reader.read_page(0, Lsn(50)) == (expected_image(0, 50), 50)
            assert cluster.calls()["s1"] == 1 and reader.stats.retries == 1

    run(scenario())


def test_all_refusing_raises_unavailable_with_page_and_lsn() -> None:
    cluster = FakeCluster()
    for name, node in cluster.nodes.items():
        node.error = Unavailable(f"{name} down")

    async def scenario() -> None:
        async with cluster.reader() as reader:
            with pytest.raises(Unavailable) as raised:
                await reader.read_page(9, Lsn(77))
            assert raised.value.context["page"] == 9 and raised.value.context["lsn"] == 77
            assert raised.value.context["pg"] == 1
            for name in NODES:
                assert f"{name} down" in raised.value.context["errors"]
            assert all(count == 1 for count in cluster.calls().values())
            assert reader.stats.failed_reads == 1

    run(scenario())


def test_stale_epochs_try_the_other_segments_and_are_raised_when_all_refuse() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.error = StaleEpoch("old epoch")

    async def scenario() -> None:
        async with cluster.reader() as reader:
            cluster.note_all(reader)
            with pytest.raises(StaleEpoch):
                await reader.read_page(1, Lsn(10))
            # Every segment was asked: one at a new membership epoch refuses alone.
            assert sum(cluster.calls().values()) == len(cluster.nodes)
            first = next(iter(cluster.nodes.values()))
            for node in cluster.nodes.values():
                node.error = None
            first.error = StaleEpoch("membership epoch moved on")
            assert await reader.read_page(1, Lsn(10)) == (expected_image(1, 10), Lsn(10))

    run(scenario())


@pytest.mark.parametrize("error", [VersionGone("below PGMRPL")])
def test_caller_errors_are_raised_without_trying_others(error: BorealisError) -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.error = error

    async def scenario() -> None:
        async with cluster.reader() as reader:
            cluster.note_all(reader)
            with pytest.raises(type(error)):
                await reader.read_page(1, Lsn(10))
            assert sum(cluster.calls().values()) == 1
            # The node is not blamed for the caller's mistake.
            assert all(stats.failures == 0 for stats in reader.stats.nodes.values())

    run(scenario())


def test_hedges_to_a_second_segment_and_cancels_the_slow_one() -> None:
    cluster = FakeCluster()
    cluster.nodes["s1"].stall = True

    async def scenario() -> None:
        async with cluster.reader(hedge_delay_ms=20.0) as reader:
            cluster.note_all(reader)
            started = time.monotonic()
            assert await reader.read_page(1, Lsn(10)) == (expected_image(1, 10), 10)
            assert time.monotonic() - started < 0.5
            assert reader.stats.hedged_reads == 1 and reader.stats.hedge_wins == 1
            await settle()
            assert cluster.nodes["s1"].cancelled == 1
            # The stalled node's cancelled call counts as a slow sample: the next read
            # starts elsewhere and needs no hedge.
            await reader.read_page(2, Lsn(10))
            assert reader.stats.hedged_reads == 1 and cluster.calls()["s1"] == 1

    run(scenario())


def test_slow_first_answer_still_wins_if_it_comes_first() -> None:
    cluster = FakeCluster()
    cluster.nodes["s1"].delay_s = 0.05
    cluster.nodes["s2"].delay_s = 0.5

    async def scenario() -> None:
        async with cluster.reader(hedge_delay_ms=10.0) as reader:
            cluster.note_all(reader)
            assert await reader.read_page(1, Lsn(10)) == (expected_image(1, 10), 10)
            assert reader.stats.hedged_reads == 1 and reader.stats.hedge_wins == 0
            await settle()
            assert cluster.nodes["s2"].cancelled == 1

    run(scenario())


def test_adaptive_hedge_delay_follows_the_p95() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.delay_s = 0.01

    async def scenario() -> None:
        async with cluster.reader(
            hedge_delay_ms=None, hedge_delay_initial_ms=300.0, hedge_samples_min=10
        ) as reader:
            cluster.note_all(reader)
            assert reader.hedge_delay_s == 0.3
            for index in range(10):
                await reader.read_page(index % PAGES_PER_PG, Lsn(10))
            assert 0.009 <= reader.hedge_delay_s < 0.1

    run(scenario())


def test_read_deadline_bounds_a_read_when_every_node_stalls() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.stall = True

    async def scenario() -> None:
        async with cluster.reader(
            hedge_delay_ms=5.0, read_timeout_ms=200.0, attempt_timeout_ms=5000.0
        ) as reader:
            cluster.note_all(reader)
            started = time.monotonic()
            with pytest.raises(Unavailable, match="timed out"):
                await reader.read_page(1, Lsn(10))
            assert time.monotonic() - started < 1.0
            # Never more than the first call and one hedge in flight.
            assert sum(cluster.calls().values()) == 2

    run(scenario())


def test_bad_answers_are_treated_as_corruption() -> None:
    cluster = FakeCluster()
    cluster.nodes["s1"].bad_image = True

    async def scenario() -> None:
        async with cluster.reader() as reader:
            cluster.note_all(reader)
            assert await reader.read_page(1, Lsn(10)) == (expected_image(1, 10), 10)
            assert reader.stats.bad_answers == 1 and reader.stats.retries == 1

    run(scenario())


def test_cancelling_a_read_cancels_its_calls() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.stall = True

    async def scenario() -> None:
        async with cluster.reader(hedge_delay_ms=5.0) as reader:
            cluster.note_all(reader)
            task = asyncio.ensure_future(reader.read_page(1, Lsn(10)))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await settle()
            assert sum(node.cancelled for node in cluster.nodes.values()) == 2
            assert all(node.in_flight == 0 for node in cluster.nodes.values())

    run(scenario())


def test_concurrent_reads_are_bounded() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.delay_s = 0.01

    async def scenario() -> None:
        async with cluster.reader(reads_in_flight_max=3) as reader:
            cluster.note_all(reader)
            await asyncio.gather(*(reader.read_page(page % 40, Lsn(10)) for page in range(60)))
            assert sum(node.in_flight_max for node in cluster.nodes.values()) <= 3 * 6
            in_flight_max = max(node.in_flight_max for node in cluster.nodes.values())
            assert in_flight_max <= 3
            assert reader.stats.reads == 60

    run(scenario())


def test_owned_clients_are_closed() -> None:
    async def scenario() -> None:
        members = [Member(name, "127.0.0.1:1", "az") for name in NODES]
        reader = PageReader(
            VOLUME,
            pg_of=lambda page: PgIndex(0),
            placement=lambda pg: members[:1],
            epochs_of=lambda pg: EPOCHS,
            config=PageReaderConfig(attempt_timeout_ms=500.0, state_timeout_ms=200.0),
        )
        # Nothing listens on port 1: the read fails fast with Unavailable.
        with pytest.raises(Unavailable):
            await reader.read_page(0, Lsn(1))
        assert len(reader._owned_clients) == 1
        await reader.close()
        assert not reader._owned_clients

    run(scenario())


# -- property: any mix of node behaviours --------------------------------------------------

BEHAVIOURS = ("ok", "slow", "stall", "behind", "down", "corrupt", "bad")


@given(
    behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=6, max_size=6),
    known=st.lists(st.booleans(), min_size=6, max_size=6),
    seed=st.integers(0, 1000),
)
@settings(max_examples=60, deadline=None)
def test_a_read_succeeds_exactly_when_some_segment_can_serve_it(
    behaviours: list[str], known: list[bool], seed: int
) -> None:
    cluster = FakeCluster()
    for name, behaviour in zip(NODES, behaviours, strict=True):
        node = cluster.nodes[name]
        node.scl = 5 if behaviour == "behind" else 100
        node.delay_s = 0.02 if behaviour == "slow" else 0.0
        node.stall = behaviour == "stall"
        node.error = {"down": Unavailable("down"), "corrupt": Corruption("crc")}.get(behaviour)
        node.bad_image = behaviour == "bad"
    servable = any(b in ("ok", "slow") for b in behaviours)

    async def scenario() -> None:
        async with cluster.reader(
            rng_seed=seed,
            explore_ratio=0.3,
            hedge_delay_ms=5.0,
            attempt_timeout_ms=60.0,
            state_timeout_ms=30.0,
        ) as reader:
            for name, is_known in zip(NODES, known, strict=True):
                if is_known:
                    reader.note_scl(PgIndex(0), name, Lsn(100))
            if servable:
                assert await reader.read_page(2, Lsn(50)) == (expected_image(2, 50), 50)
            else:
                with pytest.raises(Unavailable):
                    await reader.read_page(2, Lsn(50))
            assert sum(node.in_flight for node in cluster.nodes.values()) <= 2

    run(scenario())


def test_metrics_are_rendered_and_scls_can_be_forgotten() -> None:
    cluster = FakeCluster()
    registry = metrics.Metrics("borealis_compute")

    async def scenario() -> None:
        async with cluster.reader() as reader:
            reader.register_metrics(registry)
            cluster.note_all(reader)
            await reader.read_page(1, Lsn(10))
            samples = metrics.parse(registry.render())
            assert samples["borealis_compute_page_reads_total"] == 1
            assert samples['borealis_compute_page_read_node_requests_total{node="s1"}'] == 1
            assert 'borealis_compute_page_read_node_latency_seconds{node="s1"}' in samples
            reader.forget_scls(PgIndex(0))
            assert reader.scl_of(PgIndex(0), "s1") is None
            await reader.read_page(1, Lsn(10))
            assert reader.stats.scl_refreshes == 1

    run(scenario())


def test_hedges_are_budgeted() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.delay_s = 0.03  # every node slower than the hedge delay: an overload

    async def scenario() -> None:
        async with cluster.reader(
            hedge_delay_ms=5.0, hedge_budget_ratio=0.0, hedge_budget_burst=2.0
        ) as reader:
            cluster.note_all(reader)
            for page in range(5):
                assert await reader.read_page(page, Lsn(10)) == (expected_image(page, 10), 10)
            assert reader.stats.hedged_reads == 2 and reader.stats.hedges_denied == 3
            assert sum(cluster.calls().values()) == 5 + 2

    run(scenario())
