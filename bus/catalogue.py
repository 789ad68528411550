"""The metric catalogue, read from the contract: each event field's type, unit, meaning and throttling."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bus.contract import EVENT_TYPES, BatchCompleted, PPOUpdate

_i = msgspec.inspect


@dataclass(frozen=True)
class Field:
    """One field of one event type, as the contract declares it."""

    event: str
    name: str
    type: _i.Type
    description: str
    unit: str
    throttled: bool
    measured_at: str
    """For a throttled field: the field that holds the ``train_steps`` which measured it."""
    history: bool
    """Consumers keep a bounded history of it (a sparkline)."""
    required: bool
    default: Any

    @property
    def numeric(self) -> bool:
        """An int or float (possibly None): something a threshold or a CSV number column can hold."""
        types = self.type.types if isinstance(self.type, _i.UnionType) else (self.type,)
        kinds = [t for t in types if not isinstance(t, _i.NoneType)]
        return bool(kinds) and all(isinstance(t, (_i.IntType, _i.FloatType)) for t in kinds)


def _default_of(f: _i.Field) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return None


def _field(event: str, f: _i.Field) -> Field:
    t, description, extra = f.type, "", {}
    if isinstance(t, _i.Metadata):
        description = (t.extra_json_schema or {}).get("description", "")
        extra = t.extra or {}
        t = t.type
    return Field(
        event=event,
        name=f.name,
        type=t,
        description=description,
        unit=extra.get("unit", ""),
        throttled=bool(extra.get("throttled", False)),
        measured_at=extra.get("measured_at", ""),
        history=bool(extra.get("history", False)),
        required=f.required,
        default=_default_of(f),
    )


def _read(kind: type[msgspec.Struct]) -> tuple[Field, ...]:
    info = _i.type_info(kind)
    assert isinstance(info, _i.StructType)
    tag = str(kind.__struct_config__.tag)
    return tuple(_field(tag, f) for f in info.fields)


CATALOGUE: dict[type[msgspec.Struct], tuple[Field, ...]] = {kind: _read(kind) for kind in EVENT_TYPES}
"""Every event type's fields, in contract order."""


def fields(kind: type[msgspec.Struct]) -> tuple[Field, ...]:
    return CATALOGUE[kind]


def step_fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    """Fields that only say which update measured a throttled one (``gradient_cv_step``)."""
    return frozenset(f.measured_at for f in CATALOGUE[kind] if f.throttled)


def metric_fields(kind: type[msgspec.Struct] = PPOUpdate) -> tuple[Field, ...]:
    """The numeric fields of ``kind`` that are measurements, not bookkeeping of another one."""
    steps = step_fields(kind)
    return tuple(f for f in CATALOGUE[kind] if f.numeric and f.name not in steps)


def history_fields(kind: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in CATALOGUE[kind] if f.history)


def type_name(t: _i.Type) -> str:
    """The wire type as docs/wire.md writes it: int, float, str, bool, list[str], map[str, int], T | nil."""
    if isinstance(t, _i.UnionType):
        return " | ".join(type_name(u) for u in t.types)
    if isinstance(t, _i.DictType):
        return f"map[{type_name(t.key_type)}, {type_name(t.value_type)}]"
    if isinstance(t, _i.ListType):
        return f"list[{type_name(t.item_type)}]"
    if isinstance(t, _i.LiteralType):
        return type_name(_i.type_info(type(t.values[0])))
    names = {_i.IntType: "int", _i.FloatType: "float", _i.StrType: "str", _i.BoolType: "bool"}
    return names.get(type(t), "nil")


def _default(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return str(value).lower()
    return msgspec.json.encode(value).decode()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(kind: type[msgspec.Struct]) -> str:
    """The markdown field table of one event type (docs/wire.md embeds it verbatim)."""
    lines = ["| field | type | unit | meaning |", "|-------|------|------|---------|"]
    for f in CATALOGUE[kind]:
        type_text = type_name(f.type) + ("" if f.required else f" = {_default(f.default)}")
        meaning = f.description
        if isinstance(f.type, _i.LiteralType):
            meaning += ": " + ", ".join(f"`{v}`" for v in f.type.values)
        if f.throttled:
            meaning += f". **Throttled** (measured at `{f.measured_at}`)"
        lines.append(f"| `{f.name}` | {_cell(type_text)} | {f.unit} | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """Every event's table under its ``### `tag``` heading."""
    return "\n".join(f"### `{kind.__struct_config__.tag}`\n\n{table(kind)}" for kind in EVENT_TYPES)


TABLE_DOC: dict[type[msgspec.Struct], str] = {PPOUpdate: "metrics.md", BatchCompleted: "metrics.md"}
"""Which file under docs/ holds each event's field table (wire.md unless named): the per-update and
per-batch metrics are documented beside their computation, so a new metric touches one doc."""


def doc_of(kind: type[msgspec.Struct]) -> str:
    return TABLE_DOC.get(kind, "wire.md")


def update_docs(docs: Path) -> list[str]:
    """Rewrite each event's field table in its doc (the first table after the event's heading).

    Returns the names of the files that changed.
    """
    changed = []
    for name in sorted({doc_of(kind) for kind in EVENT_TYPES}):
        path = docs / name
        text = path.read_text()
        new = text
        for kind in (k for k in EVENT_TYPES if doc_of(k) == name):
            tag = kind.__struct_config__.tag
            heading = re.search(rf"^#+ `{tag}`.*$", new, flags=re.MULTILINE)
            if heading is None:
                raise ValueError(f"{path}: no heading for `{tag}`")
            table_re = re.compile(r"^\| field \|.*?\n(?:\|.*\n)+", flags=re.MULTILINE)
            found = table_re.search(new, heading.end())
            if found is None:
                raise ValueError(f"{path}: no field table after the `{tag}` heading")
            new = new[: found.start()] + table(kind) + new[found.end() :]
        if new != text:
            path.write_text(new)
            changed.append(name)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bus.catalogue", description=__doc__)
    p.add_argument("--markdown", action="store_true", help="print every event's field table")
    p.add_argument(
        "--update-docs",
        metavar="DIR",
        nargs="?",
        const="docs",
        help="rewrite the field tables in DIR/wire.md and DIR/metrics.md from the contract (default docs)",
    )
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    if args.update_docs:
        for name in update_docs(Path(args.update_docs)):
            print(f"updated {Path(args.update_docs) / name}")
        return 0
    for kind in EVENT_TYPES:
        for f in CATALOGUE[kind]:
            flags = "throttled" if f.throttled else ""
            print(f"{f.event:18} {f.name:26} {type_name(f.type):18} {f.unit:9} {flags:9} {f.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
