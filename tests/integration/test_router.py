"""The router in front of a real cluster: psql, psycopg and asyncpg through the
writer, reader and custom endpoints; SCRAM at the router; cancel through it; idle
sessions moved off a draining instance and sessions in a transaction left alone;
and pgbench -S through the router with no failed transaction.

With no reader instances yet, the tests give the one writer a second name in
cluster.json (an alias entry with the same PostgreSQL and gRPC addresses), so a
custom endpoint over both names has two "instances" to move sessions between.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from borealis import config as config_module
from borealis.wait import wait_until
from deploy.local import LocalCluster, NodeProcess
from deploy.ports import PortAllocator
from router.config import RouterConfig

pytestmark = pytest.mark.integration

USER = "borealis"
DATABASE = "borealis"
SECRET_FILE = "proxy_secret"
SLOW_SQL = (
    "WITH RECURSIVE counter(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM counter "
    "WHERE n < 1000000000) SELECT count(*) FROM counter"
)
CANCEL_DEADLINE_S = 20.0
PGBENCH_TIMEOUT_S = 300.0


@dataclass
class Routed:
    cluster: LocalCluster
    router: NodeProcess
    ports: PortAllocator
    writer_port: int
    reader_port: int
    metrics_port: int
    password: str

    @property
    def cluster_file(self) -> Path:
        return self.cluster.data_dir / "cluster.json"

    def kwargs(self, port: int, password: str | None = None) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": port,
            "user": USER,
            "password": self.password if password is None else password,
            "dbname": DATABASE,
        }

    def direct_port(self) -> int:
        return self.cluster.writer().pg_port

    def edit_cluster(self, change: Any) -> None:
        """Rewrites cluster.json as the control plane would (whole file, atomically)."""
        document = json.loads(self.cluster_file.read_text())
        change(document)
        temporary = self.cluster_file.with_suffix(".edit")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        temporary.replace(self.cluster_file)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str) -> float:
        found = re.search(rf"^borealis_router_{name} (\S+)$", self.metrics_text(), re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def connections(self) -> dict[tuple[str, str], int]:
        """borealis_router_connections by (instance, endpoint), from /metrics."""
        text = self.metrics_text()
        found = re.findall(
            r'^borealis_router_connections\{endpoint="([^"]*)",instance="([^"]*)"\} (\S+)$',
            text,
            re.MULTILINE,
        )
        return {(instance, endpoint): int(float(v)) for endpoint, instance, v in found}


def _write_router_config(cluster: LocalCluster, ports: PortAllocator) -> tuple[Path, RouterConfig]:
    directory = cluster.data_dir / "router"
    directory.mkdir(parents=True, exist_ok=True)
    config = RouterConfig(
        data_dir=directory,
        cluster_file=cluster.data_dir / "cluster.json",
        users_file=cluster.data_dir / "users.json",
        proxy_secret_file=cluster.data_dir / SECRET_FILE,
        port=ports.allocate(),
        metrics_port=ports.allocate(),
        writer_port=ports.allocate(),
        reader_port=ports.allocate(),
        topology_poll_ms=100,
        health_interval_ms=300,
    )
    path = directory / "router.toml"
    path.write_text("[router]\n" + config_module.to_toml(config))
    return path, config


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    data_dir = tmp_path_factory.mktemp("routed")
    ports = PortAllocator()
    # The launcher creates users.json, the password and the proxy secret.
    cluster = LocalCluster(data_dir, ports=ports, writer=True)
    router: NodeProcess | None = None
    try:
        cluster.start()
        path, config = _write_router_config(cluster, ports)
        router = NodeProcess(
            name="router",
            argv=[sys.executable, "-m", "router", "--config", str(path)],
            directory=config.data_dir,
            address=f"{config.host}:{config.port}",
            env=cluster.process_env(),
        )
        router.start()
        assert config.metrics_port is not None
        yield Routed(
            cluster,
            router,
            ports,
            config.writer_port,
            config.reader_port,
            config.metrics_port,
            cluster.password,
        )
        errors = router.error_lines()
        assert not errors, "ERROR lines in the router's log:\n" + "\n".join(errors)
    finally:
        if router is not None:
            router.stop()
        cluster.stop(immediate=True)


def test_psql_through_writer_endpoint(routed: Routed) -> None:
    environment = {**os.environ, "PGPASSWORD": routed.password}
    result = subprocess.run(
        [
            shutil.which("psql") or "/usr/bin/psql",
            "-h", "127.0.0.1", "-p", str(routed.writer_port), "-U", USER, "-d", DATABASE,
            "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-c", "CREATE TABLE IF NOT EXISTS psql_t (id int PRIMARY KEY, v text)",
            "-c", "INSERT INTO psql_t VALUES (1, 'one') ON CONFLICT (id) DO NOTHING",
            "-c", "SELECT v FROM psql_t WHERE id = 1",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "one"


def test_psycopg_transactions_and_extended_protocol(routed: Routed) -> None:
    with psycopg.connect(**routed.kwargs(routed.writer_port)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS tx_t (id int PRIMARY KEY, v int)")
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO tx_t VALUES (%s, %s)", (1, 10))
        try:
            with conn.transaction():
                conn.execute("INSERT INTO tx_t VALUES (%s, %s)", (2, 20))
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        rows = conn.execute("SELECT id, v FROM tx_t ORDER BY id", prepare=True).fetchall()
        assert rows == [(1, 10)]
        # The server's parameters came through the router.
        assert (
            conn.info.parameter_status(
                "server_version",
            )
            is not None
        )
        assert conn.info.backend_pid != 0


def test_asyncpg_through_reader_endpoint_falls_back_to_writer(routed: Routed) -> None:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(**_asyncpg_kwargs(routed, routed.reader_port))
        try:
            statement = await conn.prepare("SELECT $1::int + 1")
            assert routed.connections() == {("w1", "reader"): 1}
            return [await statement.fetchval(i) for i in range(3)]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [1, 2, 3]
    wait_until(lambda: ("w1", "reader") not in routed.connections(), 10, what="reader closed")


def _asyncpg_kwargs(routed: Routed, port: int, password: str | None = None) -> dict[str, Any]:
    kwargs = routed.kwargs(port, password)
    kwargs["database"] = kwargs.pop("dbname")
    kwargs["ssl"] = False
    return kwargs


def test_wrong_password_is_refused_at_the_router(routed: Routed) -> None:
    async def run() -> None:
        await asyncpg.connect(**_asyncpg_kwargs(routed, routed.writer_port, "wrong"))

    with pytest.raises(asyncpg.InvalidPasswordError) as raised:
        asyncio.run(run())
    assert raised.value.sqlstate == "28P01"


def test_proxy_login_with_a_wrong_secret_is_refused_by_the_instance(routed: Routed) -> None:
    """The instance's side of the contract: a bad proxy secret is a bad password."""
    from router import backend

    async def run() -> None:
        await backend.connect(
            "w1", "127.0.0.1", routed.direct_port(), {"user": USER, "database": DATABASE},
            "not-the-secret", 5.0,
        )  # fmt: skip

    with pytest.raises(backend.BackendRefused) as raised:
        asyncio.run(run())
    assert raised.value.sqlstate == "28P01"


class _LoginOnly:
    """A backend that only logs in (the proxy-login tests need no SQL)."""

    transaction_status = b"I"

    async def close(self) -> None:
        return None


def test_proxy_login_skips_scram_and_hides_the_secret() -> None:
    """borealis/pgwire/server.py: the right secret logs in without a password and
    is not a client parameter; a wrong one, or none configured, is 28P01."""
    from borealis.pgwire.server import ServerSettings, start_server
    from router import backend

    seen: list[dict[str, str]] = []

    async def factory(startup: Any) -> Any:
        seen.append(dict(startup.parameters))
        return _LoginOnly()

    async def login(secret: str | None, offered: str) -> backend.BackendLink:
        settings = ServerSettings(proxy_secret=secret)
        server = await start_server("127.0.0.1", 0, factory, lambda user: None, settings)
        try:
            link = await backend.connect(
                "fake", "127.0.0.1", server.port, {"user": "u", "application_name": "a"},
                offered, 5.0,
            )  # fmt: skip
            link.close()
            return link
        finally:
            await server.close()

    link = asyncio.run(login("s3cret", "s3cret"))
    assert link.process_id != 0
    assert seen == [{"user": "u", "application_name": "a"}]
    for secret, offered in (("s3cret", "wrong"), (None, "s3cret")):
        with pytest.raises(backend.BackendRefused) as raised:
            asyncio.run(login(secret, offered))
        assert raised.value.sqlstate == "28P01"
    assert len(seen) == 1


def test_cancel_through_the_router(routed: Routed) -> None:
    with psycopg.connect(**routed.kwargs(routed.writer_port), autocommit=True) as conn:
        finished = threading.Event()

        def cancel_until_finished() -> None:
            deadline = time.monotonic() + CANCEL_DEADLINE_S
            while not finished.wait(0.2) and time.monotonic() < deadline:
                conn.cancel_safe(timeout=5.0)
            if not finished.is_set():
                with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)

        canceller = threading.Thread(target=cancel_until_finished, daemon=True)
        canceller.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as raised:
                conn.execute(SLOW_SQL)
        finally:
            finished.set()
            canceller.join(CANCEL_DEADLINE_S)
        assert raised.value.diag.sqlstate == "57014"
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def _alias(document: dict[str, Any], name: str, role: str = "writer") -> None:
    """A second cluster.json name for the writer process."""
    writer = next(i for i in document["instances"] if i["name"] == "w1")
    document["instances"] = [i for i in document["instances"] if i["name"] != name]
    document["instances"].append({**writer, "name": name, "role": role})


def _custom(document: dict[str, Any], name: str, port: int, instances: list[str]) -> None:
    document.setdefault("custom_endpoints", {})[name] = {"port": port, "instances": instances}


def _set_state(document: dict[str, Any], name: str, state: str) -> None:
    for instance in document["instances"]:
        if instance["name"] == name:
            instance["state"] = state


def _restore(routed: Routed) -> None:
    def change(document: dict[str, Any]) -> None:
        document["instances"] = [i for i in document["instances"] if i["name"] == "w1"]
        _set_state(document, "w1", "running")
        document["custom_endpoints"] = {}

    routed.edit_cluster(change)


def test_custom_endpoint_appears_without_restart(routed: Routed) -> None:
    port = routed.ports.allocate()
    routed.edit_cluster(lambda document: _custom(document, "olap", port, ["w1"]))
    try:

        def answers() -> bool:
            with psycopg.connect(**routed.kwargs(port), connect_timeout=2) as conn:
                return conn.execute("SELECT 7").fetchone() == (7,)

        wait_until(answers, 15, interval_s=0.1, what="the custom endpoint to answer")
    finally:
        _restore(routed)

    def refused() -> bool:
        try:
            psycopg.connect(**routed.kwargs(port), connect_timeout=2).close()
        except psycopg.OperationalError:
            return True
        return False

    wait_until(refused, 15, interval_s=0.1, what="the custom endpoint to close")


def test_idle_session_moves_and_transaction_stays(routed: Routed) -> None:
    port = routed.ports.allocate()

    def setup(document: dict[str, Any]) -> None:
        _alias(document, "w1b")
        _custom(document, "pair", port, ["w1", "w1b"])

    routed.edit_cluster(setup)
    try:
        wait_until(
            lambda: psycopg.connect(**routed.kwargs(port), connect_timeout=2).close() is None,
            15,
            interval_s=0.1,
            what="the pair endpoint",
        )
        wait_until(lambda: not routed.connections(), 10, what="no sessions left over")
        idle = psycopg.connect(**routed.kwargs(port), autocommit=True)
        busy: psycopg.Connection[Any] | None = None
        try:
            ((idle_on, _),) = routed.connections()
            busy = psycopg.connect(**routed.kwargs(port))
            # Least connections: the second session goes to the other name.
            busy_on = "w1b" if idle_on == "w1" else "w1"
            on = routed.connections()
            assert on == {(idle_on, "custom:pair"): 1, (busy_on, "custom:pair"): 1}, on
            assert idle.execute("SELECT 5 * 2", prepare=True).fetchone() == (10,)
            busy.execute("SELECT 1").fetchone()  # BEGIN: now inside a transaction
            routed.edit_cluster(lambda document: _set_state(document, busy_on, "draining"))
            # Once the router has seen the drain and reconsidered its sessions twice,
            # the busy session must still be where it was.
            passes = routed.metric("health_passes")
            wait_until(lambda: routed.metric("health_passes") >= passes + 2, 15, what="passes")
            assert routed.connections() == on
            # Inside its transaction the busy session keeps working where it is.
            assert busy.execute("SELECT 2").fetchone() == (2,)
            busy.commit()
            # Idle now: it moves.
            wait_until(
                lambda: routed.connections() == {(idle_on, "custom:pair"): 2},
                15,
                what="the committed session to move off the draining instance",
            )
            assert busy.execute("SELECT 3").fetchone() == (3,)
            busy.commit()
            # Now drain the idle session's instance (and bring the other back): it moves,
            # and the statement psycopg prepared before the move still works after it.
            routed.edit_cluster(
                lambda document: (
                    _set_state(document, busy_on, "running"),
                    _set_state(document, idle_on, "draining"),
                )
            )
            wait_until(
                lambda: routed.connections() == {(busy_on, "custom:pair"): 2},
                15,
                what="both sessions to move back",
            )
            assert idle.execute("SELECT 5 * 2", prepare=True).fetchone() == (10,)
            assert idle.execute("SELECT 4").fetchone() == (4,)
        finally:
            idle.close()
            if busy is not None:
                busy.close()
    finally:
        _restore(routed)


def test_idle_session_moves_transparently_for_asyncpg(routed: Routed) -> None:
    """asyncpg caches named prepared statements: after the move they still work."""
    port = routed.ports.allocate()

    def setup(document: dict[str, Any]) -> None:
        _alias(document, "w1c")
        _custom(document, "solo", port, ["w1c", "w1"])
        _set_state(document, "w1", "draining")

    async def run() -> None:
        conn = await asyncpg.connect(**_asyncpg_kwargs(routed, port))
        try:
            assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
            assert routed.connections() == {("w1c", "custom:solo"): 1}
            routed.edit_cluster(
                lambda document: (
                    _set_state(document, "w1", "running"),
                    _set_state(document, "w1c", "draining"),
                )
            )
            deadline = time.monotonic() + 15
            while routed.connections() != {("w1", "custom:solo"): 1}:
                assert time.monotonic() < deadline, routed.connections()
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT $1::int + 1", 2) == 3
        finally:
            await conn.close()

    routed.edit_cluster(setup)
    try:
        wait_until(
            lambda: psycopg.connect(**routed.kwargs(port), connect_timeout=2).close() is None,
            15,
            interval_s=0.1,
            what="the solo endpoint",
        )
        wait_until(lambda: not routed.connections(), 10, what="no sessions left over")
        asyncio.run(run())
    finally:
        _restore(routed)


def test_session_in_transaction_is_closed_when_its_instance_is_gone(routed: Routed) -> None:
    port = routed.ports.allocate()

    def setup(document: dict[str, Any]) -> None:
        _alias(document, "w1d")
        _custom(document, "gone", port, ["w1d"])

    routed.edit_cluster(setup)
    try:
        wait_until(
            lambda: psycopg.connect(**routed.kwargs(port), connect_timeout=2).close() is None,
            15,
            interval_s=0.1,
            what="the gone endpoint",
        )
        with psycopg.connect(**routed.kwargs(port)) as busy:
            busy.execute("SELECT 1").fetchone()
            routed.edit_cluster(
                lambda document: document.update(
                    instances=[i for i in document["instances"] if i["name"] != "w1d"]
                )
            )
            wait_until(
                lambda: ("w1d", "custom:gone") not in routed.connections(),
                15,
                what="the session on the removed instance to close",
            )
            with pytest.raises(psycopg.OperationalError) as raised:
                busy.execute("SELECT 2")
            assert "57P01" in str(raised.value.sqlstate) or "is gone" in str(raised.value)
    finally:
        _restore(routed)


def _run_task(routed: Routed, task: str) -> str:
    from borealis import rpc
    from proto import admin_pb2, admin_pb2_grpc

    async def run() -> str:
        async with rpc.channel(routed.router.address, 2**20) as channel:
            response = await admin_pb2_grpc.AdminStub(channel).RunTask(
                admin_pb2.RunTaskRequest(task=task), timeout=5
            )
        return str(response.summary)

    return asyncio.run(run())


def test_reader_endpoint_spreads_and_drain_moves_idle_sessions(routed: Routed) -> None:
    def setup(document: dict[str, Any]) -> None:
        _alias(document, "r1", role="reader")
        _alias(document, "r2", role="reader")

    routed.edit_cluster(setup)
    sessions: list[psycopg.Connection[Any]] = []
    try:
        # Once both readers are known and healthy, new sessions alternate over them.
        def on_readers() -> bool:
            with psycopg.connect(**routed.kwargs(routed.reader_port)):
                return routed.connections().get(("r1", "reader")) == 1

        wait_until(on_readers, 15, interval_s=0.1, what="the reader endpoint to use r1")
        wait_until(lambda: not routed.connections(), 10, what="the probe to close")
        sessions = [
            psycopg.connect(**routed.kwargs(routed.reader_port), autocommit=True) for _ in range(4)
        ]
        assert routed.connections() == {("r1", "reader"): 2, ("r2", "reader"): 2}
        assert "draining r1" in _run_task(routed, "drain:r1")
        wait_until(
            lambda: routed.connections() == {("r2", "reader"): 4},
            15,
            what="the idle sessions to move off r1",
        )
        for number, session in enumerate(sessions):
            assert session.execute("SELECT %s::int", (number,)).fetchone() == (number,)
        _run_task(routed, "undrain:r1")
    finally:
        for session in sessions:
            session.close()
        _restore(routed)


def test_real_reader_behind_the_reader_endpoint(routed: Routed) -> None:
    """A reader instance takes the reader endpoint's sessions (writes there get
    25006); draining it moves an idle session back to the writer."""
    with psycopg.connect(**routed.kwargs(routed.writer_port), autocommit=True) as writer:
        writer.execute("CREATE TABLE IF NOT EXISTS reader_t (id int PRIMARY KEY)")
        writer.execute("INSERT INTO reader_t VALUES (1) ON CONFLICT (id) DO NOTHING")
    reader = routed.cluster.add_reader()
    try:

        def on_reader() -> bool:
            with psycopg.connect(**routed.kwargs(routed.reader_port)):
                return routed.connections().get((reader.name, "reader")) == 1

        wait_until(on_reader, 20, interval_s=0.1, what="the reader endpoint to use the reader")
        wait_until(lambda: not routed.connections(), 10, what="the probe to close")
        with psycopg.connect(**routed.kwargs(routed.reader_port), autocommit=True) as session:
            assert routed.connections() == {(reader.name, "reader"): 1}
            wait_until(
                lambda: session.execute("SELECT count(*) FROM reader_t").fetchone() == (1,),
                20,
                what="the row on the reader",
            )
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                session.execute("INSERT INTO reader_t VALUES (2)")
            reader.state = "draining"
            routed.cluster.write_cluster_file()
            wait_until(
                lambda: routed.connections() == {("w1", "reader"): 1},
                15,
                what="the idle session to move to the writer",
            )
            assert session.execute("SELECT count(*) FROM reader_t").fetchone() == (1,)
    finally:
        routed.cluster.remove_instance(reader.name)


def test_idle_sessions_survive_a_writer_restart(routed: Routed) -> None:
    """An idle session reconnects to the writer once it is back (its prepared
    statements prepared again); one inside a transaction is closed."""
    idle = psycopg.connect(**routed.kwargs(routed.writer_port), autocommit=True)
    busy = psycopg.connect(**routed.kwargs(routed.writer_port))
    try:
        assert idle.execute("SELECT 6 * 7", prepare=True).fetchone() == (42,)
        busy.execute("SELECT 1").fetchone()
        routed.cluster.writer().restart()
        assert idle.execute("SELECT 6 * 7", prepare=True).fetchone() == (42,)
        assert idle.execute("SELECT count(*) FROM tx_t").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError) as raised:
            busy.execute("SELECT 2")
        assert raised.value.sqlstate in ("57P01", "08006", None), raised.value
    finally:
        idle.close()
        busy.close()


def test_a_new_login_waits_for_the_writer_to_come_back(routed: Routed) -> None:
    """A connection made while the writer is down is held (login_wait_ms) and
    served once the writer is back, instead of failing."""
    writer = routed.cluster.writer()
    writer.stop(immediate=True)
    connected: list[Any] = []

    def connect() -> None:
        try:
            with psycopg.connect(**routed.kwargs(routed.writer_port), autocommit=True) as conn:
                connected.append(conn.execute("SELECT 40 + 2").fetchone())
        except psycopg.Error as error:  # recorded for the assertion below
            connected.append(error)

    waiting = threading.Thread(target=connect)
    waiting.start()
    try:
        # Without the wait the router answers 57P03 at once; a second later the
        # login must still be held.
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not connected, connected
        writer.start()
    finally:
        waiting.join(timeout=60)
    assert connected == [(42,)], connected


def _pgbench(routed: Routed, port: int, *arguments: str) -> str:
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    environment = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": USER,
        "PGDATABASE": DATABASE,
        "PGPASSWORD": routed.password,
    }
    result = subprocess.run(
        [binary, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=PGBENCH_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _tps(output: str) -> float:
    found = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    assert found is not None, output
    return float(found.group(1))


def test_pgbench_select_only_through_the_router(routed: Routed) -> None:
    """pgbench -S -M prepared through the writer endpoint: every transaction succeeds
    and each client ran its share. (The router's overhead against a direct connection
    is measured by bench/replica_lag.py, not by a timed test.)"""
    _pgbench(routed, routed.writer_port, "-i", "-s", "1", "-q")
    transactions = 200
    run = ("-n", "-S", "-M", "prepared", "-c", "4", "-j", "2", "-t", str(transactions))
    output = _pgbench(routed, routed.writer_port, *run)
    assert re.search(r"^number of failed transactions: 0", output, re.MULTILINE), output
    processed = re.search(r"^number of transactions actually processed: (\d+)", output, re.M)
    assert processed is not None and int(processed.group(1)) == 4 * transactions, output
    assert _tps(output) > 0
