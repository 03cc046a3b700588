"""Sessions on the engine: commits/s and point selects/s through compute_node.engine.sessions.

What it expects: one process, CPU only (2+ cores), a local disk for the peer. The
volume is the in-memory MemoryPageSource, so the figures are the engine's and the
session layer's own cost (thread hops, routing, durability bookkeeping), the floor
under a real volume client. `wait_durable` is immediate, except in the "rtt" runs,
where a fake shipper makes every commit durable one simulated round trip
(--rtt-ms) after it was committed, in batches (group commit), as the volume
client's shipper does. The peer, in the same run, is plain SQLite through apsw on a
local file (WAL, synchronous=FULL), one connection per thread.

Measured (each for --seconds):
- single-row insert commits/s (autocommit) with 1 and 8 sessions;
- cache-hot point selects/s with 1 and 8 sessions, and with 4 sessions while a
  fifth inserts; with the default routing (autocommit reads on the writer while
  its queue is short) and with every read on a reader (writer_reads_max=0);
- the bare cost of one event loop -> thread -> event loop round trip;
- with the simulated round trip: inserts with 1 and 8 sessions, and an 8-session
  bank workload (read a balance, two updates) started with BEGIN (read on a
  reader, then moved or 40001) and with BEGIN IMMEDIATE (on the writer).

The last line printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import random
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import apsw  # noqa: E402

from bench import report  # noqa: E402
from borealis.errors import SerializationFailure  # noqa: E402
from borealis.ids import LSN_NONE, Lsn  # noqa: E402
from compute_node.engine.memory import MemoryPageSource  # noqa: E402
from compute_node.engine.sessions import Engine, Session  # noqa: E402

ROWS = 20_000
HOT_KEYS = 200
ACCOUNTS = 1000
SCHEMA = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price INTEGER)"
INSERT = "INSERT INTO item(name, price) VALUES(?, ?)"
SELECT = "SELECT name, price FROM item WHERE id = ?"


class FakeShipper:
    """wait_durable with a simulated round trip: every `rtt_s` the newest commit
    becomes durable (what was committed before the trip started)."""

    def __init__(self, source: MemoryPageSource, rtt_s: float) -> None:
        self._source = source
        self._rtt_s = rtt_s
        self.lsn_durable: Lsn = LSN_NONE
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._ship())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _ship(self) -> None:
        while True:
            lsn = self._source.lsn_newest()
            await asyncio.sleep(self._rtt_s)
            if lsn > self.lsn_durable:
                async with self._changed:
                    self.lsn_durable = lsn
                    self._changed.notify_all()

    async def wait_durable(self, lsn: Lsn) -> None:
        if lsn <= self.lsn_durable:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: self.lsn_durable >= lsn)


async def immediate(lsn: Lsn) -> None:
    return None


async def populate(session: Session) -> None:
    await session.execute(SCHEMA)
    await session.execute("CREATE TABLE account(id INTEGER PRIMARY KEY, balance INTEGER)")
    rng = random.Random(1)
    await session.execute("BEGIN IMMEDIATE")
    await session.executemany(
        "INSERT INTO item VALUES(?, ?, ?)",
        ((i, f"name-{rng.randrange(10**9):09d}", rng.randrange(10**6)) for i in range(ROWS)),
    )
    await session.executemany(
        "INSERT INTO account VALUES(?, 1000)", ((i,) for i in range(ACCOUNTS))
    )
    await session.execute("COMMIT")


async def timed(
    sessions: list[Session], seconds: float, step: Callable[[Session, int], Awaitable[int]]
) -> float:
    """Runs `step` in a loop on every session for `seconds`; operations per second."""
    deadline = time.perf_counter() + seconds
    counts = [0] * len(sessions)

    async def loop(index: int, session: Session) -> None:
        i = 0
        while time.perf_counter() < deadline:
            counts[index] += await step(session, i)
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(index, session) for index, session in enumerate(sessions)))
    return sum(counts) / (time.perf_counter() - start)


async def insert(session: Session, i: int) -> int:
    await session.execute(INSERT, (f"new-{i}", i))
    return 1


async def select(session: Session, i: int) -> int:
    key = (i * 97 + id(session)) % HOT_KEYS * 97 % ROWS
    rows = (await session.execute(SELECT, (key,))).rows
    assert len(rows) == 1
    return 1


def bank(immediate_begin: bool, stats: dict[str, int]) -> Callable[[Session, int], Awaitable[int]]:
    begin = "BEGIN IMMEDIATE" if immediate_begin else "BEGIN"
    rng = random.Random(7)

    async def transfer(session: Session, i: int) -> int:
        source, target = rng.sample(range(ACCOUNTS), 2)
        amount = rng.randrange(1, 20)
        await session.execute(begin)
        try:
            rows = (
                await session.execute("SELECT balance FROM account WHERE id = ?", (source,))
            ).rows
            if rows[0][0] >= amount:
                await session.execute(
                    "UPDATE account SET balance = balance - ? WHERE id = ?", (amount, source)
                )
                await session.execute(
                    "UPDATE account SET balance = balance + ? WHERE id = ?", (amount, target)
                )
            await session.execute("COMMIT")
            return 1
        except SerializationFailure:
            stats["serialization_failures"] += 1
            await session.execute("ROLLBACK")
            return 0

    return transfer


async def under_writes(writer: Session, readers: list[Session], seconds: float) -> float:
    """Selects/s of `readers` while `writer` inserts."""
    stop = time.perf_counter() + seconds

    async def background_inserts() -> None:
        i = 0
        while time.perf_counter() < stop:
            await insert(writer, i)
            i += 1

    writes = asyncio.create_task(background_inserts())
    selects = await timed(readers, seconds, select)
    await writes
    return selects


async def hop_us(count: int = 20_000) -> float:
    """Microseconds per bare round trip event loop -> thread -> event loop, the way
    the workers do it (SimpleQueue, call_soon_threadsafe): the floor per statement."""
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def serve() -> None:
        while (future := jobs.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=serve)
    thread.start()
    start = time.perf_counter()
    for _ in range(count):
        future = loop.create_future()
        jobs.put(future)
        await future
    elapsed = time.perf_counter() - start
    jobs.put(None)
    thread.join()
    return elapsed / count * 1e6


async def engine_figures(seconds: float, rtt_ms: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    source = MemoryPageSource()
    engine = await Engine.open(source, immediate, readers=2)
    try:
        first = engine.session()
        await populate(first)
        eight = [engine.session() for _ in range(8)]
        # Warm every connection's cache with the hot keys.
        for _ in range(3):
            await timed(eight, 0.05, select)
        figures["insert_1_per_s"] = await timed([first], seconds, insert)
        figures["insert_8_per_s"] = await timed(eight, seconds, insert)
        figures["select_1_per_s"] = await timed([first], seconds, select)
        figures["select_8_per_s"] = await timed(eight, seconds, select)
        figures["select_4_under_writes_per_s"] = await under_writes(first, eight[:4], seconds)
        figures["threads"] = threading.active_count()
    finally:
        await engine.close()

    # The alternative routing: every autocommit read on a reader.
    source = MemoryPageSource()
    engine = await Engine.open(source, immediate, readers=2, writer_reads_max=0)
    try:
        first = engine.session()
        await populate(first)
        eight = [engine.session() for _ in range(8)]
        for _ in range(3):
            await timed(eight, 0.05, select)
        figures["readers_select_1_per_s"] = await timed([first], seconds, select)
        figures["readers_select_8_per_s"] = await timed(eight, seconds, select)
        figures["readers_select_4_under_writes_per_s"] = await under_writes(
            first, eight[:4], seconds
        )
    finally:
        await engine.close()
    figures["hop_us"] = await hop_us()

    source = MemoryPageSource()
    shipper = FakeShipper(source, rtt_ms / 1000)
    engine = await Engine.open(source, shipper.wait_durable, readers=2)
    shipper.start()
    try:
        first = engine.session()
        await populate(first)
        eight = [engine.session() for _ in range(8)]
        figures["rtt_insert_1_per_s"] = await timed([first], seconds, insert)
        figures["rtt_insert_8_per_s"] = await timed(eight, seconds, insert)
        for immediate_begin in (False, True):
            name = "rtt_bank_8_immediate" if immediate_begin else "rtt_bank_8_deferred"
            stats = {"serialization_failures": 0}
            figures[f"{name}_per_s"] = await timed(eight, seconds, bank(immediate_begin, stats))
            figures[f"{name}_40001_per_s"] = stats["serialization_failures"] / seconds
        total = (await first.execute("SELECT sum(balance) FROM account")).rows[0][0]
        assert total == ACCOUNTS * 1000, total
    finally:
        await shipper.stop()
        await engine.close()
    return figures


def plain_figures(seconds: float, directory: Path) -> dict[str, float]:
    """Plain SQLite on a local file, WAL, synchronous=FULL; one connection per thread."""
    path = str(directory / "plain.db")

    def connect() -> apsw.Connection:
        sqlite = apsw.Connection(path)
        sqlite.set_busy_timeout(10_000)
        sqlite.pragma("journal_mode", "WAL")
        sqlite.pragma("synchronous", "FULL")
        return sqlite

    sqlite = connect()
    sqlite.execute(SCHEMA)
    rng = random.Random(1)
    with sqlite:
        sqlite.executemany(
            "INSERT INTO item VALUES(?, ?, ?)",
            ((i, f"name-{rng.randrange(10**9):09d}", rng.randrange(10**6)) for i in range(ROWS)),
        )
    sqlite.close()

    def run_threads(threads: int, work: Callable[[apsw.Connection, int], None]) -> float:
        deadline = time.perf_counter() + seconds
        counts = [0] * threads

        def loop(index: int) -> None:
            connection = connect()
            i = 0
            while time.perf_counter() < deadline:
                work(connection, i * threads + index)
                i += 1
            counts[index] = i
            connection.close()

        start = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(index,)) for index in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(counts) / (time.perf_counter() - start)

    def plain_insert(connection: apsw.Connection, i: int) -> None:
        connection.execute(INSERT, (f"new-{i}", i))

    def plain_select(connection: apsw.Connection, i: int) -> None:
        rows = connection.execute(SELECT, (i * 97 % HOT_KEYS * 97 % ROWS,)).fetchall()
        assert len(rows) == 1

    return {
        "plain_insert_1_per_s": run_threads(1, plain_insert),
        "plain_insert_8_per_s": run_threads(8, plain_insert),
        "plain_select_1_per_s": run_threads(1, plain_select),
        "plain_select_8_per_s": run_threads(8, plain_select),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rtt-ms", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="1 second per figure")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--repeats", type=int, default=1, help="keep each figure's best of this many runs"
    )
    arguments = parser.parse_args()
    seconds = 1.0 if arguments.quick else arguments.seconds
    figures: dict[str, float] = {}
    for _ in range(arguments.repeats):
        if arguments.uvloop:
            import uvloop

            run = uvloop.run(engine_figures(seconds, arguments.rtt_ms))
        else:
            run = asyncio.run(engine_figures(seconds, arguments.rtt_ms))
        with tempfile.TemporaryDirectory() as directory:
            run.update(plain_figures(seconds, Path(directory)))
        for name, value in run.items():
            # The least disturbed run: the machine is shared.
            lower_is_better = name.endswith(("40001_per_s", "_us"))
            best = figures.get(name, value)
            figures[name] = min(best, value) if lower_is_better else max(best, value)
    figures["ratio_insert_1"] = figures["insert_1_per_s"] / figures["plain_insert_1_per_s"]
    figures["ratio_insert_8"] = figures["insert_8_per_s"] / figures["plain_insert_8_per_s"]
    figures["ratio_select_1"] = figures["select_1_per_s"] / figures["plain_select_1_per_s"]
    figures = {name: round(value, 3) for name, value in figures.items()}
    for name, value in figures.items():
        print(f"{name:40s} {value:>12,.2f}")
    records = [
        report.record(
            name,
            value,
            "ratio"
            if name.startswith("ratio")
            else "count"
            if name == "threads"
            else "us"
            if name.endswith("_us")
            else "ops/s",
            not name.endswith(("40001_per_s", "_us")) and name != "threads",
        )
        for name, value in figures.items()
    ]
    report.write(
        "sessions",
        records,
        {
            name: figures[name]
            for name in (
                "insert_8_per_s",
                "plain_insert_8_per_s",
                "select_1_per_s",
                "plain_select_1_per_s",
            )
        },
        "ops/s",
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
