"""Prices metered usage (control_plane/metering.py) under a price table; sans-IO.

The default table is shaped like Aurora's two storage options (Aurora Serverless v2,
us-east-1 list prices, per BCU as per ACU):

- Standard: 0.12 per BCU-hour, 0.10 per GB-month of storage, 0.20 per million I/O
  requests (reads and writes at the storage nodes).
- I/O-Optimized: 0.156 per BCU-hour (30% more), 0.225 per GB-month (125% more), and
  no charge for I/O.

Backup storage is 0.021 per GB-month under both. AWS's rule of thumb: I/O-Optimized
pays off when I/O is more than about 25% of the Standard bill; the report computes
both bills, so its recommendation rests on the totals, and gives the I/O share of
the Standard bill as the reason.

A table is JSON (DATA_DIR/prices.json, or `borealis cost --prices FILE`):

    {"currency": "USD", "io_share_threshold": 0.25,
     "options": {"standard": {"capacity_per_bcu_hour": 0.12, ...},
                 "io_optimized": {...}}}

Any field left out keeps its default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from borealis.errors import InvalidRequest

if TYPE_CHECKING:
    # Only a type here: metering imports this module to serve the report.
    from control_plane.metering import Usage

SECONDS_PER_HOUR = 3600.0
# AWS prices storage per GB-month of 730 hours.
SECONDS_PER_MONTH = 730 * SECONDS_PER_HOUR
BYTES_PER_GB = float(2**30)
REQUESTS_PER_MILLION = 1e6
STANDARD = "standard"
IO_OPTIMIZED = "io_optimized"
OPTION_NAMES = (STANDARD, IO_OPTIMIZED)
# A price table file larger than this is not a price table.
PRICES_BYTES_MAX = 64 * 1024


@dataclass(frozen=True)
class OptionPrices:
    title: str
    capacity_per_bcu_hour: float
    storage_per_gb_month: float
    io_per_million_requests: float
    backup_per_gb_month: float


@dataclass(frozen=True)
class PriceTable:
    currency: str
    standard: OptionPrices
    io_optimized: OptionPrices
    io_share_threshold: float = 0.25

    def options(self) -> list[tuple[str, OptionPrices]]:
        return [(STANDARD, self.standard), (IO_OPTIMIZED, self.io_optimized)]


DEFAULT_PRICES = PriceTable(
    currency="USD",
    standard=OptionPrices(
        title="Standard",
        capacity_per_bcu_hour=0.12,
        storage_per_gb_month=0.10,
        io_per_million_requests=0.20,
        backup_per_gb_month=0.021,
    ),
    io_optimized=OptionPrices(
        title="I/O-Optimized",
        capacity_per_bcu_hour=0.156,
        storage_per_gb_month=0.225,
        io_per_million_requests=0.0,
        backup_per_gb_month=0.021,
    ),
)


@dataclass(frozen=True)
class CostLine:
    item: str
    quantity: float
    unit: str
    unit_price: float
    amount: float


@dataclass(frozen=True)
class OptionCost:
    name: str
    title: str
    lines: list[CostLine]
    total: float
    io_share: float
    monthly_total: float


@dataclass(frozen=True)
class CostReport:
    usage: Usage
    options: list[OptionCost]
    currency: str
    cheaper: str
    reason: str
    io_share_threshold: float
    notes: list[str]


def load_prices(text: str) -> PriceTable:
    """A price table from its JSON text, over the defaults; InvalidRequest if malformed."""
    if len(text) > PRICES_BYTES_MAX:
        raise InvalidRequest("the price table is too large", bytes=len(text))
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequest("the price table is not JSON", error=str(error)) from None
    if not isinstance(document, dict):
        raise InvalidRequest("the price table must be a JSON object")
    unknown = set(document) - {"currency", "io_share_threshold", "options"}
    if unknown:
        raise InvalidRequest("unknown price table keys", keys=",".join(sorted(unknown)))
    options = document.get("options", {})
    if not isinstance(options, dict) or set(options) - set(OPTION_NAMES):
        raise InvalidRequest("options must be an object of " + " and ".join(OPTION_NAMES))
    threshold = _number(document.get("io_share_threshold", DEFAULT_PRICES.io_share_threshold))
    if not 0 < threshold < 1:
        raise InvalidRequest("io_share_threshold must be between 0 and 1", value=threshold)
    currency = document.get("currency", DEFAULT_PRICES.currency)
    if not isinstance(currency, str) or not currency:
        raise InvalidRequest("currency must be a non-empty string")
    return PriceTable(
        currency=currency,
        standard=_option(DEFAULT_PRICES.standard, options.get(STANDARD, {})),
        io_optimized=_option(DEFAULT_PRICES.io_optimized, options.get(IO_OPTIMIZED, {})),
        io_share_threshold=threshold,
    )


def _option(default: OptionPrices, given: Any) -> OptionPrices:
    if not isinstance(given, dict):
        raise InvalidRequest("each option must be a JSON object")
    names = {each.name for each in fields(OptionPrices)}
    unknown = set(given) - names
    if unknown:
        raise InvalidRequest("unknown option price keys", keys=",".join(sorted(unknown)))
    changes: dict[str, Any] = {}
    for name, value in given.items():
        if name == "title":
            if not isinstance(value, str) or not value:
                raise InvalidRequest("an option's title must be a non-empty string")
            changes[name] = value
            continue
        price = _number(value)
        if price < 0:
            raise InvalidRequest("prices must not be negative", key=name, value=price)
        changes[name] = price
    return replace(default, **changes)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest("a price must be a finite number", value=str(value)[:40])
    return float(value)


def price(usage: Usage, table: PriceTable = DEFAULT_PRICES) -> CostReport:
    """The usage priced under each option, and which is cheaper and why."""
    options = [_option_cost(name, prices, usage) for name, prices in table.options()]
    standard, io_optimized = options
    cheaper = io_optimized if io_optimized.total < standard.total else standard
    return CostReport(
        usage=usage,
        options=options,
        currency=table.currency,
        cheaper=cheaper.name,
        reason=_reason(standard, io_optimized, table),
        io_share_threshold=table.io_share_threshold,
        notes=usage_notes(usage),
    )


def _option_cost(name: str, prices: OptionPrices, usage: Usage) -> OptionCost:
    bcu_hours = sum(usage.capacity_unit_seconds.values()) / SECONDS_PER_HOUR
    storage_gb_months = usage.storage_byte_seconds / BYTES_PER_GB / SECONDS_PER_MONTH
    io_millions = (usage.io_reads + usage.io_writes) / REQUESTS_PER_MILLION
    backup_gb_months = usage.backup_byte_seconds / BYTES_PER_GB / SECONDS_PER_MONTH
    lines = [
        _line("capacity", bcu_hours, "BCU-hours", prices.capacity_per_bcu_hour),
        _line("storage", storage_gb_months, "GB-months", prices.storage_per_gb_month),
        _line("io", io_millions, "million requests", prices.io_per_million_requests),
        _line("backup", backup_gb_months, "GB-months", prices.backup_per_gb_month),
    ]
    total = sum(line.amount for line in lines)
    io_amount = lines[2].amount
    monthly = total * SECONDS_PER_MONTH / usage.seconds if usage.seconds > 0 else 0.0
    return OptionCost(
        name=name,
        title=prices.title,
        lines=lines,
        total=total,
        io_share=io_amount / total if total > 0 else 0.0,
        monthly_total=monthly,
    )


def _line(item: str, quantity: float, unit: str, unit_price: float) -> CostLine:
    return CostLine(item, quantity, unit, unit_price, quantity * unit_price)


def _reason(standard: OptionCost, io_optimized: OptionCost, table: PriceTable) -> str:
    share = f"I/O is {standard.io_share:.0%} of the {standard.title} bill"
    rule = (
        f"{io_optimized.title} pays off above about {table.io_share_threshold:.0%} "
        "(AWS's rule of thumb)"
    )
    if standard.total == io_optimized.total:
        return f"nothing metered to tell them apart yet; {share}; {rule}"
    if io_optimized.total < standard.total:
        cheaper, dearer = io_optimized, standard
        verdict = "over" if standard.io_share > table.io_share_threshold else "not over"
    else:
        cheaper, dearer = standard, io_optimized
        verdict = "over" if standard.io_share > table.io_share_threshold else "under"
    saving = dearer.total - cheaper.total
    percent = saving / dearer.total if dearer.total > 0 else 0.0
    return (
        f"{share} ({verdict} the threshold); {rule}. {cheaper.title} costs "
        f"{cheaper.total:.6g} against {dearer.total:.6g} for {dearer.title} "
        f"({percent:.0%} less)"
    )


def usage_notes(usage: Usage) -> list[str]:
    notes = []
    if usage.backup_byte_seconds == 0:
        notes.append("backup bytes are 0: backups do not exist yet (issue 11)")
    configured = sorted(
        name for name, source in usage.capacity_sources.items() if source == "configured"
    )
    if configured:
        notes.append(
            "capacity of " + ", ".join(configured) + " is the configured capacity "
            "(the instance does not serve Capacity.GetCapacity)"
        )
    if usage.seconds == 0:
        notes.append("nothing metered in this period yet (the control plane samples every few s)")
    return notes
