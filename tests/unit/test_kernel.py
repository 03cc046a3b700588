"""The shared kernel: config, errors, failpoints, metrics, logging, and the port allocator."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borealis import config, errors, faults, metrics
from borealis.config import ConfigError
from borealis.errors import (
    AlreadyExists,
    BorealisError,
    Corruption,
    DeadlineExceeded,
    FailpointError,
    InvalidRequest,
    KeyUnavailable,
    NotFound,
    QueryCanceled,
    ResourceExhausted,
    SerializationFailure,
    SnapshotTooOld,
    SqlError,
    StaleEpoch,
    TransactionAborted,
    Unavailable,
    VersionGone,
    WriterFenced,
)
from borealis.log import KeyValueFormatter, Logger
from deploy import ports
from deploy.ports import PortAllocator
from storage_node.config import StorageNodeConfig

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=100, deadline=None)
WAIT_S = 5.0


# --- config ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    name: str
    data_dir: Path
    port: int = 0
    ratio: float = 0.5
    verbose: bool = False
    limit_bytes: int | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "borealis.toml"
    path.write_text(text)
    return path


def test_load_reads_a_table_then_applies_overrides_with_conversion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[other]\nport = 1\n\n[example]\nname = "from-file"\ndata_dir = "/var/data"\n'
        "port = 7000\nratio = 0.25\n",
    )
    loaded = config.load(
        ExampleConfig,
        path,
        ["port = 0x10", "verbose=yes", "ratio=1.5", "limit_bytes=4096", "data_dir=/srv/b"],
        table="example",
    )
    assert loaded == ExampleConfig(
        name="from-file",
        data_dir=Path("/srv/b"),
        port=16,
        ratio=1.5,
        verbose=True,
        limit_bytes=4096,
    )
    assert isinstance(loaded.data_dir, Path)
    # The file alone: its values, converted, and defaults for the rest.
    from_file = config.load(ExampleConfig, path, table="example")
    assert from_file == ExampleConfig("from-file", Path("/var/data"), 7000, 0.25)


def test_load_without_a_file_and_top_level_tables(tmp_path: Path) -> None:
    assert config.load(ExampleConfig, overrides=["name=n", "data_dir=d"]) == ExampleConfig(
        "n", Path("d")
    )
    path = write(tmp_path, 'name = "top"\ndata_dir = "x"\n')
    assert config.load(ExampleConfig, path).name == "top"
    # A table that is absent from the file contributes nothing.
    assert config.load(ExampleConfig, path, ["name=a", "data_dir=b"], table="nope").name == "a"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_boolean_overrides(value: str, expected: bool) -> None:
    loaded = config.load(ExampleConfig, overrides=["name=n", "data_dir=d", f"verbose={value}"])
    assert loaded.verbose is expected


@pytest.mark.parametrize("value", ["", "none"])
def test_optional_overrides_accept_none(value: str) -> None:
    loaded = config.load(ExampleConfig, overrides=["name=n", "data_dir=d", f"limit_bytes={value}"])
    assert loaded.limit_bytes is None


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config keys: prot"):
        config.load(ExampleConfig, overrides=["name=n", "data_dir=d", "prot=1"])
    path = write(tmp_path, '[example]\nname = "n"\ndata_dir = "d"\ngossip_intervall_ms = 5\n')
    with pytest.raises(ConfigError, match="gossip_intervall_ms"):
        config.load(ExampleConfig, path, table="example")


@pytest.mark.parametrize(
    "override",
    ["port=abc", "port=1.5", "port=", "ratio=fast", "verbose=maybe", "limit_bytes=12k"],
)
def test_bad_values_are_config_errors(override: str) -> None:
    with pytest.raises(ConfigError):
        config.load(ExampleConfig, overrides=["name=n", "data_dir=d", override])


def test_malformed_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        config.load(ExampleConfig, overrides=["name"])
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(ExampleConfig, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(ExampleConfig, write(tmp_path, "name = [unclosed\n"))
    with pytest.raises(ConfigError):  # a required field is missing
        config.load(ExampleConfig, overrides=["name=n"])
    with pytest.raises(ConfigError, match="positive"):  # the dataclass's own validation
        config.load(StorageNodeConfig, overrides=["name=s1", "data_dir=d", "coalesce_deltas_max=0"])
    assert issubclass(ConfigError, InvalidRequest)


def test_storage_node_config_from_a_file_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[storage_node]\nname = "s3"\ndata_dir = "/data/s3"\naz = "az-b"\nport = 7100\n'
        "gossip_interval_ms = 250\n",
    )
    loaded = config.load(StorageNodeConfig, path, ["port=7200"], table="storage_node")
    assert loaded == StorageNodeConfig(
        name="s3", data_dir=Path("/data/s3"), az="az-b", port=7200, gossip_interval_ms=250
    )


toml_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30
)


@SETTINGS
@given(
    name=toml_text,
    data_dir=toml_text,
    port=st.integers(0, 65535),
    coalesce=st.integers(1, 2**40),
    log_level=st.sampled_from(["debug", "info", "warning"]),
)
def test_to_toml_round_trips_through_load(
    tmp_path_factory, name: str, data_dir: str, port: int, coalesce: int, log_level: str
) -> None:
    original = StorageNodeConfig(
        name=name,
        data_dir=Path("/srv") / data_dir,
        port=port,
        coalesce_deltas_max=coalesce,
        log_level=log_level,
    )
    # One file rewritten by every example: a new directory per example cost seconds.
    path = tmp_path_factory.getbasetemp() / "round_trip_node.toml"
    path.write_text("[storage_node]\n" + config.to_toml(original), encoding="utf-8")
    assert config.load(StorageNodeConfig, path, table="storage_node") == original


def test_to_toml_of_the_defaults_round_trips(tmp_path: Path) -> None:
    original = StorageNodeConfig(name='s1 "quoted" \\ back', data_dir=tmp_path / "with space")
    text = config.to_toml(original)
    assert 'name = "s1 \\"quoted\\" \\\\ back"' in text
    path = write(tmp_path, "[storage_node]\n" + text)
    assert config.load(StorageNodeConfig, path, table="storage_node") == original


# --- errors ----------------------------------------------------------------------------

# What each error kind must become on the wire, spelled out independently of the table.
INTENDED_STATUS = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    StaleEpoch: grpc.StatusCode.FAILED_PRECONDITION,
    WriterFenced: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    VersionGone: grpc.StatusCode.OUT_OF_RANGE,
    SnapshotTooOld: grpc.StatusCode.OUT_OF_RANGE,
    SerializationFailure: grpc.StatusCode.ABORTED,
    TransactionAborted: grpc.StatusCode.INVALID_ARGUMENT,
    SqlError: grpc.StatusCode.INVALID_ARGUMENT,
    QueryCanceled: grpc.StatusCode.CANCELLED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Corruption: grpc.StatusCode.DATA_LOSS,
    KeyUnavailable: grpc.StatusCode.INTERNAL,
    FailpointError: grpc.StatusCode.INTERNAL,
    BorealisError: grpc.StatusCode.INTERNAL,
}


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def all_error_classes() -> set[type[BorealisError]]:
    found: set[type[BorealisError]] = set()
    pending = [BorealisError]
    while pending:
        kind = pending.pop()
        found.add(kind)
        pending.extend(kind.__subclasses__())
    return {kind for kind in found if kind.__module__.startswith("borealis.")}


@pytest.mark.parametrize("kind", sorted(INTENDED_STATUS, key=lambda kind: kind.__name__))
def test_every_error_maps_to_its_intended_status(kind: type[BorealisError]) -> None:
    error = kind("boom", node="s1", lsn=7)
    assert errors.grpc_status_of(error) == INTENDED_STATUS[kind]
    assert re.fullmatch(r"[0-9A-Z]{5}", errors.sqlstate_of(error))
    assert str(error) == "boom (node=s1 lsn=7)"
    assert error.context == {"node": "s1", "lsn": 7}


def test_the_error_table_covers_every_error_class() -> None:
    listed = {kind for kind, _, _ in errors.ERROR_TABLE}
    # A SqlError subclass carries its own SQLSTATE (28P01, 08P01) and SqlError's status.
    own_sqlstate = {kind for kind in all_error_classes() if issubclass(kind, SqlError)} - {SqlError}
    for kind in own_sqlstate:
        assert errors.grpc_status_of(kind.__new__(kind)) == INTENDED_STATUS[SqlError]
    classes = all_error_classes() - own_sqlstate
    assert set(INTENDED_STATUS) >= classes, "a new error class needs a status here"
    for kind, status, _ in errors.ERROR_TABLE:
        assert INTENDED_STATUS[kind] == status, kind
    assert errors.ERROR_TABLE[-1][0] is BorealisError
    assert listed >= classes - {ConfigError}


def test_subclasses_come_before_their_bases_in_the_table() -> None:
    kinds = [kind for kind, _, _ in errors.ERROR_TABLE]
    for earlier_index, earlier in enumerate(kinds):
        for later in kinds[earlier_index + 1 :]:
            # A later row that subclasses an earlier one could never be reached.
            assert not issubclass(later, earlier), (later, earlier)


def test_sqlstates() -> None:
    assert errors.sqlstate_of(InvalidRequest("x")) == "22000"
    assert errors.sqlstate_of(Corruption("x")) == "XX001"
    assert errors.sqlstate_of(Unavailable("x")) == "08006"
    assert errors.sqlstate_of(ConfigError("x")) == "22000"


@pytest.mark.parametrize("kind", sorted(INTENDED_STATUS, key=lambda kind: kind.__name__))
def test_from_grpc_maps_each_status_back(kind: type[BorealisError]) -> None:
    status = errors.grpc_status_of(kind("x"))
    back = errors.from_grpc(FakeRpcError(status, "server said no"), node="s2")
    if status in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        # At a client a cancelled or late call is most often its own deadline:
        # retryable (DeadlineExceeded, the server's own, is an Unavailable too).
        assert type(back) is Unavailable
        return
    # The client gets the most specific kind it can know from the status alone.
    assert isinstance(kind("x"), type(back))
    assert back.message == "server said no"
    assert back.context == {"node": "s2"}
    # A status with one row comes back as exactly that kind; a status shared by a
    # subclass and its base (OUT_OF_RANGE, INTERNAL) comes back as the base, the last row.
    rows = [row_kind for row_kind, row_status, _ in errors.ERROR_TABLE if row_status == status]
    assert type(back) is rows[-1]
    assert all(issubclass(row_kind, rows[-1]) for row_kind in rows)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.FAILED_PRECONDITION, StaleEpoch),
        (grpc.StatusCode.OUT_OF_RANGE, VersionGone),
        (grpc.StatusCode.DATA_LOSS, Corruption),
        # Any server-side failure is INTERNAL; it is not evidence of a failpoint.
        (grpc.StatusCode.INTERNAL, BorealisError),
        (grpc.StatusCode.UNKNOWN, BorealisError),
        (grpc.StatusCode.UNIMPLEMENTED, BorealisError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
        (grpc.StatusCode.CANCELLED, Unavailable),
    ],
)
def test_from_grpc_exact_kinds(status: grpc.StatusCode, expected: type) -> None:
    back = errors.from_grpc(FakeRpcError(status, None))
    assert type(back) is expected
    assert back.message == status.name


def test_from_grpc_of_a_deadline_names_the_status() -> None:
    back = errors.from_grpc(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), node="s4")
    assert back.context == {"status": "DEADLINE_EXCEEDED", "node": "s4"}


# --- failpoints ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def failpoints_off():
    """Every test starts and ends with no failpoint set."""
    for name in faults.points():
        faults.set_point(name, "off")
    yield
    for name in faults.points():
        faults.set_point(name, "off")
    assert faults.points() == {}


@pytest.mark.parametrize(
    ("text", "kind", "sleep_ms", "percent"),
    [
        ("off", "off", 0, 100),
        ("error", "error", 0, 100),
        ("sleep(5)", "sleep", 5, 100),
        ("sleep(0)", "sleep", 0, 100),
        (" sleep(1500) ", "sleep", 1500, 100),
        ("pause", "pause", 0, 100),
        ("exit", "exit", 0, 100),
        ("25%error", "error", 0, 25),
        ("0%pause", "pause", 0, 0),
        ("100%sleep(7)", "sleep", 7, 100),
    ],
)
def test_parse_actions(text: str, kind: str, sleep_ms: int, percent: int) -> None:
    action = faults.parse(text)
    assert (action.kind, action.sleep_ms, action.percent) == (kind, sleep_ms, percent)
    assert action.text == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "on",
        "ERROR",
        "err",
        "sleep",
        "sleep()",
        "sleep(-1)",
        "sleep(1.5)",
        "sleep(5",
        "101%error",
        "999%error",
        "1000%error",
        "25%",
        "%error",
        "-5%error",
        "error;pause",
        "25% error",
    ],
)
def test_parse_rejects_bad_actions(text: str) -> None:
    with pytest.raises(InvalidRequest):
        faults.parse(text)
    with pytest.raises(InvalidRequest):
        faults.set_point("test.bad", text)
    assert "test.bad" not in faults.points()


def test_error_raises_and_off_disarms() -> None:
    faults.point("test.error")  # not set: nothing happens
    faults.set_point("test.error", "error")
    assert faults.points() == {"test.error": "error"}
    with pytest.raises(FailpointError) as raised:
        faults.point("test.error")
    assert raised.value.context == {"failpoint": "test.error"}
    faults.point("test.other")  # other names are unaffected
    faults.set_point("test.error", "off")
    assert faults.points() == {}
    faults.point("test.error")


def test_error_in_the_async_form() -> None:
    faults.set_point("test.async", "error")
    with pytest.raises(FailpointError):
        asyncio.run(faults.apoint("test.async"))
    faults.set_point("test.async", "off")
    asyncio.run(faults.apoint("test.async"))


def test_sleep_sleeps_at_least_that_long() -> None:
    faults.set_point("test.sleep", "sleep(60)")
    started = time.monotonic()
    faults.point("test.sleep")
    assert time.monotonic() - started >= 0.060
    started = time.monotonic()
    asyncio.run(faults.apoint("test.sleep"))
    # The event loop may run a timer up to its clock resolution early.
    assert time.monotonic() - started >= 0.059


def hits_that_fire(name: str, hits: int) -> list[bool]:
    fired = []
    for _ in range(hits):
        try:
            faults.point(name)
            fired.append(False)
        except FailpointError:
            fired.append(True)
    return fired


def test_a_percentage_with_a_fixed_seed_fires_a_deterministic_share(monkeypatch) -> None:
    monkeypatch.setenv("BOREALIS_FAULT_SEED", "1234")
    monkeypatch.setenv("BOREALIS_FAILPOINTS", "test.percent=25%error")
    faults.configure_from_env()
    first = hits_that_fire("test.percent", 2000)
    faults.configure_from_env()  # the same seed replays the same run
    second = hits_that_fire("test.percent", 2000)
    assert first == second
    assert 400 <= sum(first) <= 600  # 25% of 2000, give or take four deviations
    monkeypatch.setenv("BOREALIS_FAULT_SEED", "4321")
    faults.configure_from_env()
    assert hits_that_fire("test.percent", 2000) != first


def test_zero_and_hundred_percent() -> None:
    faults.set_point("test.never", "0%error")
    assert not any(hits_that_fire("test.never", 200))
    faults.set_point("test.always", "100%error")
    assert all(hits_that_fire("test.always", 200))


def test_pause_blocks_a_thread_until_set_off() -> None:
    faults.set_point("test.pause", "pause")
    started, finished = threading.Event(), threading.Event()

    def hit() -> None:
        started.set()
        faults.point("test.pause")
        finished.set()

    thread = threading.Thread(target=hit, daemon=True)
    thread.start()
    try:
        assert started.wait(WAIT_S)
        # Many poll intervals go by and the thread is still held.
        assert not finished.wait(20 * faults.PAUSE_POLL_S)
        assert thread.is_alive()
    finally:
        faults.set_point("test.pause", "off")
    assert finished.wait(WAIT_S), "the paused thread was not released"
    thread.join(WAIT_S)
    assert not thread.is_alive()


def test_pause_is_released_by_any_other_action() -> None:
    faults.set_point("test.pause", "pause")
    finished = threading.Event()
    thread = threading.Thread(
        target=lambda: (faults.point("test.pause"), finished.set()), daemon=True
    )
    thread.start()
    try:
        assert not finished.wait(10 * faults.PAUSE_POLL_S)
        faults.set_point("test.pause", "sleep(1)")
        assert finished.wait(WAIT_S)
    finally:
        faults.set_point("test.pause", "off")
        thread.join(WAIT_S)


def test_configure_from_env_sets_every_listed_point(monkeypatch) -> None:
    monkeypatch.setenv("BOREALIS_FAULT_SEED", "7")
    monkeypatch.setenv(
        "BOREALIS_FAILPOINTS",
        " storage.append.before_sync=error; gossip.pull = sleep(5) ;;a.b=25%pause;c=off; ",
    )
    faults.configure_from_env()
    assert faults.points() == {
        "storage.append.before_sync": "error",
        "gossip.pull": "sleep(5)",
        "a.b": "25%pause",
    }


def test_configure_from_env_without_failpoints(monkeypatch) -> None:
    monkeypatch.delenv("BOREALIS_FAULT_SEED", raising=False)
    monkeypatch.delenv("BOREALIS_FAILPOINTS", raising=False)
    faults.configure_from_env()
    assert faults.points() == {}


@pytest.mark.parametrize("spec", ["storage.append", "x=error;y", "x=explode", "x=sleep(a)"])
def test_configure_from_env_rejects_bad_items(monkeypatch, spec: str) -> None:
    monkeypatch.setenv("BOREALIS_FAULT_SEED", "7")
    monkeypatch.setenv("BOREALIS_FAILPOINTS", spec)
    with pytest.raises(InvalidRequest):
        faults.configure_from_env()


# --- metrics ---------------------------------------------------------------------------

LABEL = re.compile(r'(\w+)="((?:[^"\\\n]|\\.)*)"')


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda match: {"n": "\n"}.get(match[1], match[1]), value)


def split_sample(key: str) -> tuple[str, dict[str, str]]:
    """A parsed sample key `name{a="b",...}` back into its name and labels."""
    name, brace, rest = key.partition("{")
    if not brace:
        return name, {}
    assert rest.endswith("}")
    inner = rest[:-1]
    labels = {match[1]: unescape(match[2]) for match in LABEL.finditer(inner)}
    assert ",".join(match[0] for match in LABEL.finditer(inner)) == inner, key
    return name, labels


def test_render_declares_help_and_type_and_parse_reads_it_back() -> None:
    registry = metrics.Metrics("borealis")
    registry.declare("appends_total", "counter", "Records appended.")
    registry.declare("scl", "gauge", "Segment complete LSN.")
    registry.inc("appends_total")
    registry.inc("appends_total", 2, node="s1")
    registry.inc("appends_total", 0.5, node="s1")
    registry.set("scl", 42, segment="1/0")
    registry.set("scl", 43, segment="1/0")
    text = registry.render()
    assert "# HELP borealis_appends_total Records appended.\n" in text
    assert "# TYPE borealis_appends_total counter\n" in text
    assert "# TYPE borealis_scl gauge\n" in text
    assert text.endswith("\n")
    assert metrics.parse(text) == {
        "borealis_appends_total": 1.0,
        'borealis_appends_total{node="s1"}': 2.5,
        'borealis_scl{segment="1/0"}': 43.0,
    }
    assert registry.value("appends_total", node="s1") == 2.5
    assert registry.value("scl", segment="9/9") == 0


def test_undeclared_metrics_are_a_programming_error() -> None:
    registry = metrics.Metrics("x")
    with pytest.raises(AssertionError):
        registry.inc("nope")
    with pytest.raises(AssertionError):
        registry.declare("bad", "histogram", "no")


def test_label_values_are_escaped() -> None:
    registry = metrics.Metrics("ns")
    registry.declare("m", "gauge", "h")
    registry.set("m", 1, path='C:\\dir "x"', line="a\nb")
    text = registry.render()
    assert 'ns_m{line="a\\nb",path="C:\\\\dir \\"x\\""} 1\n' in text
    (key,) = metrics.parse(text)
    assert split_sample(key) == ("ns_m", {"line": "a\nb", "path": 'C:\\dir "x"'})


label_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@SETTINGS
@given(
    samples=st.dictionaries(
        st.tuples(label_values, label_values),
        st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False, width=32)),
        max_size=8,
    )
)
def test_render_parse_round_trip(samples: dict[tuple[str, str], float]) -> None:
    registry = metrics.Metrics("ns")
    registry.declare("gauge_value", "gauge", "A gauge.")
    for (node, path), value in samples.items():
        registry.set("gauge_value", value, node=node, path=path)
    parsed = metrics.parse(registry.render())
    decoded = {}
    for key, value in parsed.items():
        name, labels = split_sample(key)
        assert name == "ns_gauge_value"
        decoded[(labels["node"], labels["path"])] = value
    assert decoded == {key: float(value) for key, value in samples.items()}


def test_collectors_are_read_at_render_time() -> None:
    registry = metrics.Metrics("storage")
    registry.declare("segment_scl", "gauge", "SCL per segment.")
    state = {"1/0": 5, "1/1": 9}
    registry.collector(
        lambda: [("segment_scl", {"segment": name}, scl) for name, scl in state.items()]
    )
    registry.collector(lambda: [("undeclared", {}, 1)])
    assert metrics.parse(registry.render()) == {
        'storage_segment_scl{segment="1/0"}': 5,
        'storage_segment_scl{segment="1/1"}': 9,
    }
    state["1/0"] = 6
    assert metrics.parse(registry.render())['storage_segment_scl{segment="1/0"}'] == 6


def test_values_render_as_integers_or_floats() -> None:
    registry = metrics.Metrics("ns")
    registry.declare("m", "gauge", "h")
    registry.set("m", 3.0, kind="whole")
    registry.set("m", 0.1, kind="fraction")
    registry.set("m", 2**53, kind="big")
    text = registry.render()
    assert 'ns_m{kind="whole"} 3\n' in text
    assert 'ns_m{kind="fraction"} 0.1\n' in text
    assert f'ns_m{{kind="big"}} {2**53}\n' in text


# --- logging ---------------------------------------------------------------------------


def format_event(event: str, exc_info=None, **fields: object) -> str:
    record = logging.LogRecord("storage_node", logging.INFO, __file__, 1, event, (), exc_info)
    record.fields = fields
    return KeyValueFormatter().format(record)


def test_the_formatter_quotes_values_that_need_it() -> None:
    line = format_event(
        "segment opened",
        segment="1/0",
        scl=42,
        note="two words",
        said='he said "hi"',
        empty="",
        pair="a=b",
        lines="one\ntwo",
        path="C:\\x y",
    )
    assert re.match(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info ", line)
    assert " logger=storage_node " in line
    assert ' event="segment opened" segment=1/0 scl=42 ' in line
    assert ' note="two words" ' in line
    assert ' said="he said \\"hi\\"" ' in line
    assert ' empty="" ' in line
    assert ' pair="a=b" ' in line
    assert ' lines="one\\ntwo" ' in line
    assert line.endswith(' path="C:\\\\x y"')
    assert "\n" not in line


def test_the_formatter_keeps_an_exception_on_the_same_line() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        line = format_event("failed", exc_info=sys.exc_info())
    assert "\n" not in line
    assert re.search(r' exception="Traceback .*ValueError: bad thing"$', line)


KEY_VALUE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ ]*)(?: |$)')


@SETTINGS
@given(
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(
            lambda key: key not in ("ts", "level", "logger", "event")
        ),
        st.text(st.characters(categories=["L", "N", "P", "S", "Zs"], include_characters="\n")),
        max_size=6,
    ),
    st.text(st.characters(categories=["L", "N", "P", "Zs"]), max_size=20),
)
def test_formatted_lines_parse_back_to_the_fields(fields: dict[str, str], event: str) -> None:
    line = format_event(event, **fields)
    assert "\n" not in line
    parsed = {}
    position = 0
    while position < len(line):
        match = KEY_VALUE.match(line, position)
        assert match, line[position:]
        value = match[2]
        if value.startswith('"'):
            value = unescape(value[1:-1])
        parsed[match[1]] = value
        position = match.end()
    assert parsed.pop("event") == event
    assert {key: parsed[key] for key in fields} == fields


def test_the_logger_passes_fields_and_levels(caplog) -> None:
    logger = Logger(logging.getLogger("test.kernel"))
    with caplog.at_level(logging.INFO, logger="test.kernel"):
        logger.debug("hidden")
        logger.info("shown", scl=3)
        logger.error("failed", node="s1")
    assert [record.getMessage() for record in caplog.records] == ["shown", "failed"]
    assert caplog.records[0].fields == {"scl": 3}
    assert caplog.records[1].levelno == logging.ERROR


# --- ports -----------------------------------------------------------------------------


def test_allocated_ports_are_distinct_and_bindable() -> None:
    allocator = PortAllocator()
    given_ports = [allocator.allocate() for _ in range(40)]
    assert len(set(given_ports)) == len(given_ports)
    for port in given_ports:
        assert ports.PORT_RANGE[0] <= port < ports.PORT_RANGE[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_the_allocator_wraps_around_without_repeating() -> None:
    end = ports.PORT_RANGE[1]
    allocator = PortAllocator(start=end - 3)
    given_ports = [allocator.allocate() for _ in range(10)]
    assert len(set(given_ports)) == 10
    assert all(ports.PORT_RANGE[0] <= port < end for port in given_ports)
    assert min(given_ports) < end - 3  # it wrapped to the start of the range


def test_the_allocator_skips_a_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", PortAllocator().allocate()))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not ports.port_is_free(taken)
        assert PortAllocator(start=taken).allocate() != taken


def test_the_allocator_reports_exhaustion(monkeypatch) -> None:
    monkeypatch.setattr(ports, "port_is_free", lambda port, host="127.0.0.1": False)
    with pytest.raises(ResourceExhausted):
        PortAllocator(start=30000).allocate()
