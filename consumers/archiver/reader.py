"""Read a run the archiver recorded back into the contract's envelopes, in seq order (docs/replay.md).

The inverse of ``flatten``: each CSV part's header is matched once against the current
contract (``bus.catalogue``), then every row becomes the event Struct it was written from,
with its ``seq`` and ``ts`` (and any other envelope field the archive has a column for,
such as ``rank``). Files of every event type are merged by seq; ``gaps.csv`` says which
seqs the archive never held.

What is refused and what is skipped (docs/replay.md, "Reading an archive"):

- refused with ``ArchiveError`` naming file and line: a missing directory or ``run.json``,
  a ``run.json`` that is not a training_started record, a row with the wrong number of
  cells or a value that does not parse as its field's type, a missing column for a field
  without a default, seqs out of order;
- skipped with a warning naming file and line: a torn last line (no line end: a write cut
  short), an empty file, a column this contract does not know (an archive written by a
  newer version), an event file of an unknown type.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bus.catalogue import CATALOGUE
from bus.contract import (
    SCHEMA_VERSION,
    Envelope,
    TrainingStarted,
)
from bus.feed import Gap, Item
from consumers.archiver.table import existing_parts, part_path

log = logging.getLogger(__name__)

_i = msgspec.inspect
_KINDS: dict[str, type[msgspec.Struct]] = {str(k.__struct_config__.tag): k for k in CATALOGUE}
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__) - {"schema", "run_id", "event"}
"""Envelope fields an archive may hold as columns: seq and ts always, rank where recorded."""
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


class ArchiveError(ValueError):
    """An archive that cannot be read as it is; ``str()`` is ``FILE:LINE: what is wrong``."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class RecordedGap:
    """Seqs ``first``..``last`` that the archive does not hold, and why (``lost`` or ``unseen``)."""

    first: int
    last: int
    cause: str


def unescape_text(value: str) -> str:
    """The inverse of ``flatten.escape_text``."""
    if "\\" not in value:
        return value
    return _UNESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), value)


def _converter(t: _i.Type) -> Callable[[str], Any]:
    """Text of one cell → the value of a field of type ``t``; raises ValueError when it is not one."""
    if isinstance(t, _i.UnionType):
        others = [u for u in t.types if not isinstance(u, _i.NoneType)]
        inner = _converter(others[0] if len(others) == 1 else _i.AnyType())
        if len(others) < len(t.types):
            return lambda s: None if s == "" else inner(s)
        return inner
    if isinstance(t, _i.IntType):
        return int
    if isinstance(t, _i.FloatType):
        return float
    if isinstance(t, _i.StrType):
        return unescape_text
    if isinstance(t, _i.BoolType):
        return _bool
    if isinstance(t, _i.LiteralType):
        values = frozenset(t.values)

        def literal(s: str) -> Any:
            if s not in values:
                raise ValueError(f"{s!r} is not one of {sorted(values)}")
            return s

        return literal
    return lambda s: json.loads(unescape_text(s))


def _bool(s: str) -> bool:
    if s in ("True", "true", "1"):
        return True
    if s in ("False", "false", "0"):
        return False
    raise ValueError(f"{s!r} is not a bool")


@dataclass
class _Plan:
    """How one CSV part's header maps onto the contract, worked out once per file."""

    kind: type[msgspec.Struct]
    plain: list[tuple[int, str, Callable[[str], Any]]]
    maps: list[tuple[str, list[tuple[int, str, Callable[[str], Any]]]]]
    envelope: list[tuple[int, str, Callable[[str], Any]]]
    width: int
    numbers: msgspec.json.Decoder[Any] | None = None
    """For a header of int and float columns only: decodes a whole line as one typed JSON array."""


def _plan(path: Path, kind: type[msgspec.Struct], header: list[str], warn: Callable[[str], None]) -> _Plan:
    fields = {f.name: f for f in CATALOGUE[kind]}
    envelope_types = {f.name: f.type for f in _i.type_info(Envelope).fields}  # type: ignore[attr-defined]
    plain: list[tuple[int, str, Callable[[str], Any]]] = []
    maps: dict[str, list[tuple[int, str, Callable[[str], Any]]]] = {}
    envelope: list[tuple[int, str, Callable[[str], Any]]] = []
    # Map columns: head_<key>_<rest> for a field head_<rest>, else <field>_<key>; longest names first.
    map_fields = sorted(
        (f for f in fields.values() if isinstance(f.type, _i.DictType)), key=lambda f: -len(f.name)
    )
    seen: set[str] = set()
    for i, column in enumerate(header):
        if column in seen:
            raise ArchiveError(path, 1, f"column {column!r} appears twice")
        seen.add(column)
        if column in _ENVELOPE_FIELDS:
            t = envelope_types[column]
            envelope.append((i, column, _converter(t.type if isinstance(t, _i.Metadata) else t)))
        elif column in fields and not isinstance(fields[column].type, _i.DictType):
            plain.append((i, column, _converter(fields[column].type)))
        else:
            for f in map_fields:
                key = _map_key(f.name, column)
                if key is not None:
                    value_type = f.type.value_type  # type: ignore[attr-defined]
                    maps.setdefault(f.name, []).append((i, key, _converter(value_type)))
                    break
            else:
                tag = kind.__struct_config__.tag
                warn(f"{path}:1: column {column!r} is not a field of this contract's {tag}; skipped")
    for name in ("seq", "ts"):
        if name not in seen:
            raise ArchiveError(path, 1, f"no {name!r} column: not an archiver file")
    held = {name for _, name, _ in plain} | set(maps)
    missing = [f.name for f in fields.values() if f.required and f.name not in held]
    if missing:
        raise ArchiveError(path, 1, f"no column for {', '.join(missing)} (required by this contract)")
    plan = _Plan(kind, plain, list(maps.items()), envelope, len(header))
    types: list[Any] = [object] * len(header)
    for i, name, _ in plain:
        types[i] = _json_number(fields[name].type)
    for i, name, _ in envelope:
        types[i] = _json_number(envelope_types[name])
    for name, cells in maps.items():
        for i, _, _ in cells:
            types[i] = _json_number(fields[name].type.value_type)  # type: ignore[attr-defined]
    if object not in types:
        plan.numbers = msgspec.json.Decoder(tuple.__class_getitem__(tuple(types)))  # type: ignore[arg-type]
    return plan


def _json_number(t: _i.Type) -> Any:
    """int, float, or either or None: the Python type a JSON decode may give a column; else ``object``."""
    if isinstance(t, _i.Metadata):
        t = t.type
    if isinstance(t, _i.IntType):
        return int
    if isinstance(t, _i.FloatType):
        return float
    if isinstance(t, _i.UnionType) and len(t.types) == 2 and any(isinstance(u, _i.NoneType) for u in t.types):
        inner = next(u for u in t.types if not isinstance(u, _i.NoneType))
        number = _json_number(inner)
        return object if number is object else number | None
    return object


def _map_key(field_name: str, column: str) -> str | None:
    if field_name.startswith("head_"):
        rest = "_" + field_name[len("head_") :]
        if column.startswith("head_") and column.endswith(rest) and len(column) > len("head_") + len(rest):
            return column[len("head_") : -len(rest)]
        return None
    prefix = field_name + "_"
    return column[len(prefix) :] if column.startswith(prefix) and len(column) > len(prefix) else None


@dataclass
class Archive:
    """One recorded run directory: its training_started, its gaps, and its envelopes on demand."""

    directory: Path
    run_id: str
    schema: int
    started: Envelope
    gaps: list[RecordedGap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    def envelopes(self) -> Iterator[Envelope]:
        """Every recorded envelope, training_started included, in seq order.

        The trainer's first heartbeats can come before its training_started (they did live too).
        """
        streams = [iter([self.started]), *(self._table(name) for name in self._tables())]
        yield from heapq.merge(*streams, key=lambda env: env.seq)

    def read_all(self) -> list[Envelope]:
        return list(self.envelopes())

    @property
    def finished(self) -> bool:
        """Whether the archive holds a training_finished row."""
        return "training_finished" in self._tables()

    def _tables(self) -> list[str]:
        names = []
        for path in sorted(self.directory.glob("*.csv")):
            name = path.name.split(".", 1)[0]
            if name == "gaps" or name in names:
                continue
            if name not in _KINDS or name == "training_started":
                if path.stat().st_size:
                    self._warn(f"{path}: not an event type this version knows; skipped")
                continue
            names.append(name)
        return names

    def _table(self, name: str) -> Iterator[Envelope]:
        last = -1
        last_where: tuple[Path, int] | None = None
        for part in existing_parts(self.directory, name):
            path = part_path(self.directory, name, part)
            for env, line in self._rows(path, _KINDS[name]):
                if env.seq <= last:
                    where = f"{last_where[0].name}:{last_where[1]}" if last_where else "?"
                    raise ArchiveError(path, line, f"seq {env.seq} is not after seq {last} ({where})")
                last, last_where = env.seq, (path, line)
                yield env

    def _rows(self, path: Path, kind: type[msgspec.Struct]) -> Iterator[tuple[Envelope, int]]:
        run_id, schema = self.run_id, SCHEMA_VERSION
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            self._warn(f"{path}: empty file; skipped")
            return
        text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        torn = lines.pop()  # "" when the file ends on a line end, as the archiver always leaves it
        if torn:
            self._warn(
                f"{path}:{len(lines) + 1}: torn last line (no line end, {len(torn)} bytes: "
                "a write cut short); skipped"
            )
        if not lines:
            return
        header = next(csv.reader([lines[0]]))
        plan = _plan(path, kind, header, self._warn)
        width = plan.width
        plain, maps, envelope_cols = plan.plain, plan.maps, plan.envelope
        decoder = plan.numbers
        for lineno, line in enumerate(lines[1:], start=2):
            numbers = _numbers(decoder, line) if decoder is not None else None
            if numbers is not None:  # a line of numbers only: typed in one decode, as the archiver wrote it
                kwargs = {name: numbers[i] for i, name, _ in plain}
                for name, cells in maps:
                    kwargs[name] = {key: numbers[i] for i, key, _ in cells}
                head = {name: numbers[i] for i, name, _ in envelope_cols}
                if head["seq"] < 0 or head["ts"] < 0:
                    raise ArchiveError(path, lineno, f"seq {head['seq']} / ts {head['ts']} out of range")
                yield Envelope(schema=schema, run_id=run_id, event=kind(**kwargs), **head), lineno
                continue
            row = next(csv.reader([line]), [])
            if len(row) != width:
                raise ArchiveError(path, lineno, f"{len(row)} cells, the header has {width}")
            column = ""
            try:
                kwargs = {name: conv(row[i]) for i, name, conv in plain}
                for name, cells in maps:
                    kwargs[name] = {key: conv(row[i]) for i, key, conv in cells}
                head = {name: conv(row[i]) for i, name, conv in envelope_cols}
            except (ValueError, TypeError) as exc:
                bad = _first_bad(row, plain, maps, envelope_cols)
                column = f" in column {header[bad]!r}" if bad is not None else ""
                raise ArchiveError(path, lineno, f"unreadable value{column}: {exc}") from None
            if head["seq"] < 0 or not math.isfinite(head["ts"]) or head["ts"] < 0:
                raise ArchiveError(path, lineno, f"seq {head['seq']} / ts {head['ts']} out of range")
            yield Envelope(schema=schema, run_id=run_id, event=kind(**kwargs), **head), lineno


def _numbers(decoder: msgspec.json.Decoder[Any], line: str) -> tuple[Any, ...] | None:
    """A line of plain numbers as a typed JSON array; None for anything else (the csv path reads it)."""
    # nan, inf and empty cells are not JSON numbers; a quote means a csv-quoted cell.
    if (
        not line
        or "n" in line
        or "N" in line
        or '"' in line
        or ",," in line
        or line[0] == ","
        or line[-1] == ","
    ):
        return None
    try:
        return decoder.decode(f"[{line}]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # the csv path says what is wrong with it


def _first_bad(
    row: list[str],
    plain: list[tuple[int, str, Callable[[str], Any]]],
    maps: list[tuple[str, list[tuple[int, str, Callable[[str], Any]]]]],
    envelope_cols: list[tuple[int, str, Callable[[str], Any]]],
) -> int | None:
    cells = [*plain, *envelope_cols, *(c for _, group in maps for c in group)]
    for i, _, conv in cells:
        try:
            conv(row[i])
        except (ValueError, TypeError):
            return i
    return None


def with_gaps(envelopes: Iterable[Envelope]) -> Iterator[Item]:
    """The envelopes, each seq hole announced just before the envelope after it (as ``bus.feed`` does)."""
    last = -1
    for env in envelopes:
        if last >= 0 and env.seq > last + 1:
            yield Gap(run_id=env.run_id, first=last + 1, last=env.seq - 1, detected_at=env.ts)
        last = env.seq
        yield env


def open_archive(directory: Path | str) -> Archive:
    """Open ``runs/<run_id>``: read run.json and gaps.csv; rows are read when ``envelopes`` is iterated."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArchiveError(directory, None, "no such run directory")
    run_json = directory / "run.json"
    try:
        text = run_json.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchiveError(
            run_json,
            None,
            "missing: the archiver writes it on training_started; without it the run's "
            "static metadata (and its start) is unknown",
        ) from None
    except OSError as exc:
        raise ArchiveError(run_json, None, f"unreadable: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchiveError(run_json, exc.lineno, f"not JSON: {exc.msg} (column {exc.colno})") from None
    try:
        started = msgspec.convert(doc["training_started"], TrainingStarted)
        run_id = str(doc["run_id"])
        seq = int(doc["seq"])
        ts = float(doc["ts"])
        schema = int(doc.get("schema", SCHEMA_VERSION))
    except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
        raise ArchiveError(run_json, None, f"not a training_started record: {exc}") from None
    if schema > SCHEMA_VERSION:
        raise ArchiveError(run_json, None, f"schema {schema} is newer than this reader's {SCHEMA_VERSION}")
    envelope = Envelope(schema=SCHEMA_VERSION, run_id=run_id, seq=seq, ts=ts, event=started)
    archive = Archive(directory=directory, run_id=run_id, schema=schema, started=envelope)
    archive.gaps = _read_gaps(directory / "gaps.csv", archive._warn)
    return archive


def _read_gaps(path: Path, warn: Callable[[str], None]) -> list[RecordedGap]:
    if not path.exists():
        return []
    gaps = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.split("\n")
    if lines.pop():
        warn(f"{path}:{len(lines) + 1}: torn last line; skipped")
    for lineno, row in enumerate(csv.reader(lines[1:]), start=2):
        try:
            gaps.append(RecordedGap(int(row[0]), int(row[1]), row[4]))
        except (ValueError, IndexError):
            raise ArchiveError(path, lineno, f"not a gap row: {row!r}") from None
    return gaps
