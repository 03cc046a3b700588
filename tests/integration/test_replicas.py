"""Issue 5's must-holds on one real cluster started by the launcher users run: a
writer, two readers and the router, with real clients (psycopg, pgbench) through
the writer and reader endpoints.

1. A row committed through the writer endpoint is visible through the reader
   endpoint within the lag bound; readers never show a partial transaction.
2. A read transaction on a reader sees one snapshot while the writer commits.
3. A reader killed with SIGKILL and restarted catches up, and serves correct
   results with a cold cache.
4. Reader-endpoint connections spread over the readers; removing a reader (the
   control plane's remove_reader) drains it with no errors for idle sessions.
5. pgbench -S through the reader endpoint has no failed transactions while pgbench
   TPC-B runs through the writer endpoint.

One cluster serves the whole module (starting one takes seconds); each test uses
its own tables, waits until the router has no sessions left over from the test
before, and the test that removes a reader runs last.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psycopg
import pytest

from borealis import rpc
from borealis.wait import wait_until
from control_plane.supervisor import Supervisor
from deploy.local import InstanceProcess, LocalCluster
from deploy.ports import PortAllocator
from router.config import RouterConfig
from tests.conftest import FAST_STORAGE
from tests.support import pg_endpoint as endpoints

pytestmark = pytest.mark.integration

# Interrupts a test blocked on a silent server (SIGALRM) so the cluster still stops.
deadline_guard = endpoints.deadline_guard
TEST_DEADLINE_S = 90.0

# The lag bound: the router leaves a reader lagging more than this out of the
# reader endpoint, so a commit must show through the reader endpoint within it.
LAG_BOUND_S = (
    next(each.default for each in fields(RouterConfig) if each.name == "reader_lag_max_ms") / 1000
)
# How long the router may take to see a topology or health change.
ROUTER_SETTLE_S = 15.0
CATCH_UP_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5
ACCOUNTS = 20
BALANCE = 100
LOAD_DURATION_S = 4.0
PGBENCH_DURATION_S = 5
PGBENCH_INIT_TIMEOUT_S = 240.0
PGBENCH_RUN_TIMEOUT_S = PGBENCH_DURATION_S + 60.0
PGBENCH_ACCOUNTS = 100_000
READERS = ("r1", "r2")
_table_numbers = itertools.count(1)


def unique(prefix: str) -> str:
    """A table name no other test of the run uses."""
    return f"{prefix}_{os.getpid()}_{next(_table_numbers)}"


@dataclass
class Replicas:
    """The running cluster and what cluster.json says about it."""

    cluster: LocalCluster
    document: dict[str, Any] = field(default_factory=dict)

    def reload(self) -> None:
        self.document = json.loads((self.cluster.data_dir / "cluster.json").read_text())

    @property
    def password(self) -> str:
        return Path(self.document["password_file"]).read_text().strip()

    def url(self, endpoint: str) -> str:
        """The URL of `writer`, `reader`, or an instance's own endpoint (by name)."""
        urls = self.document["endpoints"]
        return str(
            urls[endpoint] if endpoint in ("writer", "reader") else urls["instances"][endpoint]
        )

    def connect(self, endpoint: str, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.url(endpoint),
            password=self.password,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_S,
        )

    def router_metrics(self) -> str:
        router = self.cluster.router
        assert router is not None
        return asyncio.run(rpc.metrics_text(router.address, 2.0))

    def connections(self) -> dict[tuple[str, str], int]:
        """The router's client sessions by (instance, endpoint): the gauge
        borealis_router_connections{endpoint, instance} it exports."""
        found = re.findall(
            r'^borealis_router_connections\{endpoint="([^"]*)",instance="([^"]*)"\} (\S+)$',
            self.router_metrics(),
            re.MULTILINE,
        )
        return {
            (instance, name): int(float(value)) for name, instance, value in found if float(value)
        }

    def router_counter(self, name: str) -> float:
        found = re.search(rf"^borealis_router_{name} (\S+)$", self.router_metrics(), re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def healthy_in_router(self, instance: str) -> bool:
        pattern = rf'^borealis_router_instance_healthy\{{instance="{instance}"\}} 1$'
        return re.search(pattern, self.router_metrics(), re.MULTILINE) is not None

    def wait_quiet(self) -> None:
        """Waits until the router has no client sessions (those of earlier tests close
        asynchronously) and sees every reader healthy."""
        wait_until(lambda: not self.connections(), ROUTER_SETTLE_S, what="no router sessions")
        for name in READERS:
            if any(each.name == name for each in self.cluster.instances):
                wait_until(
                    lambda name=name: self.healthy_in_router(name),
                    ROUTER_SETTLE_S,
                    what=f"the router to see {name} healthy",
                )

    def instance_of(self, session_count_before: dict[tuple[str, str], int]) -> str:
        """The instance the one reader-endpoint session opened since `before` is on."""
        after = self.connections()
        grown = [key for key, count in after.items() if count > session_count_before.get(key, 0)]
        assert len(grown) == 1, (session_count_before, after)
        return grown[0][0]


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, port_allocator: PortAllocator
) -> Iterator[Replicas]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("replicas") / "c",
        ports=port_allocator,
        writer=True,
        readers=2,
        router=True,
        storage_overrides=FAST_STORAGE,
    )
    try:
        cluster.start()
        handle = Replicas(cluster)
        handle.reload()
        yield handle
    finally:
        cluster.stop(immediate=True)
    errors = [f"{each.name}: {line}" for each in cluster.processes() for line in each.error_lines()]
    assert not errors, "ERROR lines in the node logs:\n" + "\n".join(errors)


def scalar(connection: psycopg.Connection[Any], sql: str, *parameters: Any) -> Any:
    row = connection.execute(sql, parameters or None).fetchone()
    assert row is not None, sql
    return row[0]


# --- 1. visibility within the lag bound; no partial transactions ---------------------


def test_commit_on_writer_endpoint_is_visible_through_reader_endpoint(replicas: Replicas) -> None:
    replicas.wait_quiet()
    table = unique("visible")
    with replicas.connect("writer") as writer:
        writer.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text)")
        readers = [replicas.connect("reader") for _ in READERS]
        try:
            # Two sessions at once: the least-connected rule puts one on each reader.
            on = {
                instance for (instance, endpoint) in replicas.connections() if endpoint == "reader"
            }
            assert on == set(READERS), replicas.connections()
            delays_s = []
            for index in range(20):
                writer.execute(f"INSERT INTO {table} VALUES (%s, %s)", (index, f"row {index}"))
                committed_at = time.monotonic()
                for reader in readers:
                    wait_until(
                        lambda reader=reader, index=index: (
                            reader.execute(
                                f"SELECT name FROM {table} WHERE id = %s", (index,)
                            ).fetchone()
                            == (f"row {index}",)
                        ),
                        CATCH_UP_TIMEOUT_S,
                        interval_s=0.005,
                        what=f"row {index} through the reader endpoint",
                    )
                delays_s.append(time.monotonic() - committed_at)
            print(json.dumps({"visible_delay_max_s": max(delays_s), "lag_bound_s": LAG_BOUND_S}))
            assert max(delays_s) < LAG_BOUND_S, delays_s
            for reader in readers:
                assert scalar(reader, f"SELECT count(*) FROM {table}") == 20
        finally:
            for reader in readers:
                reader.close()


class BankLoad:
    """Transfers between accounts in transactions through the writer endpoint, in a
    thread, until stopped: the sum of balances is the same after every commit."""

    def __init__(self, replicas: Replicas, table: str) -> None:
        self.replicas = replicas
        self.table = table
        self.transfers = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def total(self) -> int:
        return ACCOUNTS * BALANCE

    def create(self) -> None:
        with self.replicas.connect("writer") as writer:
            writer.execute(f"CREATE TABLE {self.table} (id integer PRIMARY KEY, balance integer)")
            with writer.transaction():
                for account in range(ACCOUNTS):
                    writer.execute(f"INSERT INTO {self.table} VALUES (%s, %s)", (account, BALANCE))

    def __enter__(self) -> BankLoad:
        self.create()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the transfer thread did not stop"
        assert not self.failures, self.failures

    def _run(self) -> None:
        try:
            with self.replicas.connect("writer") as connection:
                for step in itertools.count(1):
                    if self._stop.is_set():
                        return
                    source, target = step % ACCOUNTS, (step * 7 + 3) % ACCOUNTS
                    with connection.transaction():
                        connection.execute(
                            f"UPDATE {self.table} SET balance = balance - %s WHERE id = %s",
                            (step % 5 + 1, source),
                        )
                        connection.execute(
                            f"UPDATE {self.table} SET balance = balance + %s WHERE id = %s",
                            (step % 5 + 1, target),
                        )
                    self.transfers += 1
        except BaseException as error:  # noqa: BLE001 - reported by __exit__
            self.failures.append(error)

    def rows(self, connection: psycopg.Connection[Any]) -> list[tuple[int, int]]:
        return connection.execute(f"SELECT id, balance FROM {self.table} ORDER BY id").fetchall()


def test_readers_never_show_a_partial_transaction(replicas: Replicas) -> None:
    replicas.wait_quiet()
    load = BankLoad(replicas, unique("bank"))
    with load:
        readers = [replicas.connect("reader") for _ in READERS]
        try:
            on = {
                instance for (instance, endpoint) in replicas.connections() if endpoint == "reader"
            }
            assert on == set(READERS), replicas.connections()
            for reader in readers:
                wait_until(
                    lambda reader=reader: (
                        scalar(reader, f"SELECT count(*) FROM {load.table}") == ACCOUNTS
                    ),
                    CATCH_UP_TIMEOUT_S,
                    what="the accounts through the reader endpoint",
                )
            states: list[set[tuple[tuple[int, int], ...]]] = [set() for _ in readers]
            checks = 0
            deadline = time.monotonic() + LOAD_DURATION_S
            while time.monotonic() < deadline:
                for reader, seen in zip(readers, states, strict=True):
                    # One statement reads every row: its rows must add up after every
                    # whole transfer, never half of one.
                    rows = load.rows(reader)
                    assert len(rows) == ACCOUNTS
                    assert sum(balance for _, balance in rows) == load.total, rows
                    assert scalar(reader, f"SELECT sum(balance) FROM {load.table}") == load.total
                    seen.add(tuple(rows))
                    checks += 1
        finally:
            for reader in readers:
                reader.close()
    assert load.transfers > 20, load.transfers
    assert checks > 20, checks
    # Each reader moved on while the writer committed (not one frozen snapshot).
    assert all(len(seen) > 3 for seen in states), [len(seen) for seen in states]


# --- 2. one snapshot per read transaction --------------------------------------------


def test_read_transaction_sees_one_snapshot(replicas: Replicas) -> None:
    replicas.wait_quiet()
    load = BankLoad(replicas, unique("snapshot"))
    with load, replicas.connect("reader") as reader:
        before = replicas.connections()
        wait_until(
            lambda: scalar(reader, f"SELECT count(*) FROM {load.table}") == ACCOUNTS,
            CATCH_UP_TIMEOUT_S,
            what="the accounts through the reader endpoint",
        )
        instance = next(name for (name, endpoint) in before if endpoint == "reader")
        assert instance in READERS, before
        # A second session straight to the same reader shows that it applied newer
        # commits while the transaction kept its snapshot.
        with replicas.connect(instance) as probe:
            for _ in range(3):
                with reader.transaction():
                    first = load.rows(reader)
                    transfers = load.transfers
                    wait_until(
                        lambda first=first, transfers=transfers: (
                            load.transfers >= transfers + 10 and load.rows(probe) != first
                        ),
                        CATCH_UP_TIMEOUT_S,
                        interval_s=0.01,
                        what="the reader to apply newer transfers",
                    )
                    second = load.rows(reader)
                    total = scalar(reader, f"SELECT sum(balance) FROM {load.table}")
                    assert second == first
                    assert total == load.total
                # Out of the transaction the session reads the newer state.
                wait_until(
                    lambda first=first: load.rows(reader) != first,
                    LAG_BOUND_S,
                    interval_s=0.01,
                    what="the session to see newer state after its transaction",
                )


# --- 3. kill -9, restart, catch up, cold cache -----------------------------------------


def test_killed_reader_catches_up_and_serves_from_a_cold_cache(replicas: Replicas) -> None:
    replicas.wait_quiet()
    table = unique("log")
    # Wide rows (a literal: the SQL front has no repeat()): the table spans many pages.
    body = "'" + "x" * 200 + "'"
    reader = replicas.cluster.instance("r1")
    with replicas.connect("writer") as writer:
        writer.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, tag text, body text)")
        writer.execute(
            f"INSERT INTO {table} SELECT g, 'first', {body} FROM generate_series(1, 500) AS g"
        )
        with replicas.connect("r1") as direct:
            wait_until(
                lambda: scalar(direct, f"SELECT count(*) FROM {table}") == 500,
                CATCH_UP_TIMEOUT_S,
                what="the rows on r1",
            )
        reader.kill()
        # Written while the reader is down, one transaction per statement.
        writer.execute(
            f"INSERT INTO {table} SELECT g, 'second', {body} FROM generate_series(501, 2000) AS g"
        )
        writer.execute(f"UPDATE {table} SET tag = 'changed' WHERE id % 10 = 0")
        expected = writer.execute(f"SELECT id, tag, body FROM {table} ORDER BY id").fetchall()
        committed_states = {(500, 0), (2000, 0), (2000, 200)}
        reader.start()
        replicas.cluster.write_cluster_file()

        with replicas.connect("r1") as direct:
            # Cold cache: every page comes from storage at the read point, which may
            # trail the writer for a moment but is always some committed state.
            def caught_up() -> bool:
                state = direct.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE tag = 'changed') FROM {table}"
                ).fetchone()
                assert state in committed_states, state
                return state == (2000, 200)

            wait_until(caught_up, CATCH_UP_TIMEOUT_S, interval_s=0.01, what="r1 to catch up")
            assert direct.execute(f"SELECT id, tag, body FROM {table} ORDER BY id").fetchall() == (
                expected
            )
            writer.execute(f"INSERT INTO {table} VALUES (5000, 'after restart', 'y')")
            wait_until(
                lambda: (
                    direct.execute(f"SELECT tag FROM {table} WHERE id = 5000").fetchone()
                    == ("after restart",)
                ),
                CATCH_UP_TIMEOUT_S,
                interval_s=0.01,
                what="a row written after the restart on r1",
            )
    # Back in the reader endpoint once the router sees it healthy again.
    replicas.wait_quiet()
    readers = [replicas.connect("reader") for _ in READERS]
    try:
        on = {instance for (instance, endpoint) in replicas.connections() if endpoint == "reader"}
        assert on == set(READERS), replicas.connections()
        for session in readers:
            assert scalar(session, f"SELECT count(*) FROM {table}") == 2001
            assert scalar(session, f"SELECT sum(length(body)) FROM {table}") == 2000 * 200 + 1
    finally:
        for session in readers:
            session.close()


# --- 5. pgbench -S on the reader endpoint while TPC-B runs on the writer endpoint ----


def pgbench_process(replicas: Replicas, endpoint: str, *arguments: str) -> subprocess.Popen[str]:
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    port = int(replicas.url(endpoint).rsplit(":", 1)[1].split("/")[0])
    environment = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": replicas.document["user"],
        "PGDATABASE": replicas.document["database"],
        "PGPASSWORD": replicas.password,
    }
    return subprocess.Popen(
        [binary, *arguments],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def pgbench_output(process: subprocess.Popen[str], timeout_s: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"pgbench ran past {timeout_s:.0f}s:\n{output}") from None
    assert process.returncode == 0, f"pgbench {process.args} failed:\n{output}"
    return output


def summary_number(output: str, label: str) -> int:
    found = re.search(rf"^{re.escape(label)}:\s*(\d+)", output, re.MULTILINE)
    assert found is not None, f"no {label!r} line in pgbench output:\n{output}"
    return int(found.group(1))


def test_pgbench_select_only_on_readers_while_tpcb_on_writer(replicas: Replicas) -> None:
    replicas.wait_quiet()
    init = pgbench_process(replicas, "writer", "-i", "-s", "1", "-q")
    pgbench_output(init, PGBENCH_INIT_TIMEOUT_S)
    for name in READERS:
        with replicas.connect(name) as direct:
            wait_until(
                lambda direct=direct: (
                    scalar(direct, "SELECT count(*) FROM pgbench_accounts") == PGBENCH_ACCOUNTS
                ),
                CATCH_UP_TIMEOUT_S,
                what=f"the pgbench tables on {name}",
            )
    duration = str(PGBENCH_DURATION_S)
    writes = pgbench_process(replicas, "writer", "-n", "-c", "2", "-T", duration)
    reads = pgbench_process(
        replicas, "reader", "-n", "-S", "-M", "prepared", "-c", "2", "-T", duration
    )
    try:
        # The select-only clients are on the readers, not on the writer.
        wait_until(
            lambda: {i for (i, e) in replicas.connections() if e == "reader"} == set(READERS),
            ROUTER_SETTLE_S,
            interval_s=0.05,
            what="pgbench -S sessions on both readers",
        )
    finally:
        read_output = pgbench_output(reads, PGBENCH_RUN_TIMEOUT_S)
        write_output = pgbench_output(writes, PGBENCH_RUN_TIMEOUT_S)
    print(read_output, write_output)
    assert "query mode: prepared" in read_output
    assert summary_number(read_output, "number of failed transactions") == 0, read_output
    assert summary_number(read_output, "number of transactions actually processed") > 0
    assert summary_number(write_output, "number of failed transactions") == 0, write_output
    assert summary_number(write_output, "number of transactions actually processed") > 0


# --- 4. spread over the readers; remove-reader drains without errors -----------------


def test_reader_endpoint_spreads_connections_over_readers(replicas: Replicas) -> None:
    replicas.wait_quiet()
    sessions = [replicas.connect("reader") for _ in range(4)]
    try:
        assert replicas.connections() == {("r1", "reader"): 2, ("r2", "reader"): 2}
        for number, session in enumerate(sessions):
            assert scalar(session, "SELECT %s::int + 1", number) == number + 1
            # Readers are read-only, as PostgreSQL reports for a hot standby.
            assert session.info.parameter_status("in_hot_standby") == "on"
    finally:
        for session in sessions:
            session.close()


def test_control_plane_counts_router_sessions(replicas: Replicas) -> None:
    """LocalCluster.router_sessions is what remove_reader waits on before it stops
    a reader: it must agree with the router's own gauge."""
    replicas.wait_quiet()
    sessions = [replicas.connect("reader") for _ in READERS]
    try:
        assert replicas.connections() == {("r1", "reader"): 1, ("r2", "reader"): 1}
        counted = {name: replicas.cluster.router_sessions(name) for name in READERS}
        assert counted == {"r1": 1, "r2": 1}, counted
    finally:
        for session in sessions:
            session.close()


class RemovalWatch:
    """Samples, while a removal runs, whether the removed instance still had router
    sessions once its process was gone (a stop before the drain finished)."""

    def __init__(self, replicas: Replicas, instance: InstanceProcess) -> None:
        self.replicas = replicas
        self.instance = instance
        self.violations: list[dict[str, Any]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RemovalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            sessions = self.replicas.connections().get((self.instance.name, "reader"), 0)
            alive = self.instance.is_running()
            self.samples += 1
            if sessions and not alive:
                self.violations.append({"sessions": sessions, "at": time.monotonic()})


def test_remove_reader_drains_idle_sessions(replicas: Replicas) -> None:
    replicas.wait_quiet()
    sessions = [replicas.connect("reader") for _ in range(4)]
    try:
        assert replicas.connections() == {("r1", "reader"): 2, ("r2", "reader"): 2}
        for number, session in enumerate(sessions):
            # Prepared statements too must survive a move.
            assert session.execute("SELECT %s::int * 2", (number,), prepare=True).fetchone() == (
                number * 2,
            )
        moved_before = replicas.router_counter("sessions_moved")
        removed = replicas.cluster.instance("r2")
        # The control plane's own path (what `borealis remove-reader r2` runs).
        supervisor = Supervisor(replicas.cluster, control_plane_port=0)
        with RemovalWatch(replicas, removed) as watch:
            still_open = supervisor.remove_reader("r2", drain_timeout_s=ROUTER_SETTLE_S)
        replicas.reload()
        assert "r2" not in replicas.document["endpoints"]["instances"]
        assert not removed.is_running()
        assert still_open == 0
        assert watch.samples > 0
        assert not watch.violations, f"r2 stopped with router sessions on it: {watch.violations}"
        # Every idle session's next statement succeeds, now on r1.
        for number, session in enumerate(sessions):
            assert session.execute("SELECT %s::int * 2", (number,), prepare=True).fetchone() == (
                number * 2,
            )
            assert scalar(session, "SELECT 1") == 1
        assert replicas.connections() == {("r1", "reader"): 4}
        assert replicas.router_counter("sessions_moved") >= moved_before + 2
    finally:
        for session in sessions:
            session.close()
