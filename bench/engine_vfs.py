"""The volume VFS's per-statement cost: callbacks and microseconds, and the redo diff.

What it expects: one process, CPU only; no network and no disk (the volume is the
in-memory MemoryPageSource, so the figures are the engine's own cost, the floor
under any real volume client). The peer, in the same run, is plain SQLite in
memory (memdb VFS, C only) with the same settings. Timings are the best of several
repeats: the machine is shared, and the minimum is the least disturbed run.

Measured:
- VFS callbacks per cache-hot point select and per single-row insert commit, for
  the writer in locking_mode EXCLUSIVE and NORMAL, and for a read-only connection
  (NORMAL) with and without an open read transaction;
- microseconds per statement for the same cases and for plain SQLite;
- microseconds per diffed page: the old per-byte loop against borealis.redo.diff,
  on before/after pages of real SQLite commits (row updates and row inserts).

The last line printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import apsw  # noqa: E402

from bench import report  # noqa: E402
from borealis import redo  # noqa: E402
from compute_node.engine import (  # noqa: E402
    EngineConnection,
    LockingMode,
    VolumeFile,
    VolumeVFS,
    open_connection,
)
from compute_node.engine.diagnostics import CountingVolumeFile, CountingVolumeVFS  # noqa: E402
from compute_node.engine.memory import MemoryPageSource  # noqa: E402
from tests.support.reference_diff import reference_diff  # noqa: E402

ROWS = 20_000
SCHEMA = (
    "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price INTEGER, note TEXT);"
    "CREATE INDEX item_name ON item(name)"
)


def populate(sqlite: apsw.Connection) -> None:
    sqlite.execute(SCHEMA)
    rng = random.Random(1)
    with sqlite:
        sqlite.executemany(
            "INSERT INTO item VALUES(?, ?, ?, ?)",
            (
                (
                    i,
                    f"name-{rng.randrange(10**9):09d}",
                    rng.randrange(10**6),
                    "n" * rng.randrange(60),
                )
                for i in range(ROWS)
            ),
        )


class Workload:
    """Point selects over a hot key set, and single-row inserts above the table."""

    def __init__(self, sqlite: apsw.Connection, hot_keys: int = 200) -> None:
        self.sqlite = sqlite
        self.hot = [key * 97 % ROWS for key in range(hot_keys)]
        self.next_row = ROWS * 10

    def select(self, index: int) -> object:
        return self.sqlite.execute(
            "SELECT name, price FROM item WHERE id = ?", (self.hot[index % len(self.hot)],)
        ).fetchall()

    def insert(self, index: int) -> object:
        self.next_row += 1
        return self.sqlite.execute(
            "INSERT INTO item VALUES(?, ?, 1, 'x')", (self.next_row, f"z-{self.next_row}")
        )


def best_us_per_call(
    cases: dict[str, Callable[[int], object]], count: int, repeats: int
) -> dict[str, float]:
    """Microseconds per call of each case: the best of `repeats` rounds, the cases
    interleaved within each round so that a busy moment of the machine hits all."""
    for call in cases.values():
        for index in range(count):  # warm the caches
            call(index)
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, call in cases.items():
            started = time.perf_counter()
            for index in range(count):
                call(index)
            best[name] = min(best[name], (time.perf_counter() - started) / count)
    return {name: round(seconds * 1e6, 2) for name, seconds in best.items()}


def callbacks_per_call(
    vfs: CountingVolumeVFS, connection: EngineConnection, call: Callable[[int], object], count: int
) -> dict[str, float]:
    for index in range(count):
        call(index)
    file = connection.file
    assert isinstance(file, CountingVolumeFile)
    file.calls.clear()
    vfs.calls.clear()
    for index in range(count):
        call(index)
    total: Counter[str] = file.calls + vfs.calls
    counts = {name: round(calls / count, 2) for name, calls in sorted(total.items())}
    counts["total"] = round(total.total() / count, 2)
    return counts


def engine_setup(
    counting: bool, writer_mode: LockingMode
) -> tuple[VolumeVFS, EngineConnection, EngineConnection]:
    source = MemoryPageSource()
    vfs: VolumeVFS = CountingVolumeVFS(source) if counting else VolumeVFS(source)
    writer = open_connection(vfs, writable=True, locking_mode=writer_mode, cache_pages=4000)
    populate(writer.sqlite)
    reader = open_connection(vfs, writable=False, locking_mode=LockingMode.NORMAL, cache_pages=4000)
    return vfs, writer, reader


def measure_callbacks(count: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for mode in LockingMode:
        vfs, writer, reader = engine_setup(True, mode)
        assert isinstance(vfs, CountingVolumeVFS)
        name = mode.value.lower()
        results[f"writer_{name}_select"] = callbacks_per_call(
            vfs, writer, Workload(writer.sqlite).select, count
        )
        results[f"writer_{name}_insert"] = callbacks_per_call(
            vfs, writer, Workload(writer.sqlite).insert, count
        )
        if mode == LockingMode.EXCLUSIVE:
            results["reader_normal_select"] = callbacks_per_call(
                vfs, reader, Workload(reader.sqlite).select, count
            )
            reader.sqlite.execute("BEGIN")
            results["reader_in_transaction_select"] = callbacks_per_call(
                vfs, reader, Workload(reader.sqlite).select, count
            )
            reader.sqlite.execute("COMMIT")
    return results


def measure_timings(count: int, repeats: int) -> dict[str, float]:
    cases: dict[str, Callable[[int], object]] = {}
    for mode in LockingMode:
        _, writer, _ = engine_setup(False, mode)
        name = mode.value.lower()
        cases[f"writer_{name}_select_us"] = Workload(writer.sqlite).select
        cases[f"writer_{name}_insert_us"] = Workload(writer.sqlite).insert
    # Readers on a volume of their own, so that no commit moves their read point
    # (which would drop their page cache and keep old versions for the open one).
    vfs, _, reader = engine_setup(False, LockingMode.EXCLUSIVE)
    cases["reader_normal_select_us"] = Workload(reader.sqlite).select
    in_transaction = open_connection(
        vfs, writable=False, locking_mode=LockingMode.NORMAL, cache_pages=4000
    )
    in_transaction.sqlite.execute("BEGIN")
    cases["reader_in_transaction_select_us"] = Workload(in_transaction.sqlite).select
    plain = apsw.Connection(
        "file:/plain?vfs=memdb",
        flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
    )
    for pragma in ("journal_mode=MEMORY", "temp_store=MEMORY", "synchronous=OFF"):
        plain.execute(f"PRAGMA {pragma}")
    plain.execute("PRAGMA locking_mode=EXCLUSIVE")
    populate(plain)
    cases["plain_sqlite_select_us"] = Workload(plain).select
    cases["plain_sqlite_insert_us"] = Workload(plain).insert
    timings = best_us_per_call(cases, count, repeats)
    in_transaction.sqlite.execute("COMMIT")
    return timings


# -- the diff ----------------------------------------------------------------------------


class PairsFile(VolumeFile):
    """Collects (committed image, new image) of every page a commit diffs."""

    pairs: list[tuple[str, bytes, bytes]] = []
    label = ""

    def _changes(self):  # type: ignore[no-untyped-def]
        changes, old_images = super()._changes()
        for write in changes.pages:
            if write.page in old_images:
                PairsFile.pairs.append((PairsFile.label, old_images[write.page], write.image))
        return changes, old_images


def real_page_pairs(updates: int) -> dict[str, list[tuple[bytes, bytes]]]:
    PairsFile.pairs = []
    vfs = VolumeVFS(MemoryPageSource(), file_class=PairsFile)
    writer = open_connection(vfs, writable=True, locking_mode=LockingMode.EXCLUSIVE)
    populate(writer.sqlite)
    rng = random.Random(2)
    PairsFile.label = "update"
    for _ in range(updates):
        writer.sqlite.execute(
            "UPDATE item SET price = ? WHERE id = ?", (rng.randrange(10**6), rng.randrange(ROWS))
        )
    PairsFile.label = "insert"
    for row in range(updates):
        writer.sqlite.execute(
            "INSERT INTO item VALUES(?, ?, 5, 'abc')",
            (ROWS * 10 + row, f"name-{rng.randrange(10**9):09d}"),
        )
    pairs: dict[str, list[tuple[bytes, bytes]]] = {"update": [], "insert": []}
    for label, old, new in PairsFile.pairs:
        if label in pairs:  # not the pages of populate()
            pairs[label].append((old, new))
    return pairs


def diff_us_per_page(
    diff: Callable[[bytes, bytes], object], pairs: list[tuple[bytes, bytes]], repeats: int
) -> float:
    """Median over pages of the best time per page."""
    per_page = []
    for old, new in pairs:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            diff(old, new)
            best = min(best, time.perf_counter() - started)
        per_page.append(best * 1e6)
    return statistics.median(per_page)


def measure_diff(updates: int, repeats: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for label, pairs in real_page_pairs(updates).items():
        changed = [sum(len(data) for _, data in redo.diff(old, new)) for old, new in pairs]
        results[f"diff_{label}_pages"] = len(pairs)
        results[f"diff_{label}_changed_bytes_median"] = statistics.median(changed)
        results[f"diff_{label}_per_byte_loop_us"] = round(
            diff_us_per_page(reference_diff, pairs, max(2, repeats // 3)), 2
        )
        results[f"diff_{label}_fast_us"] = round(diff_us_per_page(redo.diff, pairs, repeats), 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (under 60 s)")
    arguments = parser.parse_args()
    count, repeats, updates = (500, 3, 100) if arguments.quick else (3000, 7, 400)

    callbacks = measure_callbacks(count // 5)
    for name, counts in callbacks.items():
        print(f"callbacks {name:32s} {counts}")
    timings = measure_timings(count, repeats)
    for name, value in timings.items():
        print(f"time      {name:32s} {value:8.2f} us")
    diffs = measure_diff(updates, repeats)
    for name, value in diffs.items():
        print(f"diff      {name:32s} {value}")

    records = [
        report.record(f"callbacks_{name}", counts["total"], "callbacks", False)
        for name, counts in callbacks.items()
    ]
    records += [report.record(name, value, "us", False) for name, value in timings.items()]
    records += [
        report.record(name, value, "us" if name.endswith("_us") else "count", False)
        for name, value in diffs.items()
    ]
    # Short labels: the shared chart is narrow. X = EXCLUSIVE writer, N = NORMAL
    # writer, R = reading connection, P = plain SQLite.
    chart = {
        "sel X": timings["writer_exclusive_select_us"],
        "sel N": timings["writer_normal_select_us"],
        "sel R": timings["reader_normal_select_us"],
        "sel P": timings["plain_sqlite_select_us"],
        "ins X": timings["writer_exclusive_insert_us"],
        "ins N": timings["writer_normal_insert_us"],
        "ins P": timings["plain_sqlite_insert_us"],
    }
    report.write("engine_vfs", records, chart, "us per statement")
    headline = {
        "callbacks_select_exclusive": callbacks["writer_exclusive_select"]["total"],
        "callbacks_select_normal": callbacks["writer_normal_select"]["total"],
        "callbacks_insert_exclusive": callbacks["writer_exclusive_insert"]["total"],
        "callbacks_insert_normal": callbacks["writer_normal_insert"]["total"],
        "callbacks_select_reader": callbacks["reader_normal_select"]["total"],
        **timings,
        "diff_update_per_byte_loop_us": diffs["diff_update_per_byte_loop_us"],
        "diff_update_fast_us": diffs["diff_update_fast_us"],
        "diff_insert_per_byte_loop_us": diffs["diff_insert_per_byte_loop_us"],
        "diff_insert_fast_us": diffs["diff_insert_fast_us"],
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
