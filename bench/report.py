"""Benchmark output: JSON records {name, value, unit, higher_is_better} and a PNG bar chart."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write(
    name: str, records: list[dict[str, object]], chart: dict[str, float], chart_unit: str
) -> Path:
    """Writes bench/results/NAME.json and NAME.png; returns the JSON path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{name}.json"
    json_path.write_text(json.dumps(records, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    bars = axes.bar(list(chart), list(chart.values()), color=["#3b6ea5", "#a5a5a5"][: len(chart)])
    axes.bar_label(bars, fmt="%.0f")
    axes.set_ylabel(chart_unit)
    axes.set_title(name)
    figure.tight_layout()
    figure.savefig(RESULTS_DIR / f"{name}.png", dpi=100)
    plt.close(figure)
    return json_path


def record(name: str, value: float, unit: str, higher_is_better: bool) -> dict[str, object]:
    return {"name": name, "value": value, "unit": unit, "higher_is_better": higher_is_better}
