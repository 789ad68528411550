"""One benchmark figure, and the markdown table and JSON file they are reported in."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figure:
    """A measured value next to its reference; ``ratio`` is value/reference, judged against ``goal``."""

    key: str
    name: str
    value: float
    reference: float
    unit: str
    goal: str
    met: bool
    how: str

    @property
    def ratio(self) -> float:
        return self.value / self.reference if self.reference else float("nan")


def at_least(
    key: str, name: str, value: float, reference: float, unit: str, min_ratio: float, how: str
) -> Figure:
    """A figure whose value must be at least ``min_ratio`` times its reference."""
    ratio = value / reference if reference else 0.0
    return Figure(key, name, value, reference, unit, f"ratio >= {min_ratio:g}", ratio >= min_ratio, how)


def at_most(
    key: str, name: str, value: float, reference: float, unit: str, max_ratio: float, how: str
) -> Figure:
    """A figure whose value must be at most ``max_ratio`` times its reference."""
    ratio = value / reference if reference else float("inf")
    return Figure(key, name, value, reference, unit, f"ratio <= {max_ratio:g}", ratio <= max_ratio, how)


def machine() -> str:
    import os

    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )


def markdown(figures: list[Figure]) -> str:
    lines = [
        "| figure | value | reference | ratio | goal | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.name} | {_fmt(f.value)} {f.unit} | {_fmt(f.reference)} {f.unit} | {f.ratio:.3f} "
            f"| {f.goal} | {'yes' if f.met else '**NO**'} |"
        )
    return "\n".join(lines)


def write_json(figures: list[Figure], path: Path, elapsed_s: float) -> None:
    data = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "elapsed_s": round(elapsed_s, 1),
        "figures": {
            f.key: {**{k: v for k, v in asdict(f).items() if k != "key"}, "ratio": f.ratio} for f in figures
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "nan"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"
