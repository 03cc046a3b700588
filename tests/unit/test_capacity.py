"""compute_node/capacity: the BCU arithmetic, its grid and bounds, the sans-IO CPU and
hit-ratio samplers, and InstanceCapacity resizing a real engine and cache in place."""

from __future__ import annotations

import asyncio
import math
import os

import pytest

from borealis import config as config_module
from borealis.errors import InvalidRequest
from compute_node.capacity import (
    BCU_MAX,
    BCU_MIN,
    CpuSampler,
    HitRatioSampler,
    InstanceCapacity,
    cache_bytes_of,
    check_bcu,
    cpu_ticks_of,
    read_cpu_ticks,
    reader_connections_of,
)
from compute_node.config import ComputeNodeConfig
from compute_node.engine.memory import MemoryPageSource
from compute_node.engine.sessions import Engine
from compute_node.volume.cache import BufferCache
from tests.unit.test_sessions import eventually, run

pytestmark = pytest.mark.unit

MIB = 2**20


def test_one_bcu_is_128_mib_of_cache_and_two_readers() -> None:
    assert (cache_bytes_of(1.0), reader_connections_of(1.0)) == (128 * MIB, 2)
    assert (cache_bytes_of(0.5), reader_connections_of(0.5)) == (64 * MIB, 1)
    assert (cache_bytes_of(2.5), reader_connections_of(2.5)) == (320 * MIB, 5)
    assert (cache_bytes_of(16.0), reader_connections_of(16.0)) == (2048 * MIB, 32)


def test_every_half_step_between_the_bounds_is_valid() -> None:
    steps = [BCU_MIN + 0.5 * index for index in range(int((BCU_MAX - BCU_MIN) / 0.5) + 1)]
    assert steps[0] == 0.5 and steps[-1] == 16.0 and len(steps) == 32
    for bcu in steps:
        assert check_bcu(bcu) == bcu
        assert cache_bytes_of(bcu) == round(bcu * 128 * MIB)


@pytest.mark.parametrize(
    "bcu", [0.0, -1.0, 0.25, 0.75, 1.2, 15.75, 16.5, 17.0, math.nan, math.inf, -math.inf]
)
def test_off_the_grid_or_out_of_bounds_is_an_invalid_request(bcu: float) -> None:
    with pytest.raises(InvalidRequest, match="capacity must be"):
        check_bcu(bcu)


def test_config_starts_at_one_bcu_and_refuses_a_bad_capacity(tmp_path: object) -> None:
    values = {"name": "w", "data_dir": "/tmp/w", "cluster_file": "/tmp/cluster.json"}
    config = config_module.build(ComputeNodeConfig, values)
    assert config.capacity_bcu == 1.0
    assert config.buffer_cache_bytes is None and config.reader_connections is None
    config = config_module.build(ComputeNodeConfig, {**values, "capacity_bcu": "2.5"})
    assert config.capacity_bcu == 2.5
    with pytest.raises(config_module.ConfigError, match="capacity_bcu"):
        config_module.build(ComputeNodeConfig, {**values, "capacity_bcu": "0.75"})
    with pytest.raises(config_module.ConfigError, match="buffer_cache_bytes"):
        config_module.build(ComputeNodeConfig, {**values, "buffer_cache_bytes": "0"})


def test_cpu_ticks_are_utime_plus_stime_after_the_command_name() -> None:
    # The command name may hold spaces and parentheses.
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "1234", "566", "0", "0"]
    text = "4242 (my (odd) name) " + " ".join(fields) + " 20 0 1\n"
    assert cpu_ticks_of(text) == 1234 + 566


def test_this_process_cpu_ticks_are_read_and_grow_with_work() -> None:
    before = read_cpu_ticks()
    clock_ticks_per_s = os.sysconf("SC_CLK_TCK")
    deadline_ticks = before + 2
    # Busy until at least two ticks of CPU were spent (bounded by the loop count).
    for _ in range(10**8):
        if read_cpu_ticks() >= deadline_ticks:
            break
    assert read_cpu_ticks() >= deadline_ticks
    assert clock_ticks_per_s > 0


def test_cpu_sampler_divides_ticks_by_clock_rate_and_wall_time() -> None:
    sampler = CpuSampler(clock_ticks_per_s=100)
    assert sampler.observe(1000, 10.0) == 0.0  # no interval yet
    assert sampler.observe(1050, 11.0) == pytest.approx(0.5)
    # Two cores busy for two seconds.
    assert sampler.observe(1450, 13.0) == pytest.approx(2.0)
    # No time passed: the last value stands.
    assert sampler.observe(1450, 13.0) == pytest.approx(2.0)
    assert sampler.observe(1450, 14.0) == 0.0
    assert sampler.cpu_fraction == 0.0


def test_hit_ratio_sampler_counts_only_the_last_interval() -> None:
    sampler = HitRatioSampler()
    assert sampler.observe(100, 100) == 1.0  # first reading: no interval
    assert sampler.observe(190, 110) == pytest.approx(0.9)
    assert sampler.observe(190, 110) == 1.0  # no lookups
    assert sampler.observe(190, 130) == 0.0


def test_instance_capacity_resizes_cache_and_readers_in_place() -> None:
    async def test() -> None:
        source = MemoryPageSource(pages_per_pg=16)

        async def durable(lsn: object) -> None:
            return None

        engine = await Engine.open(source, durable, readers=reader_connections_of(1.0))
        cache = BufferCache(cache_bytes_of(1.0))
        # Pages at and below the VDL, evictable, filling 100 MiB of the cache.
        page_bytes = MIB
        for page in range(100):
            cache.put(page, bytes(page_bytes), 0)
        capacity = InstanceCapacity(1.0, "writer", cache, engine, lambda: 7, clock_ticks_per_s=100)
        session = engine.session()
        await session.execute("CREATE TABLE t(a INTEGER)")
        await session.execute("BEGIN")
        await session.execute("SELECT count(*) FROM t")
        for bcu in (4.0, 0.5, 2.0):
            await capacity.set(bcu)
            state = capacity.state()
            assert (state.bcu, state.cache_bytes, state.sql_workers) == (
                bcu,
                cache_bytes_of(bcu),
                reader_connections_of(bcu),
            )
            assert cache.size_bytes <= cache_bytes_of(bcu)
            assert engine.readers == reader_connections_of(bcu)
            assert state.role == "writer" and state.signals.connections == 7
        # The 0.5 BCU shrink evicted down to 64 pages; the open transaction was
        # never interrupted.
        assert cache.stats().evictions == 100 - 64
        await session.execute("SELECT count(*) FROM t")
        await session.execute("COMMIT")
        assert capacity.changes == 3
        with pytest.raises(InvalidRequest):
            await capacity.set(0.75)
        assert capacity.bcu == 2.0
        await eventually(lambda: engine.readers_draining == 0)

        capacity.sample(ticks=500, time_s=1.0)
        cache.get(99)  # among the 64 newest pages kept
        cache.get(1000)
        capacity.sample(ticks=525, time_s=2.0)
        signals = capacity.signals()
        assert signals.cpu_fraction == pytest.approx(0.25)
        assert signals.cache_hit_ratio == pytest.approx(0.5)
        assert signals.cache_evictions_total == 36
        assert signals.statements_total == 5 and signals.active_sessions == 0
        names = {name for name, _, _ in capacity.samples()}
        assert {"capacity_bcu", "capacity_sql_workers", "sql_statements_total"} <= names
        await engine.close()

    run(test)


def test_concurrent_changes_apply_one_at_a_time() -> None:
    async def test() -> None:
        source = MemoryPageSource(pages_per_pg=16)

        async def durable(lsn: object) -> None:
            return None

        engine = await Engine.open(source, durable, readers=2)
        cache = BufferCache(cache_bytes_of(1.0))
        capacity = InstanceCapacity(1.0, "reader", cache, engine, lambda: 0)
        await asyncio.gather(*(capacity.set(bcu) for bcu in (3.0, 0.5, 8.0, 1.5)))
        # The last one asked is the one in force, cache and readers alike.
        assert capacity.bcu == 1.5
        assert (cache.capacity_bytes, engine.readers) == (cache_bytes_of(1.5), 3)
        await engine.close()

    run(test)
