"""One event as one flat CSV row: column names and values, with per-head maps spread into columns.

Naming rule (docs/archiver.md): every row starts with ``seq``, ``ts`` and ``rank``; then the event's
fields in contract order (``bus.catalogue``). A map field is spread into one column per key, in the map's
order: ``head_<key>_<rest>`` for a field named ``head_<rest>`` (``head_entropy['op']`` →
``head_op_entropy``, ``head_grad_norm['op']`` → ``head_op_grad_norm``), ``<field>_<key>``
for any other map. A list becomes a JSON string; ``None`` an empty cell. Line breaks in
text are written as the two characters ``\\n`` (and a backslash as ``\\\\``) so every
record is exactly one line of the file.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bus.catalogue import fields

Columns = tuple[str, ...]

LEADING: Columns = ("seq", "ts", "rank")
"""The envelope's columns; ``seq`` is unique per rank, so a row's key is (rank, seq)."""

RANK_COLUMN = LEADING.index("rank")

_PLAIN, _MAP, _TEXT, _OTHER = range(4)

_SCALARS = (
    msgspec.inspect.IntType,
    msgspec.inspect.FloatType,
    msgspec.inspect.BoolType,
    msgspec.inspect.NoneType,
)


def map_column(field: str, key: str) -> str:
    """The column of ``field[key]``: ``head_entropy['op']`` → ``head_op_entropy``."""
    if field.startswith("head_"):
        return f"head_{key}_{field[len('head_') :]}"
    return f"{field}_{key}"


def escape_text(value: str) -> str:
    """Text as one physical line; reversible (``\\\\`` → ``\\``, ``\\n`` → newline, ``\\r`` → CR)."""
    if "\n" in value or "\r" in value or "\\" in value:
        return value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
    return value


def _other_cell(value: Any) -> Any:
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value  # int, float, bool or None: the csv module writes these itself


class _Layout:
    """How one event type flattens, worked out once from the contract's type info."""

    def __init__(self, kind: type[msgspec.Struct]) -> None:
        catalogue_fields = fields(kind)
        self.fields: tuple[str, ...] = tuple(f.name for f in catalogue_fields)
        kinds = [self._kind(f.type) for f in catalogue_fields]
        self.numeric = all(self._numeric(f.type) for f in catalogue_fields)
        self.map_positions: tuple[int, ...] = tuple(i for i, k in enumerate(kinds) if k == _MAP)
        # Runs of plain scalar fields are copied as one slice; the rest one by one.
        self.segments: list[tuple[int, int, int]] = []
        for i, k in enumerate(kinds):
            if k == _PLAIN and self.segments and self.segments[-1][0] == _PLAIN:
                self.segments[-1] = (_PLAIN, self.segments[-1][1], i + 1)
            else:
                self.segments.append((k, i, i + 1))
        self._columns: dict[tuple[tuple[str, ...], ...], Columns] = {}
        self._last: tuple[tuple[tuple[str, ...], ...], Columns] | None = None
        if self.numeric:
            self.row = self._numeric_row  # type: ignore[method-assign]
            # Each part: a slice of plain values, or the position of a map spread by its values.
            self._parts: tuple[tuple[bool, int | slice], ...] = tuple(
                (False, slice(start, stop)) if k == _PLAIN else (True, start)
                for k, start, stop in self.segments
            )

    def _numeric_row(self, seq: int, ts: float, rank: int, values: tuple[Any, ...]) -> list[Any]:
        """``row`` for a layout of numbers and maps of numbers: no per-value conversion at all."""
        row: list[Any] = [seq, ts, rank]
        for is_map, where in self._parts:
            row += values[where].values() if is_map else values[where]  # type: ignore[index]
        return row

    @staticmethod
    def _kind(t: msgspec.inspect.Type) -> int:
        if isinstance(t, msgspec.inspect.DictType):
            return _MAP
        if isinstance(t, msgspec.inspect.StrType):
            return _TEXT
        if isinstance(t, _SCALARS) or (
            isinstance(t, msgspec.inspect.UnionType) and all(isinstance(u, _SCALARS) for u in t.types)
        ):
            return _PLAIN  # numbers, bools and None: the csv module writes them as they are
        return _OTHER

    @staticmethod
    def _numeric(t: msgspec.inspect.Type) -> bool:
        """Only numbers (or None) ever: such rows take the fast JSON-number path in CsvFile."""
        if isinstance(t, msgspec.inspect.DictType):
            return _Layout._numeric(t.value_type)
        if isinstance(t, msgspec.inspect.UnionType):
            return all(_Layout._numeric(u) for u in t.types)
        return isinstance(t, (msgspec.inspect.IntType, msgspec.inspect.FloatType, msgspec.inspect.NoneType))

    def columns(self, values: tuple[Any, ...]) -> Columns:
        positions = self.map_positions
        if not positions:
            shape: tuple[tuple[str, ...], ...] = ()
        elif len(positions) == 2:  # ppo_update's two per-head maps: this runs for every row
            shape = (tuple(values[positions[0]]), tuple(values[positions[1]]))
        else:
            shape = tuple([tuple(values[i]) for i in positions])
        last = self._last
        if last is not None and shape == last[0]:  # as the row before: no hashing the keys again
            return last[1]
        cols = self._columns.get(shape)
        if cols is None:
            if len(self._columns) > 64:  # bounded, even for a producer that renames heads every update
                self._columns.clear()
            cols = self._columns[shape] = self._build(shape)
        self._last = (shape, cols)
        return cols

    def _build(self, shape: tuple[tuple[str, ...], ...]) -> Columns:
        keys = dict(zip(self.map_positions, shape, strict=True))
        out = list(LEADING)
        for i, name in enumerate(self.fields):
            if i in keys:
                out.extend(map_column(name, str(k)) for k in keys[i])
            else:
                out.append(name)
        return tuple(out)

    def row(self, seq: int, ts: float, rank: int, values: tuple[Any, ...]) -> list[Any]:
        row: list[Any] = [seq, ts, rank]
        extend = row.extend
        for kind, start, stop in self.segments:
            if kind == _PLAIN:
                extend(values[start:stop])
            elif kind == _MAP:
                extend(values[start].values() if self.numeric else map(_other_cell, values[start].values()))
            elif kind == _TEXT:
                row.append(escape_text(values[start]))
            else:
                row.append(_other_cell(values[start]))
        return row


_layouts: dict[type, _Layout] = {}

_numbers = msgspec.json.Encoder()
_astuple = msgspec.structs.astuple


def _layout(kind: type) -> _Layout:
    layout = _layouts.get(kind)
    if layout is None:
        layout = _layouts[kind] = _Layout(kind)
    return layout


def flatten(seq: int, ts: float, event: msgspec.Struct, rank: int = 0) -> tuple[Columns, list[Any], bool]:
    """The row's column names, its values in the same order, and whether every value is a number or None."""
    layout = _layout(type(event))
    values = _astuple(event)
    return layout.columns(values), layout.row(seq, ts, rank, values), layout.numeric


def encode_row(
    seq: int, ts: float, event: msgspec.Struct, rank: int = 0
) -> tuple[Columns, bytes | list[Any]]:
    """The row's columns and its CSV line, or its values where the csv module must write them.

    A row of numbers only is encoded by msgspec's JSON encoder: its numbers are valid CSV
    cells (the shortest text that reads back to the same float), ten times faster than
    ``repr``. None, NaN and infinity all encode as ``null``; such a row comes back as values,
    for the csv module to tell them apart (empty, ``nan``, ``inf``).
    """
    layout = _layout(type(event))
    values = _astuple(event)
    row = layout.row(seq, ts, rank, values)
    if layout.numeric:
        line = _numbers.encode(row)
        if b"n" not in line:  # numbers never hold an "n": only null does (one byte is a memchr, 20x faster)
            return layout.columns(values), line[1:-1] + b"\n"
    return layout.columns(values), row
