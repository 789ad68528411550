"""Alert rules: the TOML format, its validation (errors name the line and field) and the built-in set."""

from __future__ import annotations

import math
import operator
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from consumers.alerts.metrics import COUNTER, METRICS, TIME

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SEVERITIES = ("info", "warning", "critical")
DEFAULT_RULES_FILE = "default_rules.toml"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TEMPLATE_FIELDS = {
    "rule": "r",
    "metric": "m",
    "value": 1.0,
    "fire": 1.0,
    "clear": 1.0,
    "op": ">",
    "run_id": "x",
    "update": 1,
    "step": 1,
    "severity": "warning",
    "for": "",
}


@dataclass(frozen=True)
class Rule:
    """Fires when ``metric op fire`` held for the ``for``; resolves when ``metric op clear`` stops holding."""

    name: str
    metric: str
    op: str
    fire: float
    clear: float
    for_updates: int = 0
    for_seconds: float = 0.0
    increase_over_s: float = 0.0
    severity: str = "warning"
    summary: str = ""

    def breached(self, value: float) -> bool:
        """The fire condition: ``value op fire``."""
        return OPS[self.op](value, self.fire)

    def still_breached(self, value: float) -> bool:
        """While firing: ``value op clear``; when it fails, the alert resolves."""
        return OPS[self.op](value, self.clear)

    def describe_for(self) -> str:
        if self.for_updates:
            return f"for {self.for_updates} updates"
        if self.for_seconds:
            return f"for {self.for_seconds:g} s"
        return ""

    def expression(self) -> str:
        what = f"increase({self.metric}[{self.increase_over_s:g}s])" if self.increase_over_s else self.metric
        return f"{what} {self.op} {self.fire:g}"


class ConfigError(ValueError):
    """A rule file that cannot be used; ``errors`` are ``path:line: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Lines:
    """Finds the line of a rule's field in the TOML text (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.rule_starts = [
            i for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*rule\s*\]\]\s*(#.*)?$", line)
        ]

    def of(self, rule: int | None, key: str | None = None) -> int:
        if rule is None or rule >= len(self.rule_starts):
            lo, hi = 0, (self.rule_starts[0] if self.rule_starts else len(self.lines))
        else:
            lo = self.rule_starts[rule]
            hi = self.rule_starts[rule + 1] if rule + 1 < len(self.rule_starts) else len(self.lines)
            if key is None:
                return lo + 1
        if key is not None:
            pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=|^\s*\[+\s*{re.escape(key)}\s*\]""")
            for i in range(lo, hi):
                if pattern.match(self.lines[i]):
                    return i + 1
        return lo + 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_RULE_KEYS = {
    "name",
    "metric",
    "op",
    "fire",
    "clear",
    "for_updates",
    "for_seconds",
    "increase_over_s",
    "severity",
    "summary",
}


def _check_rule(raw: Any, index: int, where: Callable[[str | None], str]) -> tuple[Rule | None, list[str]]:
    errors: list[str] = []

    def bad(key: str | None, message: str) -> None:
        errors.append(f"{where(key)}: {message}")

    if not isinstance(raw, dict):
        bad(None, f"rule {index + 1} must be a table")
        return None, errors
    label = f"rule {index + 1}" + (f" ({raw['name']!r})" if isinstance(raw.get("name"), str) else "")
    for key in raw:
        if key not in _RULE_KEYS:
            bad(key, f"{label}: unknown field {key!r} (known: {', '.join(sorted(_RULE_KEYS))})")
    for key in ("name", "metric", "op", "fire"):
        if key not in raw:
            bad(None, f"{label}: missing field {key!r}")
    name = raw.get("name")
    if "name" in raw and not (isinstance(name, str) and _NAME.match(name)):
        bad("name", f"{label}: 'name' must be 1-64 letters, digits, '_', '.' or '-'")
    metric_name = raw.get("metric")
    metric = METRICS.get(metric_name) if isinstance(metric_name, str) else None
    if "metric" in raw and metric is None:
        bad("metric", f"{label}: unknown metric {metric_name!r} (see --list-metrics)")
    op = raw.get("op")
    if "op" in raw and op not in OPS:
        bad("op", f"{label}: 'op' must be one of {', '.join(repr(o) for o in OPS)}, got {op!r}")
    fire = raw.get("fire")
    if "fire" in raw and not _number(fire):
        bad("fire", f"{label}: 'fire' must be a finite number, got {fire!r}")
    clear = raw.get("clear", fire)
    if "clear" in raw and not _number(clear):
        bad("clear", f"{label}: 'clear' must be a finite number, got {clear!r}")
    elif _number(fire) and _number(clear) and op in OPS and clear != fire:
        # Hysteresis: the clear threshold must lie on the healthy side of the fire threshold.
        if op in (">", ">=") and clear > fire:
            bad("clear", f"{label}: with op {op!r} 'clear' ({clear}) must not be above 'fire' ({fire})")
        if op in ("<", "<=") and clear < fire:
            bad("clear", f"{label}: with op {op!r} 'clear' ({clear}) must not be below 'fire' ({fire})")
    for_updates = raw.get("for_updates", 0)
    if not (isinstance(for_updates, int) and not isinstance(for_updates, bool) and for_updates >= 0):
        bad("for_updates", f"{label}: 'for_updates' must be a whole number >= 0, got {for_updates!r}")
    elif for_updates and metric is not None and metric.kind in (TIME, COUNTER):
        bad("for_updates", f"{label}: metric {metric_name!r} is not measured per update; use 'for_seconds'")
    for_seconds = raw.get("for_seconds", 0.0)
    if not (_number(for_seconds) and for_seconds >= 0):
        bad("for_seconds", f"{label}: 'for_seconds' must be a number >= 0, got {for_seconds!r}")
    if raw.get("for_updates") and raw.get("for_seconds"):
        bad("for_seconds", f"{label}: give 'for_updates' or 'for_seconds', not both")
    increase = raw.get("increase_over_s", 0.0)
    if not (_number(increase) and increase >= 0):
        bad("increase_over_s", f"{label}: 'increase_over_s' must be a number >= 0, got {increase!r}")
    elif increase and metric is not None and metric.kind != COUNTER:
        bad(
            "increase_over_s",
            f"{label}: 'increase_over_s' applies to counter metrics only, not {metric_name!r}",
        )
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        bad("severity", f"{label}: 'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    summary = raw.get("summary", "")
    if not isinstance(summary, str):
        bad("summary", f"{label}: 'summary' must be a string")
    else:
        try:
            summary.format(**_TEMPLATE_FIELDS)
        except (KeyError, IndexError, ValueError) as exc:
            fields = ", ".join("{" + k + "}" for k in _TEMPLATE_FIELDS)
            bad("summary", f"{label}: bad placeholder in 'summary' ({exc}); available: {fields}")
    if errors:
        return None, errors
    return (
        Rule(
            name=name,
            metric=metric_name,
            op=op,
            fire=float(fire),
            clear=float(clear),
            for_updates=for_updates,
            for_seconds=float(for_seconds),
            increase_over_s=float(increase),
            severity=severity,
            summary=summary,
        ),
        [],
    )


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """Validate a whole rule file; raise ConfigError listing every problem with its line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    lines = _Lines(text)
    errors: list[str] = []
    for key in doc:
        if key != "rule":
            errors.append(
                f"{source}:{lines.of(None, key)}: unknown top-level key {key!r}; rules go in [[rule]] tables"
            )
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        errors.append(f"{source}:1: no [[rule]] tables: a daemon without rules would watch nothing")
        raise ConfigError(errors)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        rule, problems = _check_rule(raw, i, lambda key, i=i: f"{source}:{lines.of(i, key)}")
        errors.extend(problems)
        if rule is None:
            continue
        if rule.name in seen:
            errors.append(
                f"{source}:{lines.of(i, 'name')}: rule {i + 1}: "
                f"name {rule.name!r} already used by rule {seen[rule.name]}"
            )
        seen[rule.name] = i + 1
        rules.append(rule)
    if errors:
        raise ConfigError(errors)
    return rules


def load_rules(path: Path) -> list[Rule]:
    """Read and validate a rule file. OSError when it cannot be read; ConfigError when it is invalid."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    return parse_rules(text, str(path))


def default_rules_text() -> str:
    return resources.files("consumers.alerts").joinpath(DEFAULT_RULES_FILE).read_text(encoding="utf-8")


def default_rules() -> list[Rule]:
    """The built-in rules, shipped as package data (consumers/alerts/default_rules.toml)."""
    return parse_rules(default_rules_text(), DEFAULT_RULES_FILE)
