"""Metering arithmetic (counters, resets, integration over time, compaction) and pricing,
without processes: control_plane/metering.py's Meter and record functions, and
control_plane/cost.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from borealis.cli.cost import parse_since, render
from borealis.errors import InvalidRequest
from control_plane import cost
from control_plane.metering import (
    CONFIGURED,
    LAST_REPORTED,
    READS_COUNTER,
    REPORTED,
    STORAGE_BYTES_GAUGE,
    WRITE_COUNTERS,
    InstanceLook,
    Meter,
    Record,
    StorageLook,
    Usage,
    UsageFile,
    aggregate,
    compact,
    configured_bcu,
    counter_delta,
    report_to_proto,
)

pytestmark = pytest.mark.unit

WRITES = WRITE_COUNTERS[0]
GIB = float(2**30)


def node_metrics(
    reads: float, writes: float, used_bytes: float = 0.0, pgs: tuple[int, ...] = ()
) -> dict[str, float]:
    values = {READS_COUNTER: reads, WRITES: writes, STORAGE_BYTES_GAUGE: used_bytes}
    for pg in pgs:
        values[f'borealis_storage_segment_scl{{pg="{pg}",volume="1"}}'] = 7.0
    return values


def storage(name: str, pid: int | None, metrics: dict[str, float] | None) -> StorageLook:
    return StorageLook(name, pid, running=pid is not None, metrics=metrics)


def writer(bcu: float | None, running: bool = True) -> InstanceLook:
    return InstanceLook("w1", running, bcu, configured_bcu=2.0)


def usage_of(
    capacity_unit_seconds: float = 0.0,
    storage_gb_months: float = 0.0,
    io_requests: float = 0.0,
    seconds: float = 3600.0,
) -> Usage:
    return Usage(
        since_unix_s=0.0,
        until_unix_s=seconds,
        seconds=seconds,
        capacity_unit_seconds={"w1": capacity_unit_seconds},
        capacity_sources={"w1": REPORTED},
        storage_byte_seconds=storage_gb_months * GIB * cost.SECONDS_PER_MONTH,
        storage_bytes_last=0.0,
        io_reads=io_requests / 2,
        io_writes=io_requests / 2,
        write_counter=WRITES,
        backup_byte_seconds=0.0,
    )


# -- counters ---------------------------------------------------------------------------------


def test_a_counter_counts_what_it_counted_since_the_last_reading() -> None:
    assert counter_delta(10, 100.0, 10, 150.0) == 50.0
    assert counter_delta(10, 150.0, 10, 150.0) == 0.0


def test_a_counter_reset_or_new_process_counts_in_full() -> None:
    # Restarted with the same pid (a reading below the last one).
    assert counter_delta(10, 150.0, 10, 30.0) == 30.0
    # Restarted under a new pid, even with a reading above the last one.
    assert counter_delta(10, 150.0, 11, 200.0) == 200.0
    # Never read before: the process counted from 0 since it started.
    assert counter_delta(None, 0.0, 10, 40.0) == 40.0


def test_storage_io_across_restarts_and_silences() -> None:
    meter = Meter()
    reads = writes = 0.0
    readings = [
        (0.0, storage("s1", 10, node_metrics(100, 1000))),
        (2.0, storage("s1", 10, node_metrics(150, 1300))),
        # Not answering: nothing now, the next answer brings it.
        (4.0, storage("s1", 10, None)),
        (6.0, storage("s1", 10, node_metrics(170, 1400))),
        # Restarted (new pid): its counters began again at 0.
        (8.0, storage("s1", 11, node_metrics(20, 5))),
        # Restarted with the same pid number (a reading below the last one).
        (10.0, storage("s1", 11, node_metrics(3, 1))),
    ]
    for now, look in readings:
        record = meter.sample(now, [], [look])
        reads += record.io_reads
        writes += record.io_writes
        assert record.write_counter == WRITES
    assert reads == 170 + 20 + 3
    assert writes == 1400 + 5 + 1


def test_a_restarted_control_plane_continues_from_the_last_record() -> None:
    first = Meter()
    first.sample(0.0, [], [storage("s1", 10, node_metrics(100, 200))])
    last = first.sample(2.0, [], [storage("s1", 10, node_metrics(130, 260))])
    again = Meter()
    again.restore(Record.from_json(last.to_json()))
    record = again.sample(5.0, [], [storage("s1", 10, node_metrics(140, 300))])
    assert (record.io_reads, record.io_writes) == (10, 40)


# -- capacity over time ------------------------------------------------------------------------


def test_capacity_unit_seconds_integrate_the_capacity_over_time() -> None:
    meter = Meter()
    total = 0.0
    # Each sample charges the interval since the previous one at the capacity it sees.
    for now, bcu in [(100.0, 1.0), (102.0, 1.0), (104.0, 2.0), (105.5, 2.0), (107.5, 0.5)]:
        record = meter.sample(now, [writer(bcu)], [])
        total += record.capacity_unit_seconds.get("w1", 0.0)
        assert record.capacity_sources == {"w1": REPORTED}
    assert total == pytest.approx(1.0 * 2 + 2.0 * 2 + 2.0 * 1.5 + 0.5 * 2)


def test_capacity_when_an_instance_is_silent_stopped_or_without_the_service() -> None:
    meter = Meter()
    meter.sample(0.0, [writer(None)], [])
    # Never reported: its configured capacity.
    first = meter.sample(2.0, [writer(None)], [])
    assert first.capacity_unit_seconds == {"w1": 4.0}
    assert first.capacity_sources == {"w1": CONFIGURED}
    meter.sample(4.0, [writer(1.5)], [])
    # Silent while its process runs: the last capacity it reported.
    silent = meter.sample(6.0, [writer(None)], [])
    assert silent.capacity_unit_seconds == {"w1": 3.0}
    assert silent.capacity_sources == {"w1": LAST_REPORTED}
    # Stopped (or paused): not counted, and its last report is forgotten.
    stopped = meter.sample(8.0, [writer(None, running=False)], [])
    assert stopped.capacity_unit_seconds == {}
    back = meter.sample(10.0, [writer(None)], [])
    assert back.capacity_sources == {"w1": CONFIGURED}


def test_the_first_sample_sets_the_time_base_and_counts_no_capacity() -> None:
    record = Meter().sample(50.0, [writer(4.0)], [])
    assert record.capacity_unit_seconds == {"w1": 0.0}
    assert record.start_unix_s == record.end_unix_s == 50.0


# -- storage bytes -----------------------------------------------------------------------------


def test_storage_bytes_are_one_copy_of_the_volume_over_time() -> None:
    meter = Meter()
    nodes = [
        storage("s1", 1, node_metrics(0, 0, used_bytes=100.0, pgs=(0, 1))),
        storage("s2", 2, node_metrics(0, 0, used_bytes=300.0, pgs=(0, 1))),
    ]
    meter.sample(0.0, [], nodes)
    record = meter.sample(10.0, [], nodes)
    # Two copies of PGs 0 and 1: (100 + 300) x 2 PGs / 4 segments.
    assert record.storage_bytes == 200.0
    assert record.storage_byte_seconds == 2000.0
    # s2 silent but running: its last bytes; then stopped: gone.
    silent = meter.sample(12.0, [], [nodes[0], storage("s2", 2, None)])
    assert silent.storage_bytes == 200.0
    stopped = meter.sample(14.0, [], [nodes[0], storage("s2", None, None)])
    assert stopped.storage_bytes == 100.0


# -- aggregation and compaction -------------------------------------------------------------


def record_over(start: float, end: float, reads: float, bcu_seconds: float) -> Record:
    return Record(
        start_unix_s=start,
        end_unix_s=end,
        capacity_unit_seconds={"w1": bcu_seconds},
        capacity_sources={"w1": REPORTED},
        storage_byte_seconds=10.0 * (end - start),
        storage_bytes=10.0,
        io_reads=reads,
        write_counter=WRITES,
    )


def test_aggregate_prorates_records_across_the_edges() -> None:
    records = [record_over(0, 10, 10, 20), record_over(10, 20, 30, 20), record_over(20, 30, 5, 5)]
    usage = aggregate(records, since_unix_s=5.0, until_unix_s=25.0)
    assert usage.seconds == pytest.approx(20.0)
    assert usage.io_reads == pytest.approx(5 + 30 + 2.5)
    assert usage.capacity_unit_seconds == {"w1": pytest.approx(10 + 20 + 2.5)}
    assert usage.storage_byte_seconds == pytest.approx(200.0)
    everything = aggregate(records, 0.0, 30.0)
    assert everything.io_reads == 45 and everything.seconds == 30


def test_compaction_merges_old_records_per_hour_and_keeps_the_totals() -> None:
    now = 10 * 3600.0
    records = [record_over(t, t + 60, 1, 60) for t in range(0, int(now), 60)]
    compacted = compact(records, now, retention_s=8 * 3600.0)
    # Retention keeps the last 8 hours; of those, all but the last hour merged per hour.
    kept = [each for each in records if each.end_unix_s >= now - 8 * 3600]
    recent = [each for each in kept if each.end_unix_s >= now - 3600]
    # Ends 2 h .. 9 h (exclusive) fall in 7 hourly buckets (by the hour they end in).
    assert len(compacted) == 7 + len(recent)
    assert compacted[7:] == recent
    before = aggregate(kept, 0.0, now)
    after = aggregate(compacted, 0.0, now)
    assert after.io_reads == before.io_reads == len(kept)
    assert after.capacity_unit_seconds == before.capacity_unit_seconds
    assert after.seconds == pytest.approx(before.seconds)
    assert all(not each.counters for each in compacted[:7])


def test_the_usage_file_keeps_records_skips_a_torn_line_and_stays_bounded(
    tmp_path: Path,
) -> None:
    usage = UsageFile(tmp_path, file_bytes_max=64 * 1024)
    now = 100 * 3600.0
    for t in range(0, 2000):
        usage.append(record_over(now - 2 * 3600 + t, now - 2 * 3600 + t + 1, 1, 1))
    records = usage.read()
    assert usage.path.stat().st_size <= 64 * 1024
    assert sum(each.io_reads for each in records) == 2000
    with open(usage.path, "a") as file:
        file.write('{"start_unix_s": 1')
    assert len(usage.read()) == len(records)


def test_configured_capacity_comes_from_the_instance_config() -> None:
    assert configured_bcu("[compute_node]\ncapacity_bcu = 3.5\n") == 3.5
    assert configured_bcu("[compute_node]\nbuffer_cache_bytes = 201326592\n") == 1.5
    # The default buffer cache, 256 MiB, is 2 BCU; a tiny one is the minimum.
    assert configured_bcu("") == 2.0
    assert configured_bcu("[compute_node]\nbuffer_cache_bytes = 4096\n") == 0.5


# -- pricing ---------------------------------------------------------------------------------


def test_both_options_are_priced_with_the_default_table() -> None:
    # 10 BCU-hours, 100 GB-months, 50 million requests.
    usage = usage_of(10 * 3600.0, 100.0, 50e6)
    report = cost.price(usage)
    standard, io_optimized = report.options
    amounts = {line.item: line.amount for line in standard.lines}
    assert amounts == {
        "capacity": pytest.approx(1.2),
        "storage": pytest.approx(10.0),
        "io": pytest.approx(10.0),
        "backup": 0.0,
    }
    assert standard.total == pytest.approx(21.2)
    assert io_optimized.total == pytest.approx(1.56 + 22.5)
    assert standard.io_share == pytest.approx(10.0 / 21.2)
    assert report.cheaper == cost.STANDARD
    # An hour metered: a 730-hour month is 730 times that.
    assert standard.monthly_total == pytest.approx(21.2 * 730)
    assert "backups do not exist yet" in " ".join(report.notes)


def test_io_heavy_workloads_are_cheaper_on_io_optimized_and_say_why() -> None:
    report = cost.price(usage_of(10 * 3600.0, 1.0, 200e6))
    standard, io_optimized = report.options
    assert standard.io_share > 0.25
    assert io_optimized.total < standard.total
    assert report.cheaper == cost.IO_OPTIMIZED
    assert "25%" in report.reason and f"{standard.io_share:.0%}" in report.reason


def test_capacity_heavy_workloads_are_cheaper_on_standard() -> None:
    report = cost.price(usage_of(100 * 3600.0, 1.0, 1e5))
    assert report.options[0].io_share < 0.25
    assert report.cheaper == cost.STANDARD
    assert "I/O-Optimized pays off above about 25%" in report.reason


def test_nothing_metered_prices_to_zero() -> None:
    report = cost.price(usage_of(seconds=0.0))
    assert [option.total for option in report.options] == [0.0, 0.0]
    assert report.options[0].monthly_total == 0.0
    assert "nothing metered" in report.reason


def test_a_price_table_overrides_the_defaults() -> None:
    table = cost.load_prices(
        json.dumps(
            {
                "currency": "EUR",
                "io_share_threshold": 0.3,
                "options": {"standard": {"io_per_million_requests": 1.0}},
            }
        )
    )
    assert table.currency == "EUR"
    assert table.io_share_threshold == 0.3
    assert table.standard.io_per_million_requests == 1.0
    assert (
        table.standard.capacity_per_bcu_hour == cost.DEFAULT_PRICES.standard.capacity_per_bcu_hour
    )
    assert table.io_optimized == cost.DEFAULT_PRICES.io_optimized


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"options": {"serverless": {}}}',
        '{"options": {"standard": {"io_per_million_requests": -1}}}',
        '{"options": {"standard": {"io_per_million_requests": "cheap"}}}',
        '{"options": {"standard": {"per_coffee": 1}}}',
        '{"io_share_threshold": 2}',
        '{"region": "us-east-1"}',
    ],
)
def test_a_malformed_price_table_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        cost.load_prices(text)


# -- the CLI's parts -------------------------------------------------------------------------


def test_since_takes_relative_and_iso_times() -> None:
    now = 1_700_000_000.0
    assert parse_since("", now) == 0.0
    assert parse_since("-1h", now) == now - 3600
    assert parse_since("-30m", now) == now - 1800
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("2023-11-14T22:13:20+00:00", now) == now
    with pytest.raises(InvalidRequest):
        parse_since("yesterday", now)


def test_the_report_renders_every_figure() -> None:
    report = report_to_proto(cost.price(usage_of(10 * 3600.0, 1.0, 200e6)))
    text = render(report)
    for expected in ("Standard", "I/O-Optimized", "BCU-hours", "GB-months", "cheaper:", "why:"):
        assert expected in text
    assert "capacity w1" in text and "100000000 reads" in text
