"""Batched redo appends to six storage nodes against raw LMDB, in the same run.

What it expects: six storage node processes and this client on one machine over
loopback (two cores shared by seven processes), each node syncing LMDB on every
group commit. The peer is one process putting the same records in the same
batches into raw LMDB with a sync per batch: the floor cost of durability, with
no network, no replication and no checks.

A shipper per PG sends each batch to all six segments (serialized once) and
counts it durable at the fourth ack (the 4/6 write quorum), as the writer will;
the two slower acks are awaited in the background, bounded per PG. The last line
printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmdb  # noqa: E402
import uvloop  # noqa: E402

from bench import report  # noqa: E402
from borealis import redo  # noqa: E402
from borealis.ids import Epoch, Epochs, Lsn, PgIndex, SegmentId, VolumeId  # noqa: E402
from deploy.local import LocalCluster  # noqa: E402
from storage_node.client import StorageClient, encode_append  # noqa: E402
from storage_node.segment import Member  # noqa: E402

VOLUME = VolumeId(1)
EPOCHS = Epochs(Epoch(1), Epoch(1))
PAGES_PER_PG = 1024
WRITE_QUORUM = 4
STRAGGLER_BATCHES_MAX = 8


def make_records(pg: int, count: int, seed: int, image_share: float) -> list[bytes]:
    """A PG's chain of records: mostly small deltas (a row change), some full page images."""
    rng = random.Random(seed * 1000 + pg)
    first_page = pg * PAGES_PER_PG
    records = []
    for index in range(count):
        lsn = Lsn(pg + 1 + index * 64)  # PGs interleave in LSN order, as in one volume
        prev = Lsn(lsn - 64) if index else Lsn(0)
        page = first_page + rng.randrange(64)
        if rng.random() < image_share:
            kind, payload = redo.Kind.IMAGE, rng.randbytes(redo.PAGE_SIZE_BYTES)
        else:
            offset = rng.randrange(0, 3900)
            ranges = [
                (offset, rng.randbytes(rng.randint(40, 120))),
                (offset + 150, rng.randbytes(8)),
            ]
            kind, payload = redo.Kind.DELTA, redo.delta_payload(ranges)
        record = redo.RedoRecord(
            lsn=lsn,
            prev_lsn_volume=Lsn(lsn - 1),
            prev_lsn_pg=prev,
            prev_lsn_page=Lsn(0),
            page=page,
            kind=kind,
            payload=payload,
            cpl=index % 4 == 3,
            commit_time_us=0,
        )
        records.append(redo.encode(record))
    return records


def batches_of(records: list[bytes], size: int) -> list[list[bytes]]:
    return [records[start : start + size] for start in range(0, len(records), size)]


async def run_cluster(
    cluster: LocalCluster,
    pg_batches: dict[int, list[list[bytes]]],
    duration_s: float,
    warmup_s: float,
) -> dict[str, float]:
    clients = [StorageClient(node.address, timeout_s=30.0) for node in cluster.storage_nodes]
    members = [Member(node.name, node.address, node.az) for node in cluster.storage_nodes]
    for pg in pg_batches:
        segment_id = SegmentId(VOLUME, PgIndex(pg))
        await asyncio.gather(
            *(
                c.set_membership(segment_id, EPOCHS, pg * PAGES_PER_PG, PAGES_PER_PG, members)
                for c in clients
            )
        )
    latencies_ms: list[float] = []
    counted = {"records": 0, "bytes": 0}
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def ship(pg: int, batches: list[list[bytes]]) -> None:
        segment_id = SegmentId(VOLUME, PgIndex(pg))
        stragglers: set[asyncio.Future[object]] = set()
        for batch in batches:
            now = time.perf_counter()
            if now >= stop_at:
                break
            request = encode_append(segment_id, EPOCHS, batch)
            calls = [asyncio.ensure_future(c.append_encoded(request)) for c in clients]
            for acks, finished in enumerate(asyncio.as_completed(calls), start=1):
                await finished
                if acks == WRITE_QUORUM:
                    break
            done = time.perf_counter()
            if now >= measure_from:
                latencies_ms.append((done - now) * 1000)
                counted["records"] += len(batch)
                counted["bytes"] += sum(len(r) for r in batch)
            stragglers.update(call for call in calls if not call.done())
            stragglers = {call for call in stragglers if not call.done()}
            if len(stragglers) > 2 * STRAGGLER_BATCHES_MAX:
                await asyncio.wait(stragglers, return_when=asyncio.FIRST_COMPLETED)
        if stragglers:
            await asyncio.gather(*stragglers)

    await asyncio.gather(*(ship(pg, batches) for pg, batches in pg_batches.items()))
    elapsed = min(time.perf_counter(), stop_at) - measure_from
    for client in clients:
        await client.close()
    latencies_ms.sort()
    return {
        "records_per_s": counted["records"] / elapsed,
        "mb_per_s": counted["bytes"] / elapsed / 1e6,
        "ack_p50_ms": statistics.median(latencies_ms),
        "ack_p99_ms": latencies_ms[int(len(latencies_ms) * 0.99) - 1]
        if len(latencies_ms) > 1
        else latencies_ms[0],
        "batches": len(latencies_ms),
    }


def run_raw_lmdb(
    directory: Path, pg_batches: dict[int, list[list[bytes]]], duration_s: float
) -> float:
    """The same batches, round-robin over PGs, one synced transaction each."""
    env = lmdb.open(str(directory), map_size=8 * 2**30, sync=True, metasync=True, max_dbs=2)
    log_db = env.open_db(b"log")
    key = struct.Struct(">QIQ")
    queue = [batch for group in zip(*pg_batches.values(), strict=False) for batch in group]
    written = 0
    start = time.perf_counter()
    for batch, pg in zip(queue, (pg for _ in range(len(queue)) for pg in pg_batches), strict=False):
        with env.begin(write=True) as txn:
            txn.cursor(log_db).putmulti(
                [
                    (key.pack(VOLUME, pg, index), record)
                    for index, record in enumerate(batch, written)
                ]
            )
        written += len(batch)
        if time.perf_counter() - start >= duration_s:
            break
    elapsed = time.perf_counter() - start
    env.close()
    return written / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (under 60 s)")
    parser.add_argument("--pgs", type=int, default=8)
    parser.add_argument("--batch-records", type=int, default=256)
    parser.add_argument("--image-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    duration_s, warmup_s = (10.0, 2.0) if args.quick else (30.0, 5.0)
    # Enough records that neither side runs out before its time is up.
    per_pg = int(300_000 * (duration_s + warmup_s) / 10 / args.pgs)
    print(
        f"storage_append: 6 storage nodes + client on {Path('/proc/cpuinfo').read_text().count('processor')} cores, "
        f"{args.pgs} PGs, batches of {args.batch_records} records, {args.image_share:.0%} full images; "
        f"measuring {duration_s:.0f}s after {warmup_s:.0f}s warm-up",
        flush=True,
    )
    pg_batches = {
        pg: batches_of(make_records(pg, per_pg, args.seed, args.image_share), args.batch_records)
        for pg in range(args.pgs)
    }
    work = Path(tempfile.mkdtemp(prefix="borealis-bench-"))
    try:
        raw_records_per_s = run_raw_lmdb(work / "raw", pg_batches, duration_s)
        print(f"raw LMDB put+sync: {raw_records_per_s:,.0f} records/s", flush=True)
        cluster = LocalCluster(
            work / "cluster",
            storage_overrides={"lmdb_map_size_bytes": 8 * 2**30, "log_level": "warning"},
        )
        try:
            cluster.start()
            result = uvloop.run(run_cluster(cluster, pg_batches, duration_s, warmup_s))
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "records_per_s": round(result["records_per_s"]),
        "mb_per_s": round(result["mb_per_s"], 2),
        "ack_p50_ms": round(result["ack_p50_ms"], 2),
        "ack_p99_ms": round(result["ack_p99_ms"], 2),
        "raw_lmdb_records_per_s": round(raw_records_per_s),
        "ratio_vs_raw_lmdb": round(result["records_per_s"] / raw_records_per_s, 3),
        "pgs": args.pgs,
        "batch_records": args.batch_records,
        "image_share": args.image_share,
    }
    report.write(
        "storage_append",
        [
            report.record(
                "storage_append_records_per_s", summary["records_per_s"], "records/s", True
            ),
            report.record("storage_append_mb_per_s", summary["mb_per_s"], "MB/s", True),
            report.record("storage_append_ack_p50_ms", summary["ack_p50_ms"], "ms", False),
            report.record("storage_append_ack_p99_ms", summary["ack_p99_ms"], "ms", False),
            report.record(
                "raw_lmdb_records_per_s", summary["raw_lmdb_records_per_s"], "records/s", True
            ),
            report.record(
                "storage_append_ratio_vs_raw_lmdb", summary["ratio_vs_raw_lmdb"], "ratio", True
            ),
        ],
        {
            "6 nodes, 4/6 acks": summary["records_per_s"],
            "raw LMDB": summary["raw_lmdb_records_per_s"],
        },
        "records/s",
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
