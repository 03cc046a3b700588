"""Reader instances on real processes (issue 5, must-holds 1-3): visibility within a
bound, no partial transactions, one snapshot per read transaction, restart and
catch-up with a cold cache, 25006 on writes, lag metrics."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from borealis import config as config_module
from borealis.wait import wait_until
from compute_node.config import ComputeNodeConfig
from deploy.local import InstanceProcess, LocalCluster
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE

pytestmark = pytest.mark.integration

VISIBLE_TIMEOUT_S = 10.0
ACCOUNTS = 20
BALANCE = 100


def start_reader(cluster: LocalCluster, name: str) -> InstanceProcess:
    """A reader of the cluster's writer, configured as LocalCluster._instance does."""
    writer = next(each for each in cluster.instances if each.role == "writer")
    directory = cluster.data_dir / name
    values = {
        "name": name,
        "role": "reader",
        "cluster_file": cluster.data_dir / "cluster.json",
        "users_file": cluster.data_dir / "users.json",
        "database": "borealis",
        "pg_port": cluster.ports.allocate(),
        "port": cluster.ports.allocate(),
        "metrics_port": cluster.ports.allocate(),
        "data_dir": directory,
        "writer_address": writer.address,
    }
    config = config_module.build(ComputeNodeConfig, values)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "compute_node.toml"
    path.write_text("[compute_node]\n" + config_module.to_toml(config))
    reader = InstanceProcess(
        name=name,
        argv=[sys.executable, "-m", "compute_node", "--config", str(path)],
        directory=directory,
        address=f"{config.host}:{config.port}",
        role="reader",
        metrics_url=f"http://{config.host}:{config.metrics_port}/metrics",
        pg_host=config.host,
        pg_port=config.pg_port,
        env=cluster.process_env(),
    )
    try:
        reader.start()
    except BaseException:
        # Not the fixture's yet: a reader that never served is stopped here, not leaked.
        reader.stop(immediate=True)
        raise
    return reader


def dsn(cluster: LocalCluster, instance: InstanceProcess) -> str:
    document = json.loads((cluster.data_dir / "cluster.json").read_text())
    password = Path(document["password_file"]).read_text().strip()
    return f"host={instance.pg_host} port={instance.pg_port} dbname=borealis user={document['user']} password={password}"


@pytest.fixture
def cluster_with_reader(
    tmp_path: Path, port_allocator: PortAllocator
) -> Iterator[tuple[LocalCluster, InstanceProcess]]:
    # Fast garbage collection: storage drops versions below the PGMRPL the writer
    # derives from the readers' read points while the tests read.
    cluster = LocalCluster(
        tmp_path / "cluster", ports=port_allocator, writer=True, storage_overrides=FAST_STORAGE
    )
    reader: InstanceProcess | None = None
    try:
        cluster.start()
        reader = start_reader(cluster, "r1")
        yield cluster, reader
    finally:
        if reader is not None:
            reader.stop(immediate=True)
        cluster.stop(immediate=True)
    processes = [*cluster.processes(), *([reader] if reader is not None else [])]
    errors = [f"{each.name}: {line}" for each in processes for line in each.error_lines()]
    assert not errors, "logged errors:\n" + "\n".join(errors)


def writer_of(cluster: LocalCluster) -> InstanceProcess:
    return next(each for each in cluster.instances if each.role == "writer")


def scalar(connection: psycopg.Connection, sql: str) -> object:
    row = connection.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_row_committed_on_writer_is_visible_on_reader(
    cluster_with_reader: tuple[LocalCluster, InstanceProcess],
) -> None:
    cluster, reader = cluster_with_reader
    with (
        psycopg.connect(dsn(cluster, writer_of(cluster)), autocommit=True) as writer,
        psycopg.connect(dsn(cluster, reader), autocommit=True) as replica,
    ):
        writer.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        for index in range(20):
            writer.execute("INSERT INTO items VALUES (%s, %s)", (index, f"item {index}"))
            started = time.monotonic()
            wait_until(
                lambda index=index: (
                    replica.execute("SELECT name FROM items WHERE id = %s", (index,)).fetchone()
                    == (f"item {index}",)
                ),
                VISIBLE_TIMEOUT_S,
                interval_s=0.01,
                what=f"row {index} on the reader",
            )
            assert time.monotonic() - started < VISIBLE_TIMEOUT_S
        assert scalar(replica, "SELECT count(*) FROM items") == 20
        # Writes on a reader are refused as PostgreSQL refuses them on a standby.
        with pytest.raises(psycopg.Error) as raised:
            replica.execute("INSERT INTO items VALUES (100, 'no')")
        assert raised.value.sqlstate == "25006"
        with pytest.raises(psycopg.Error) as raised:
            replica.execute("CREATE TABLE other (id integer)")
        assert raised.value.sqlstate == "25006"


def test_bank_invariant_and_snapshots_on_reader(
    cluster_with_reader: tuple[LocalCluster, InstanceProcess],
) -> None:
    cluster, reader = cluster_with_reader
    writer_dsn = dsn(cluster, writer_of(cluster))
    with psycopg.connect(writer_dsn, autocommit=True) as writer:
        writer.execute("CREATE TABLE accounts (id integer PRIMARY KEY, balance integer)")
        with writer.transaction():
            for account in range(ACCOUNTS):
                writer.execute("INSERT INTO accounts VALUES (%s, %s)", (account, BALANCE))
    total = ACCOUNTS * BALANCE
    stop = threading.Event()
    transfers = [0]
    failures: list[BaseException] = []

    def transfer_forever() -> None:
        try:
            with psycopg.connect(writer_dsn, autocommit=True) as connection:
                step = 0
                while not stop.is_set():
                    step += 1
                    source, target = step % ACCOUNTS, (step * 7 + 3) % ACCOUNTS
                    with connection.transaction():
                        connection.execute(
                            "UPDATE accounts SET balance = balance - 1 WHERE id = %s", (source,)
                        )
                        connection.execute(
                            "UPDATE accounts SET balance = balance + 1 WHERE id = %s", (target,)
                        )
                    transfers[0] += 1
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    thread = threading.Thread(target=transfer_forever, daemon=True)
    thread.start()
    try:
        with psycopg.connect(dsn(cluster, reader), autocommit=True) as replica:
            wait_until(
                lambda: scalar(replica, "SELECT count(*) FROM accounts") == ACCOUNTS,
                VISIBLE_TIMEOUT_S,
                what="accounts on the reader",
            )
            deadline = time.monotonic() + 8.0
            checks = 0
            distinct_snapshots = set()
            while time.monotonic() < deadline:
                # A multi-row invariant: never a partial transfer.
                assert scalar(replica, "SELECT sum(balance) FROM accounts") == total
                # One snapshot for the whole read transaction.
                with replica.transaction():
                    first = replica.execute(
                        "SELECT id, balance FROM accounts ORDER BY id"
                    ).fetchall()
                    time.sleep(0.05)
                    second = replica.execute(
                        "SELECT id, balance FROM accounts ORDER BY id"
                    ).fetchall()
                    third = scalar(replica, "SELECT sum(balance) FROM accounts")
                assert first == second
                assert third == total
                distinct_snapshots.add(tuple(first))
                checks += 1
            assert checks > 10
            # The reader did move on while the writer committed.
            assert len(distinct_snapshots) > 3, len(distinct_snapshots)
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures
    assert transfers[0] > 10


def test_killed_reader_restarts_and_catches_up(
    cluster_with_reader: tuple[LocalCluster, InstanceProcess],
) -> None:
    cluster, reader = cluster_with_reader
    with psycopg.connect(dsn(cluster, writer_of(cluster)), autocommit=True) as writer:
        writer.execute("CREATE TABLE log (id integer PRIMARY KEY, body text)")
        writer.execute("INSERT INTO log SELECT g, 'first' FROM generate_series(1, 500) AS g")
        with psycopg.connect(dsn(cluster, reader), autocommit=True) as replica:
            wait_until(
                lambda: scalar(replica, "SELECT count(*) FROM log") == 500,
                VISIBLE_TIMEOUT_S,
                what="rows on the reader",
            )
        reader.kill()
        # Written while the reader is down: it must catch up from storage.
        writer.execute("INSERT INTO log SELECT g, 'second' FROM generate_series(501, 1500) AS g")
        writer.execute("UPDATE log SET body = 'changed' WHERE id % 10 = 0")
        reader.start()
        with psycopg.connect(dsn(cluster, reader), autocommit=True) as replica:
            assert scalar(replica, "SELECT count(*) FROM log") == 1500
            assert scalar(replica, "SELECT count(*) FROM log WHERE body = 'changed'") == 150
            writer.execute("INSERT INTO log VALUES (2000, 'after restart')")
            wait_until(
                lambda: scalar(replica, "SELECT body FROM log WHERE id = 2000") == "after restart",
                VISIBLE_TIMEOUT_S,
                what="a row written after the restart",
            )


def test_reader_exports_replica_lag(
    cluster_with_reader: tuple[LocalCluster, InstanceProcess],
) -> None:
    import urllib.request

    cluster, reader = cluster_with_reader
    with psycopg.connect(dsn(cluster, writer_of(cluster)), autocommit=True) as writer:
        writer.execute("CREATE TABLE t (id integer PRIMARY KEY)")
        writer.execute("INSERT INTO t VALUES (1)")

    def metrics(instance: InstanceProcess) -> dict[str, float]:
        with urllib.request.urlopen(instance.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line and not line.startswith("#") and "{" not in line
        }

    def lag_is_zero() -> bool:
        values = metrics(reader)
        return (
            values["borealis_instance_replica_lag_lsns"] == 0
            and values["borealis_instance_replica_lag_ms"] == 0
            and values["borealis_instance_replica_mtrs_applied_total"] >= 2
        )

    wait_until(lag_is_zero, VISIBLE_TIMEOUT_S, what="replica lag metrics at zero")

    def pgmrpl_sent() -> bool:
        # The writer derived a PGMRPL from its own and the reader's read points and
        # sent it to storage.
        values = metrics(writer_of(cluster))
        return (
            values["borealis_instance_replication_subscribers"] == 1
            and values["borealis_instance_replication_pgmrpl"] > 0
        )

    wait_until(pgmrpl_sent, VISIBLE_TIMEOUT_S, what="the writer to send a PGMRPL")
