"""Alert rules: the TOML format as msgspec Structs (errors name the line and field) and the built-in set."""

from __future__ import annotations

import operator
import re
import string
import sys
import tomllib
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

import msgspec
from msgspec import Meta, Struct

from consumers.alerts.metrics import COUNTER, METRICS, TIME

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SEVERITIES = ("info", "warning", "critical")
DEFAULT_RULES_FILE = "default_rules.toml"

MAX_FOR_UPDATES = 100_000_000
MAX_SECONDS = 7 * 24 * 3600
"""Longest ``for_seconds`` and ``increase_over_s``: a week."""
MAX_SUMMARY = 2000
MAX_FORMAT_NUMBER = 200
"""Largest width or precision a template's format spec may ask for."""
TEMPLATE_FIELDS: dict[str, tuple[object, ...]] = {
    "rule": ("r",),
    "metric": ("m",),
    "value": (1.0,),
    "fire": (1.0,),
    "clear": (1.0,),
    "op": (">",),
    "run_id": ("x",),
    "update": (1,),
    "step": (1,),
    "severity": ("warning",),
    "for": ("",),
    "rank": (0,),
}
"""What a ``summary`` may name, with sample values of each field's type to try its format spec on."""


def _one_of(values: tuple[str, ...] | Mapping[str, object]) -> str:
    return "one of " + ", ".join(repr(v) for v in values)


Name = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="1-64 letters, digits, '_', '.' or '-'")
]
MetricName = Annotated[
    Literal[tuple(METRICS)],  # type: ignore[valid-type]
    Meta(description="a known metric (see --list-metrics)"),
]
Op = Annotated[Literal[tuple(OPS)], Meta(description=_one_of(OPS))]  # type: ignore[valid-type]
Threshold = Annotated[
    float, Meta(ge=-sys.float_info.max, le=sys.float_info.max, description="a finite number")
]
Updates = Annotated[
    int, Meta(ge=0, le=MAX_FOR_UPDATES, description=f"a whole number from 0 to {MAX_FOR_UPDATES}")
]
Seconds = Annotated[
    float, Meta(ge=0, le=MAX_SECONDS, description=f"a number of seconds from 0 to {MAX_SECONDS}")
]
Severity = Annotated[Literal[SEVERITIES], Meta(description=_one_of(SEVERITIES))]  # type: ignore[valid-type]
Summary = Annotated[
    str, Meta(max_length=MAX_SUMMARY, description=f"text of at most {MAX_SUMMARY} characters")
]


class RuleError(ValueError):
    """A rule whose fields are each valid but do not fit together; ``field`` is the one to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Rule(Struct, frozen=True, forbid_unknown_fields=True):
    """Fires when ``metric op fire`` held for the ``for``; resolves when ``metric op clear`` stops holding."""

    name: Name
    metric: MetricName
    op: Op
    fire: Threshold
    clear: Threshold | None = None
    """Default: ``fire``."""
    for_updates: Updates = 0
    for_seconds: Seconds = 0.0
    increase_over_s: Seconds = 0.0
    severity: Severity = "warning"
    summary: Summary = ""
    by_rank: bool = False
    """Evaluate for each rank on its own (one alert per rank); default: the combined view."""

    def __post_init__(self) -> None:
        if self.clear is None:
            msgspec.structs.force_setattr(self, "clear", self.fire)
        clear, fire, op = self.clear, self.fire, self.op
        # Hysteresis: the clear threshold must lie on the healthy side of the fire threshold.
        if (op in (">", ">=") and clear > fire) or (op in ("<", "<=") and clear < fire):
            side = "above" if op in (">", ">=") else "below"
            raise RuleError(
                "clear", f"with op {op!r} 'clear' ({clear:g}) must not be {side} 'fire' ({fire:g})"
            )
        kind = METRICS[self.metric].kind
        if self.for_updates and kind in (TIME, COUNTER):
            raise RuleError(
                "for_updates", f"metric {self.metric!r} is not measured per update; use 'for_seconds'"
            )
        if self.for_updates and self.for_seconds:
            raise RuleError("for_seconds", "give 'for_updates' or 'for_seconds', not both")
        if self.increase_over_s and kind != COUNTER:
            raise RuleError(
                "increase_over_s", f"'increase_over_s' applies to counter metrics only, not {self.metric!r}"
            )
        problem = _template_problem(
            self.summary, step_may_be_none=kind in (TIME, COUNTER), rank_may_be_none=not self.by_rank
        )
        if problem:
            raise RuleError("summary", f"'summary': {problem}")

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

    def render(self, fields: Mapping[str, object]) -> str:
        """The summary filled in from ``fields``. Never raises: a field it cannot format is shown as is."""
        try:
            parts = list(string.Formatter().parse(self.summary))
        except ValueError:
            return self.summary
        out = []
        for literal, name, spec, _ in parts:
            out.append(literal)
            if name is None:
                continue
            if name not in fields:
                out.append("{" + name + "}")
                continue
            try:
                out.append(format(fields[name], spec or ""))
            except Exception:  # a template must never take the daemon down
                out.append(str(fields[name]))
        return "".join(out)


class RuleFile(Struct, forbid_unknown_fields=True):
    """A whole rule file: one ``[[rule]]`` table per rule."""

    rule: Annotated[list[Rule], Meta(min_length=1)]


def _template_problem(template: str, *, step_may_be_none: bool, rank_may_be_none: bool) -> str | None:
    """Why ``template`` is not only ``{field}`` and ``{field:format}`` of TEMPLATE_FIELDS, or None."""
    available = " ".join("{" + k + "}" for k in TEMPLATE_FIELDS)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{exc} (write '{{{{' and '}}}}' for literal braces)"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            if "." in name or "[" in name:
                return f"{{{name}}}: only {{field}} and {{field:format}}, no attribute or index access"
            return f"unknown placeholder {{{name}}}; available: {available}"
        if conversion:
            return f"{{{name}!{conversion}}}: no conversions; use {{{name}}} or {{{name}:format}}"
        if "{" in spec:
            return f"{{{name}:{spec}}}: nested placeholders are not allowed in a format spec"
        if any(int(n) > MAX_FORMAT_NUMBER for n in re.findall(r"\d+", spec)):
            return f"{{{name}:{spec}}}: width and precision may be at most {MAX_FORMAT_NUMBER}"
        none_too = (name == "step" and step_may_be_none) or (name == "rank" and rank_may_be_none)
        samples = TEMPLATE_FIELDS[name] + ((None,) if none_too else ())
        for sample in samples:
            try:
                format(sample, spec)
            except (ValueError, TypeError) as exc:
                why = "this metric has no step" if name == "step" else "a rule without by_rank has no rank"
                what = f"None ({why})" if sample is None else f"a {type(sample).__name__}"
                return f"{{{name}:{spec}}} cannot format {what}: {exc}"
    return None


class ConfigError(ValueError):
    """A rule file that cannot be used; ``errors`` are ``path:line: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Lines:
    """Finds the line of a rule or of one of its fields in the TOML text (tomllib keeps no positions).

    A rule starts at its ``[[rule]]`` header; when the headers do not match the rules one to
    one (``rule = [{...}]`` inline tables), at the line that assigns its name.
    """

    def __init__(self, text: str, names: list[object]) -> None:
        self.lines = text.splitlines()
        header = re.compile(r"^\s*\[\[\s*rule\s*\]\]\s*(#.*)?$")
        headers = [i for i, line in enumerate(self.lines) if header.match(line)]
        if len(headers) != len(names):
            headers = [self._name_line(name) for name in names]
        self.rule_starts = headers

    def _name_line(self, name: object) -> int:
        if isinstance(name, str):
            pattern = re.compile(rf"""\bname\s*=\s*(["']){re.escape(name)}\1""")
            for i, line in enumerate(self.lines):
                if pattern.search(line):
                    return i
        return 0

    def of(self, rule: int | None, key: str | None = None) -> int:
        if rule is None:  # a top-level key: search the whole file
            lo, hi = 0, len(self.lines)
        else:
            lo = self.rule_starts[rule]
            later = [s for s in self.rule_starts if s > lo]
            hi = min(later) if later else len(self.lines)
        if key is not None:
            pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=|^\s*\[+\s*{re.escape(key)}\s*\]""")
            for i in range(lo, hi):
                if pattern.match(self.lines[i]):
                    return i + 1
        return lo + 1


_HINTS = get_type_hints(Rule, include_extras=True)


def _must_be(field: str) -> str | None:
    """The ``description`` in the field's ``Meta``: what a valid value looks like."""
    hint = _HINTS.get(field)
    for arg in (hint, *get_args(hint)):
        for meta in getattr(arg, "__metadata__", ()):
            if isinstance(meta, Meta) and meta.description:
                return meta.description
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(exc: msgspec.ValidationError, raw: Any) -> tuple[str | None, str]:
    """(the field to point at or None for the rule's header, the message) for one rule's error."""
    if isinstance(exc.__cause__, RuleError):
        return exc.__cause__.field, str(exc.__cause__)
    text, _, path = str(exc).partition(" - at `")
    at = path.rstrip("`")
    field = re.split(r"[.\[]", at[2:])[0] if at.startswith("$.") else None
    if m := re.fullmatch(r"Object contains unknown field `(.+)`", text):
        known = ", ".join(Rule.__struct_fields__)
        return m[1], f"unknown field {m[1]!r} (known: {known})"
    if m := re.fullmatch(r"Object missing required field `(.+)`", text):
        return None, f"missing field {m[1]!r}"
    if field is None:
        return None, f"must be a table, not {_short(raw)}"
    must_be = _must_be(field) or text
    return field, f"{field!r} must be {must_be}, got {_short(raw.get(field))}"


def _file_problems(exc: msgspec.ValidationError, lines: _Lines, source: str) -> list[str]:
    text = str(exc).partition(" - at `")[0]
    if m := re.fullmatch(r"Object contains unknown field `(.+)`", text):
        key = m[1]
        return [f"{source}:{lines.of(None, key)}: unknown top-level key {key!r}; rules go in [[rule]] tables"]
    if text.startswith("Object missing required field") or "length >= 1" in text:
        return [f"{source}:1: no [[rule]] tables: a daemon without rules would watch nothing"]
    return [f"{source}:{lines.of(None, 'rule')}: 'rule' must be [[rule]] tables ({text})"]


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """Validate a whole rule file; raise ConfigError listing every problem with its line."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))
        raise ConfigError([f"{source}{':' + at[1] if at else ''}: not valid TOML: {exc}"]) from None
    raw_rules = doc.get("rule")
    raw_rules = raw_rules if isinstance(raw_rules, list) else []
    lines = _Lines(text, [r.get("name") if isinstance(r, dict) else None for r in raw_rules])
    errors: list[str] = []
    # Each rule on its own first, so one bad rule does not hide the problems of the next.
    for i, raw in enumerate(raw_rules):
        try:
            msgspec.convert(raw, Rule)
        except msgspec.ValidationError as exc:
            field, message = _explain(exc, raw)
            name = raw.get("name") if isinstance(raw, dict) else None
            label = f"rule {i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
            errors.append(f"{source}:{lines.of(i, field)}: {label}: {message}")
    if errors:
        raise ConfigError(errors)
    try:
        rules = msgspec.convert(doc, RuleFile).rule
    except msgspec.ValidationError as exc:
        raise ConfigError(_file_problems(exc, lines, source)) from None
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            errors.append(
                f"{source}:{lines.of(i, 'name')}: rule {i + 1}: "
                f"name {rule.name!r} already used by rule {seen[rule.name]}"
            )
        seen.setdefault(rule.name, i + 1)
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
