"""Fencing (issue 6 must-hold 3): once a new writer has opened the volume, an old
writer cannot commit anything. Storage refuses its epoch, its commits fail with
WriterFenced, every later commit fails too, and nothing it tried becomes visible.

Two forms: two volumes in this process on real storage nodes, and a real writer
instance that is partitioned (SIGSTOP) while a new writer opens the volume, then
resumes with clients connected to it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from borealis.errors import WriterFenced
from borealis.ids import VolumeId
from borealis.wait import wait_until
from compute_node.volume.config import VolumeConfig
from compute_node.volume.volume import Volume
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.integration.test_volume import (
    LoopThread,
    Writer,
    create_schema,
    digest,
    expected_digest,
    insert_rows,
    integrity,
    loop_thread,
    row,
)
from tests.support.storage import members

__all__ = ["loop_thread"]

pytestmark = pytest.mark.integration

OLD_WRITER_ATTEMPTS = 20


def try_commit(writer: Writer, index: int) -> BaseException | None:
    """One commit of row `index` on `writer`, waiting for durability; the error, if any."""
    try:
        writer.sqlite.execute("INSERT INTO item VALUES(?, ?, ?)", row(index))
        writer.volume.wait_durable_blocking(writer.connection.file.lsn_commit_last, 10.0)
    except BaseException as error:  # noqa: BLE001 - the test inspects it
        return error
    return None


def test_after_a_second_writer_opens_the_first_commits_nothing(
    storage_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    old = Writer.create(loop_thread, storage_cluster)
    new: Writer | None = None
    third: Writer | None = None
    try:
        create_schema(old)
        insert_rows(old, 0, 300)
        new = Writer.open(loop_thread, storage_cluster)
        errors = [try_commit(old, 1000 + index) for index in range(OLD_WRITER_ATTEMPTS)]
        # Every commit fails: the first when storage refuses its appends, the later
        # ones at once (the volume is fenced). SQLite may wrap the admit's error.
        assert all(error is not None for error in errors), errors
        assert isinstance(old.volume.shipper.fenced, WriterFenced)
        assert old.volume.vdl <= new.volume.recovered.vdl  # type: ignore[union-attr]
        # Storage reads are refused too: it must stop serving as the writer.
        with pytest.raises(WriterFenced):
            old.volume.read_page(10**6, old.volume.vdl)
        # Nothing the old writer tried is visible to the new one, and the new one writes.
        assert digest(new) == expected_digest(300)
        insert_rows(new, 300, 100)
        assert digest(new) == expected_digest(400)
    finally:
        old.close()
        if new is not None:
            new.close()
    third = Writer.open(loop_thread, storage_cluster)
    try:
        assert digest(third) == expected_digest(400)
        assert integrity(third) == "ok"
    finally:
        third.close()


# -- a real writer instance, partitioned while a new writer takes over --------------------


@pytest.fixture
def writer_cluster(tmp_path: Any, port_allocator: PortAllocator) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path / "cluster",
        ports=port_allocator,
        storage_overrides=FAST_STORAGE,
        writer=True,
        instance_overrides={"pages_per_pg": 256},
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop(immediate=True)


def connect(cluster: LocalCluster) -> psycopg.Connection[Any]:
    return psycopg.connect(
        cluster.writer().url(), password=cluster.password, autocommit=True, connect_timeout=10
    )


def attempt(connect_once: Callable[[], psycopg.Connection[Any]], sql: str) -> str:
    """Runs one statement on a fresh connection; the SQLSTATE it failed with, or ""."""
    try:
        with connect_once() as connection:
            connection.execute("SET statement_timeout = '20s'")
            connection.execute(sql)
    except psycopg.Error as error:
        return error.sqlstate or type(error).__name__
    return ""


def test_a_partitioned_old_writer_instance_cannot_commit_after_the_new_epoch(
    writer_cluster: LocalCluster, loop_thread: LoopThread
) -> None:
    with connect(writer_cluster) as connection:
        connection.execute("CREATE TABLE account(id integer PRIMARY KEY, note text)")
        for index in range(50):
            connection.execute("INSERT INTO account VALUES (%s, 'before')", (index,))
        # An open session that resumes after the partition.
        session = connect(writer_cluster)
    instance = writer_cluster.writer()
    instance.signal(signal.SIGSTOP)
    new: Writer | None = None
    try:
        volume = loop_thread.run(
            Volume.open(
                VolumeId(1),
                members(writer_cluster),
                VolumeConfig(node_wait_ms=500.0, control_rpc_timeout_ms=2000.0),
            )
        )
        new = Writer(loop_thread, volume)
    finally:
        instance.signal(signal.SIGCONT)
    try:
        session_states = []
        for index in range(50, 55):
            try:
                session.execute("INSERT INTO account VALUES (%s, 'old writer')", (index,))
                session_states.append("")
            except psycopg.Error as error:
                session_states.append(error.sqlstate or type(error).__name__)
                if session.closed:
                    break
        # Every commit the resumed old writer was asked for failed with the fencing
        # SQLSTATE 25006, as PostgreSQL answers a write on a server no longer primary.
        assert session_states, session_states
        assert all(state == "25006" for state in session_states), session_states
        # It steps down by itself: the process exits (a supervisor would start it
        # again as a reader).
        wait_until(lambda: not instance.is_running(), 30, what="the fenced writer exits")
        assert "stepping down" in instance.log_path.read_text()
        fresh_states = [
            attempt(
                lambda: connect(writer_cluster),
                f"INSERT INTO account VALUES ({index}, 'old writer')",
            )
            for index in range(60, 63)
        ]
        assert all(fresh_states), fresh_states
        # None of them is visible to the new writer, which commits.
        rows = new.sqlite.execute("SELECT id, note FROM account ORDER BY id").fetchall()
        assert rows == [(index, "before") for index in range(50)]
        new.commit_durable("INSERT INTO account VALUES (50, 'new writer')")
        assert new.sqlite.execute("SELECT count(*) FROM account").fetchone() == (51,)
    finally:
        session.close()
        if new is not None:
            new.close()
