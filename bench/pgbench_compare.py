"""pgbench on Borealis against a local PostgreSQL 15, in the same run.

What it expects: this machine's cores shared by everything (the pgbench client,
six storage nodes and the writer instance for Borealis; the postmaster and its
backends for PostgreSQL), and a local disk under the temporary directory (its
filesystem is printed: on tmpfs an fsync costs nothing and PostgreSQL's commits
look cheaper than on a real disk). The peer is a throwaway PostgreSQL 15 in a
temporary directory on a free port with fsync and synchronous_commit on.

Workloads, the same on both: `pgbench -i -s 10` (quick: -s 1), then TPC-B
`-c 8 -j 2 -T 30 -M prepared` and select-only `-S -c 8 -j 2 -T 30 -M prepared`
(quick: -T 5). The two servers run one after the other, never together, so
neither steals the other's CPU. The last line printed is one JSON object with the
tps figures and `ratio_tpcb`, `ratio_select` (Borealis tps / PostgreSQL tps).

`--peer-only` puts a second PostgreSQL where Borealis would be: it checks this
script end to end (ratios near 1) without a Borealis endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report  # noqa: E402
from deploy.local import LocalCluster, read_cluster_file  # noqa: E402
from deploy.ports import PortAllocator  # noqa: E402
from deploy.postgres import LocalPostgres, find_binary  # noqa: E402

CLIENTS = 8
THREADS = 2
# Loading scale 10 (a million accounts) through a slow endpoint can take minutes.
INIT_TIMEOUT_S = 1800.0
# pgbench stops at -T; the margin covers connection setup and the final report.
RUN_MARGIN_S = 120.0
OUTPUT_TAIL_LINES = 20
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password"
BENCH_DATABASE = "bench"

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Endpoint:
    """Where pgbench connects: libpq's environment variables."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.database,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
        }


@dataclass(frozen=True)
class RunResult:
    tps: float
    failed: int
    processed: int


def parse_pgbench(output: str) -> RunResult:
    """tps (without connection time), failed and processed transactions of pgbench's report."""
    tps, processed = _TPS.search(output), _PROCESSED.search(output)
    if tps is None or processed is None:
        raise ValueError("no tps in pgbench's output:\n" + _tail(output))
    failed = _FAILED.search(output)
    return RunResult(
        float(tps.group(1)), int(failed.group(1)) if failed else 0, int(processed.group(1))
    )


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-OUTPUT_TAIL_LINES:])


def pgbench(endpoint: Endpoint, arguments: list[str], timeout_s: float) -> str:
    """Runs pgbench; its stdout and stderr (the report is on stdout, progress on stderr)."""
    argv = [str(find_binary("pgbench")), *arguments]
    result = subprocess.run(
        argv,
        env=endpoint.environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}:\n{_tail(output)}")
    return output


def run_workloads(name: str, endpoint: Endpoint, scale: int, duration_s: int) -> dict[str, float]:
    """Initialises pgbench's tables and runs TPC-B and select-only on one server."""
    started = time.perf_counter()
    pgbench(endpoint, ["-i", "-q", "-s", str(scale)], INIT_TIMEOUT_S)
    init_s = time.perf_counter() - started
    print(f"{name}: pgbench -i -s {scale} took {init_s:.1f}s", flush=True)
    common = ["-c", str(CLIENTS), "-j", str(THREADS), "-T", str(duration_s), "-M", "prepared"]
    figures: dict[str, float] = {"init_s": init_s}
    for workload, extra in (("tpcb", []), ("select", ["-S"])):
        output = pgbench(endpoint, [*extra, *common], duration_s + RUN_MARGIN_S)
        result = parse_pgbench(output)
        print(
            f"{name}: {workload} {result.tps:.1f} tps, {result.processed} transactions, "
            f"{result.failed} failed",
            flush=True,
        )
        figures[f"{workload}_tps"] = result.tps
        figures[f"{workload}_failed"] = float(result.failed)
    return figures


@contextmanager
def postgres(directory: Path, ports: PortAllocator) -> Iterator[Endpoint]:
    """A throwaway PostgreSQL 15 (fsync and synchronous_commit on), stopped on the way out."""
    server = LocalPostgres(
        directory,
        user=BENCH_USER,
        password=BENCH_PASSWORD,
        dbname=BENCH_DATABASE,
        ports=ports,
        settings={"fsync": "on", "synchronous_commit": "on", "max_connections": "50"},
    )
    try:
        server.start()
        yield Endpoint(server.host, server.port, server.user, server.password, server.dbname)
    finally:
        server.stop()


@contextmanager
def borealis(directory: Path, ports: PortAllocator) -> Iterator[Endpoint]:
    """A local Borealis cluster with its writer; the endpoint from cluster.json."""
    cluster = LocalCluster(
        directory,
        ports=ports,
        writer=True,
        storage_overrides={"log_level": "warning"},
        instance_overrides={"log_level": "warning"},
    )
    try:
        cluster.start()
        yield endpoint_of_cluster(directory)
    finally:
        cluster.stop()


def endpoint_of_cluster(data_dir: Path) -> Endpoint:
    """endpoints.writer (postgresql://USER@HOST:PORT/DB), `user` and the 0600 password_file."""
    document = read_cluster_file(data_dir)
    parts = urlsplit(document["endpoints"]["writer"])
    assert parts.hostname and parts.port, f"bad writer endpoint {parts.geturl()}"
    password = os.environ.get("PGPASSWORD")
    if password is None:
        password = Path(document["password_file"]).read_text().split("\n", 1)[0]
    return Endpoint(
        host=parts.hostname,
        port=parts.port,
        user=document.get("user") or unquote(parts.username or ""),
        password=password,
        database=unquote(parts.path.lstrip("/")),
    )


def filesystem_of(path: Path) -> str:
    """The filesystem type the benchmark's files live on (tmpfs, ext4, overlay...)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and resolved.startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def summarise(subject: dict[str, float], peer: dict[str, float]) -> dict[str, float]:
    return {
        "tpcb_tps": round(subject["tpcb_tps"], 1),
        "select_tps": round(subject["select_tps"], 1),
        "tpcb_failed": int(subject["tpcb_failed"]),
        "select_failed": int(subject["select_failed"]),
        "init_s": round(subject["init_s"], 1),
        "postgres_tpcb_tps": round(peer["tpcb_tps"], 1),
        "postgres_select_tps": round(peer["select_tps"], 1),
        "postgres_init_s": round(peer["init_s"], 1),
        "ratio_tpcb": round(subject["tpcb_tps"] / peer["tpcb_tps"], 3),
        "ratio_select": round(subject["select_tps"] / peer["select_tps"], 3),
    }


def write_report(name: str, summary: dict[str, float], subject_label: str) -> None:
    report.write(
        name,
        [
            report.record(f"{name}_tpcb_tps", summary["tpcb_tps"], "tps", True),
            report.record(f"{name}_select_tps", summary["select_tps"], "tps", True),
            report.record(f"{name}_tpcb_failed", summary["tpcb_failed"], "transactions", False),
            report.record(f"{name}_select_failed", summary["select_failed"], "transactions", False),
            report.record(f"{name}_postgres_tpcb_tps", summary["postgres_tpcb_tps"], "tps", True),
            report.record(
                f"{name}_postgres_select_tps", summary["postgres_select_tps"], "tps", True
            ),
            report.record(f"{name}_ratio_tpcb", summary["ratio_tpcb"], "ratio", True),
            report.record(f"{name}_ratio_select", summary["ratio_select"], "ratio", True),
        ],
        {
            f"{subject_label} TPC-B": summary["tpcb_tps"],
            "PostgreSQL TPC-B": summary["postgres_tpcb_tps"],
            f"{subject_label} select": summary["select_tps"],
            "PostgreSQL select": summary["postgres_select_tps"],
        },
        "transactions/s",
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scale 1, 5 s per workload")
    parser.add_argument(
        "--peer-only",
        action="store_true",
        help="a second PostgreSQL instead of Borealis (checks the script itself)",
    )
    args = parser.parse_args()
    scale, duration_s = (1, 5) if args.quick else (10, 30)
    work = Path(tempfile.mkdtemp(prefix="borealis-pgbench-"))
    subject_label = "PostgreSQL #2" if args.peer_only else "Borealis"
    print(
        f"pgbench_compare: {subject_label} vs PostgreSQL 15 (fsync on, synchronous_commit on); "
        f"{os.cpu_count()} CPUs shared by servers and pgbench; files on "
        f"{filesystem_of(work)} ({work}); scale {scale}, {CLIENTS} clients, {THREADS} "
        f"threads, {duration_s}s per workload, -M prepared",
        flush=True,
    )
    ports = PortAllocator()
    start_subject = postgres if args.peer_only else borealis
    try:
        with postgres(work / "postgres", ports) as endpoint:
            peer = run_workloads("PostgreSQL", endpoint, scale, duration_s)
        with start_subject(work / "subject", ports) as endpoint:
            subject = run_workloads(subject_label, endpoint, scale, duration_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(subject, peer)
    name = "pgbench_compare_peer_only" if args.peer_only else "pgbench_compare"
    write_report(name, summary, subject_label)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
