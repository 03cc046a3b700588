"""The PostgreSQL endpoint the client-compatibility tests run against.

BOREALIS_PG_TARGET chooses the server behind the `pg_endpoint` fixture:

- `postgres`: a throwaway PostgreSQL 15 (deploy/postgres.py). This proves the tests
  themselves right: whatever passes there is what PostgreSQL does.
- `borealis`: a local Borealis cluster with a writer instance (deploy/local.py),
  reached through the writer endpoint that cluster.json names.

The tests import `pg_endpoint` (and `table_name`) from here, so no conftest change
is needed; each importing module gets its own server (module scope), started once
for all of its tests.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import pytest

from deploy.ports import PortAllocator
from deploy.postgres import LocalPostgres

TARGET_VARIABLE = "BOREALIS_PG_TARGET"
# The suite proves Borealis behaves as PostgreSQL; BOREALIS_PG_TARGET=postgres runs
# the same tests against a real PostgreSQL 15 to prove the tests themselves right.
TARGET_DEFAULT = "borealis"
TARGETS = ("postgres", "borealis")
TEST_USER = "borealis_test"
TEST_PASSWORD = "correct horse battery staple"
TEST_DBNAME = "borealis_test"


def pg_target() -> str:
    target = os.environ.get(TARGET_VARIABLE, TARGET_DEFAULT).strip().lower()
    if target not in TARGETS:
        raise ValueError(f"{TARGET_VARIABLE}={target!r}: expected one of {TARGETS}")
    return target


class Server(Protocol):
    """What an endpoint needs of the server behind it."""

    def restart(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class PgEndpoint:
    """Where and as whom to connect; `restart()` stops and starts the server behind it."""

    target: str
    host: str
    port: int
    user: str
    password: str
    dbname: str
    server: Any = field(repr=False)

    @property
    def url(self) -> str:
        """postgresql://user:password@host:port/dbname."""
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(self.dbname)}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg://", 1)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
            "sslmode": "disable",
            "connect_timeout": 10,
        }

    def asyncpg_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for asyncpg.connect."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.dbname,
            "ssl": False,
            "timeout": 10,
        }

    def libpq_env(self) -> dict[str, str]:
        """The environment for psql and pgbench: PGHOST, PGPASSWORD and the rest."""
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
            # psql must not read the invoking user's ~/.psqlrc or pager settings.
            "PSQLRC": os.devnull,
            "PAGER": "cat",
            "PSQL_PAGER": "cat",
        }

    def restart(self) -> None:
        self.server.restart()
        self._refresh()

    def _refresh(self) -> None:
        """Re-reads where the server listens (a Borealis restart may move it)."""
        if isinstance(self.server, BorealisServer):
            self.host, self.port = self.server.writer_address()


class BorealisServer:
    """A local Borealis cluster with a writer instance, for the `borealis` target.

    WAITING FOR THE LEAD to declare the writer endpoint done (then TARGET_DEFAULT
    becomes "borealis"). It reads the endpoint the way a user does, from
    cluster.json (endpoints.writer = postgresql://USER@HOST:PORT/DBNAME, `user`,
    `password_file` of mode 0600), which LocalCluster(writer=True).start() writes
    with a generated admin password as `borealis up` does. Starting the cluster and
    logging in work; what the SQL front answers is what the tests check.
    """

    def __init__(self, directory: Path, ports: PortAllocator) -> None:
        # Imported here: the postgres target needs none of the cluster code.
        from deploy.local import LocalCluster

        self.cluster = LocalCluster(
            directory,
            ports=ports,
            storage_overrides=_fast_storage(),
            writer=True,
        )

    def start(self) -> BorealisServer:
        self.cluster.start()
        return self

    def stop(self) -> None:
        self.cluster.stop()

    def restart(self) -> None:
        """As `borealis down` then `borealis up`: every process stops and starts again."""
        self.cluster.stop()
        self.cluster.start()

    def _document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.cluster.data_dir / "cluster.json").read_text())
        return document

    def writer_address(self) -> tuple[str, int]:
        parts = urlsplit(self._document()["endpoints"]["writer"])
        assert parts.hostname is not None and parts.port is not None, parts
        return parts.hostname, parts.port

    def endpoint(self) -> PgEndpoint:
        document = self._document()
        parts = urlsplit(document["endpoints"]["writer"])
        password_file = Path(document["password_file"])
        assert password_file.stat().st_mode & 0o077 == 0, "password_file must be mode 0600"
        assert parts.hostname is not None and parts.port is not None, parts
        return PgEndpoint(
            target="borealis",
            host=parts.hostname,
            port=parts.port,
            user=document["user"],
            password=password_file.read_text().strip(),
            dbname=unquote(parts.path.lstrip("/")) or document["database"],
            server=self,
        )


def _fast_storage() -> dict[str, Any]:
    from tests.conftest import FAST_STORAGE  # The same short intervals as other cluster tests.

    return dict(FAST_STORAGE)


def start_endpoint(directory: Path, ports: PortAllocator) -> PgEndpoint:
    """Starts the chosen target's server in `directory`; the caller stops it."""
    if pg_target() == "borealis":
        return BorealisServer(directory, ports).start().endpoint()
    server = LocalPostgres(
        directory, user=TEST_USER, password=TEST_PASSWORD, dbname=TEST_DBNAME, ports=ports
    ).start()
    return PgEndpoint(
        target="postgres",
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=server.dbname,
        server=server,
    )


@pytest.fixture(scope="module")
def pg_endpoint(
    tmp_path_factory: pytest.TempPathFactory, port_allocator: PortAllocator
) -> Iterator[PgEndpoint]:
    """A running server of the chosen target, shared by one test module."""
    directory = tmp_path_factory.mktemp(f"pg-{pg_target()}")
    endpoint = start_endpoint(directory, port_allocator)
    try:
        yield endpoint
    finally:
        endpoint.server.stop()


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A table name no other test uses, so tests sharing a server never collide."""
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:30]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


# A client-compatibility test that runs longer than this is blocked on a server that
# stopped answering; a module may set its own TEST_DEADLINE_S (pgbench does).
TEST_DEADLINE_S = 120.0


class DeadlineExceeded(Exception):
    """Raised in the test's thread when it runs past its deadline."""


@pytest.fixture(autouse=True)
def deadline_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Interrupts a test blocked on a silent server with SIGALRM (psycopg and asyncpg
    both return to Python on a signal), so it fails and the fixtures still stop every
    server, instead of hanging the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seconds = float(getattr(request.module, "TEST_DEADLINE_S", TEST_DEADLINE_S))

    def expire(signum: int, frame: object) -> None:
        raise DeadlineExceeded(f"test ran past {seconds:.0f}s: is the server answering?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
