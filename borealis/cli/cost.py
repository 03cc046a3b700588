"""borealis cost [--data-dir DIR] [--since ISO8601|1h] [--prices FILE] [--json]

Prints what the cluster's metered usage (control_plane/metering.py) costs under each
option of the price table (control_plane/cost.py: Standard and I/O-Optimized), which
is cheaper for the observed workload and why, and every figure used. It asks the
control plane (Metering.GetCost); when the cluster is not running it reads the usage
records in DIR/metering/ itself.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from borealis import rpc
from borealis.errors import BorealisError, InvalidRequest, NotFound, from_grpc
from control_plane import metering
from deploy.local import pid_alive, read_cluster_file
from proto import metering_pb2, metering_pb2_grpc

DEFAULT_DATA_DIR = Path(".borealis")
GET_COST_TIMEOUT_S = 30.0
RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*([smhdw])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MIB = 2**20


def add_parser(subparsers: Any) -> None:
    """Adds `cost` to the `borealis` command's subparsers."""
    parser = subparsers.add_parser(
        "cost", help="what the metered usage costs under each price option, and which is cheaper"
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--since",
        default="",
        help="start of the period: ISO 8601 (2024-05-01T12:00) or back from now (1h, 30m, 2d; "
        "with a minus sign write --since=-1h); default: since metering began",
    )
    parser.add_argument("--prices", type=Path, help="a price table (JSON) instead of the cluster's")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        since_unix_s = parse_since(args.since, time.time())
        prices_json = args.prices.read_text() if args.prices else ""
        report = fetch(Path(args.data_dir).resolve(), since_unix_s, prices_json)
    except OSError as error:
        print(f"borealis cost: {error}", file=sys.stderr)
        return 1
    except BorealisError as error:
        print(f"borealis cost: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json_format.MessageToJson(report, preserving_proto_field_name=True))
    else:
        print(render(report))
    return 0


def parse_since(text: str, now_unix_s: float) -> float:
    """Unix seconds of `--since`: empty is 0 (all), `-1h` style is relative to now,
    else ISO 8601 (local time when it names no zone)."""
    text = text.strip()
    if not text:
        return 0.0
    relative = RELATIVE.match(text)
    if relative:
        return now_unix_s - float(relative.group(1)) * UNIT_SECONDS[relative.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidRequest(
            "--since must be ISO 8601 or like -1h, -30m, -2d", since=text
        ) from None


def fetch(data_dir: Path, since_unix_s: float, prices_json: str) -> metering_pb2.CostReport:
    """The report from the running control plane, else from the usage records on disk."""
    try:
        document = read_cluster_file(data_dir)
    except NotFound:
        document = {}
    control_plane = document.get("control_plane") or {}
    if not pid_alive(control_plane.get("pid")):
        usage = metering.UsageFile(data_dir)
        if not usage.path.exists():
            raise NotFound("no usage metered here: is a cluster set up?", data_dir=str(data_dir))
        report = metering.report(usage, data_dir, since_unix_s, prices_json)
        report.notes.append(f"the cluster is not running: read from {usage.path}")
        return report
    request = metering_pb2.GetCostRequest(since_unix_s=int(since_unix_s), prices_json=prices_json)
    with rpc.sync_channel(control_plane["address"]) as channel:
        try:
            return metering_pb2_grpc.MeteringStub(channel).GetCost(
                request, timeout=GET_COST_TIMEOUT_S
            )
        except grpc.RpcError as error:
            raise from_grpc(error) from None


def render(report: metering_pb2.CostReport) -> str:
    return "\n".join(
        [*_usage_lines(report.usage), ""]
        + [line for option in report.options for line in [*_option_lines(option, report), ""]]
        + [f"cheaper: {_title(report, report.cheaper)}", f"why: {report.reason}"]
        + [f"note: {note}" for note in report.notes]
    )


def _usage_lines(usage: metering_pb2.Usage) -> list[str]:
    lines = [
        f"usage from {_when(usage.since_unix_s)} to {_when(usage.until_unix_s)} "
        f"({usage.seconds:.1f} s metered)"
    ]
    for name in sorted(usage.capacity_unit_seconds):
        unit_seconds = usage.capacity_unit_seconds[name]
        average = unit_seconds / usage.seconds if usage.seconds else 0.0
        lines.append(
            f"  capacity {name:<8} {unit_seconds:>12.1f} BCU-s  (average {average:.2f} BCU, "
            f"{usage.capacity_sources.get(name, '?')})"
        )
    average_bytes = usage.storage_byte_seconds / usage.seconds if usage.seconds else 0.0
    lines += [
        f"  storage  {usage.storage_bytes_last / MIB:.2f} MiB now, "
        f"{average_bytes / MIB:.2f} MiB on average (one copy of the volume)",
        f"  I/O      {usage.io_reads:.0f} reads (GetPage), {usage.io_writes:.0f} writes "
        f"({usage.write_counter or 'no storage node answered yet'})",
        f"  backup   {usage.backup_byte_seconds:.0f} byte-s",
    ]
    return lines


def _option_lines(option: metering_pb2.OptionCost, report: metering_pb2.CostReport) -> list[str]:
    currency = report.currency
    lines = [
        f"{option.title}",
        f"  {'item':<9} {'quantity':>14} {'unit':<17} {'unit price':>11} {'amount':>12}",
    ]
    for line in option.lines:
        lines.append(
            f"  {line.item:<9} {line.quantity:>14.6g} {line.unit:<17} "
            f"{line.unit_price:>11.4g} {line.amount:>12.6f}"
        )
    lines.append(
        f"  {'total':<9} {'':>14} {'':<17} {'':>11} {option.total:>12.6f} {currency}"
        f"  (I/O {option.io_share:.0%}; {option.monthly_total:.2f} {currency} a month at this rate)"
    )
    return lines


def _title(report: metering_pb2.CostReport, name: str) -> str:
    return next((option.title for option in report.options if option.name == name), name)


def _when(unix_s: float) -> str:
    if unix_s <= 0:
        return "the start of metering"
    return datetime.fromtimestamp(unix_s).isoformat(timespec="seconds")
