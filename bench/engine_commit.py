"""Transactions on the distributed volume against plain SQLite, in the same run.

What it expects: six storage node processes on this machine (started here, two
per AZ) and this process as the writer instance (volume client, engine, sessions),
on two shared cores. The peer is plain SQLite through APSW on a local file with
WAL and synchronous=FULL (an fsync per commit), the same schema and statements.

Figures: single-row insert transactions/s with 1 and 8 concurrent sessions, each
commit acknowledged only once durable at 4/6 (VDL past its CPL); cache-hot point
selects/s with 1 session. The last line printed is one JSON object with the
figures and the ratios `ratio_commit_1`, `ratio_commit_8`, `ratio_select`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import apsw  # noqa: E402
import uvloop  # noqa: E402

from bench import report  # noqa: E402
from borealis.ids import VolumeId  # noqa: E402
from compute_node.engine.sessions import Engine  # noqa: E402
from compute_node.volume.config import VolumeConfig  # noqa: E402
from compute_node.volume.volume import Volume  # noqa: E402
from deploy.local import LocalCluster  # noqa: E402
from storage_node.segment import Member  # noqa: E402

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER)"
INSERT = "INSERT INTO t (v, n) VALUES (?, ?)"
SELECT = "SELECT v, n FROM t WHERE id = ?"
HOT_ROWS = 2000


async def timed(duration_s: float, sessions: int, work: Callable[[int], Awaitable[None]]) -> float:
    """Operations per second of `sessions` loops calling work(i) for `duration_s`."""
    done = 0
    stop_at = time.perf_counter() + duration_s

    async def loop(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await work(index)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(index) for index in range(sessions)))
    return done / (time.perf_counter() - start)


async def run_borealis(cluster: LocalCluster, duration_s: float) -> dict[str, float]:
    nodes = [Member(node.name, node.address, node.az) for node in cluster.storage_nodes]
    volume = await Volume.create(VolumeId(1), nodes, VolumeConfig(pages_per_pg=1024))
    engine = await Engine.open(volume, volume.wait_durable)
    sessions = [engine.session() for _ in range(8)]
    try:
        await sessions[0].execute(SCHEMA)
        await sessions[0].execute("BEGIN IMMEDIATE")
        await sessions[0].executemany(INSERT, [(f"row {i}", i) for i in range(HOT_ROWS)])
        await sessions[0].execute("COMMIT")
        payload = "x" * 100

        async def insert(index: int) -> None:
            await sessions[index].execute(INSERT, (payload, index))

        async def select(index: int) -> None:
            await sessions[index].execute(SELECT, (random.randint(1, HOT_ROWS),))

        figures = {
            "commit_1_per_s": await timed(duration_s, 1, insert),
            "commit_8_per_s": await timed(duration_s, 8, insert),
        }
        for _ in range(3):  # warm the caches
            await timed(0.3, 1, select)
        figures["select_per_s"] = await timed(duration_s, 1, select)
        stats = volume.metrics()
        figures["rpcs_per_segment_per_commit"] = stats["rpcs_per_segment_per_commit"]
        figures["redo_bytes_per_commit"] = stats["redo_bytes_per_commit"]
        figures["dirty_bytes_per_commit"] = stats["dirty_bytes_per_commit"]
        return figures
    finally:
        for session in sessions:
            await session.close()
        await engine.close()
        await volume.close()


def run_sqlite(path: Path, duration_s: float) -> dict[str, float]:
    """The peer: threads with their own connections (SQLite serialises the writers)."""

    def connect() -> apsw.Connection:
        connection = apsw.Connection(str(path))
        connection.setbusytimeout(10_000)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    setup = connect()
    setup.execute(SCHEMA)
    with setup:
        setup.executemany(INSERT, [(f"row {i}", i) for i in range(HOT_ROWS)])

    def threaded(threads: int, work: Callable[[apsw.Connection, int], None]) -> float:
        done = [0] * threads
        stop_at = time.perf_counter() + duration_s

        def loop(index: int) -> None:
            connection = connect()
            while time.perf_counter() < stop_at:
                work(connection, index)
                done[index] += 1
            connection.close()

        workers = [threading.Thread(target=loop, args=(index,)) for index in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(done) / (time.perf_counter() - start)

    payload = "x" * 100

    def insert(connection: apsw.Connection, index: int) -> None:
        connection.execute(INSERT, (payload, index))

    def select(connection: apsw.Connection, index: int) -> None:
        connection.execute(SELECT, (random.randint(1, HOT_ROWS),)).fetchall()

    return {
        "commit_1_per_s": threaded(1, insert),
        "commit_8_per_s": threaded(8, insert),
        "select_per_s": threaded(1, select),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (under 60 s)")
    args = parser.parse_args()
    duration_s = 5.0 if args.quick else 20.0
    print(
        "engine_commit: 6 storage nodes + this writer on 2 shared cores vs plain SQLite "
        f"(WAL, synchronous=FULL); {duration_s:.0f}s per figure",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="borealis-bench-"))
    try:
        sqlite = run_sqlite(work / "plain.db", duration_s)
        print(f"plain SQLite: {json.dumps({k: round(v) for k, v in sqlite.items()})}", flush=True)
        cluster = LocalCluster(work / "cluster", storage_overrides={"log_level": "warning"})
        try:
            cluster.start()
            borealis = uvloop.run(run_borealis(cluster, duration_s))
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "commit_1_per_s": round(borealis["commit_1_per_s"], 1),
        "commit_8_per_s": round(borealis["commit_8_per_s"], 1),
        "select_per_s": round(borealis["select_per_s"], 1),
        "rpcs_per_segment_per_commit": round(borealis["rpcs_per_segment_per_commit"], 3),
        "redo_bytes_per_commit": round(borealis["redo_bytes_per_commit"]),
        "dirty_bytes_per_commit": round(borealis["dirty_bytes_per_commit"]),
        "sqlite_commit_1_per_s": round(sqlite["commit_1_per_s"], 1),
        "sqlite_commit_8_per_s": round(sqlite["commit_8_per_s"], 1),
        "sqlite_select_per_s": round(sqlite["select_per_s"], 1),
        "ratio_commit_1": round(borealis["commit_1_per_s"] / sqlite["commit_1_per_s"], 3),
        "ratio_commit_8": round(borealis["commit_8_per_s"] / sqlite["commit_8_per_s"], 3),
        "ratio_select": round(borealis["select_per_s"] / sqlite["select_per_s"], 3),
    }
    report.write(
        "engine_commit",
        [
            report.record("engine_commit_1_per_s", summary["commit_1_per_s"], "tx/s", True),
            report.record("engine_commit_8_per_s", summary["commit_8_per_s"], "tx/s", True),
            report.record("engine_select_per_s", summary["select_per_s"], "selects/s", True),
            report.record("engine_ratio_commit_8", summary["ratio_commit_8"], "ratio", True),
            report.record("engine_ratio_select", summary["ratio_select"], "ratio", True),
        ],
        {
            "commit x8": summary["commit_8_per_s"],
            "SQLite commit x8": summary["sqlite_commit_8_per_s"],
        },
        "transactions/s",
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
