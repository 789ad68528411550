"""All CSV files of one kind of row in a run directory, and the rule for a change of columns.

Rule (docs/archiver.md): a file's columns never change. When rows arrive whose set of
columns differs from the current file's header (a new field, a head added or renamed,
an archiver of another version resuming the run), the table continues in the next
numbered file: ``ppo_update.csv``, then ``ppo_update.2.csv``, ``ppo_update.3.csv``.
The same columns in another order are simply written in the file's order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from consumers.archiver.csvfile import CsvFile
from consumers.archiver.flatten import encode_row, flatten

log = logging.getLogger(__name__)


def part_path(directory: Path, name: str, part: int) -> Path:
    return directory / (f"{name}.csv" if part == 1 else f"{name}.{part}.csv")


def existing_parts(directory: Path, name: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(name)}(?:\.(\d+))?\.csv$")
    parts = []
    for path in directory.glob(f"{name}*.csv"):
        m = pattern.match(path.name)
        if m and (m.group(1) is None or int(m.group(1)) >= 2):
            parts.append(int(m.group(1) or 1))
    return sorted(parts)


def _max_seq_per_rank(f: CsvFile) -> dict[int, int]:
    """The largest seq on disk per rank; a file without a ``rank`` column (an older archiver's) is rank 0's.

    With ranks, the whole file is read: the ranks interleave, so no tail window holds every
    rank's last row. ``seq`` and ``rank`` come before any text column, so a plain split suffices.
    """
    header = f.header or ()
    if "rank" not in header or "seq" not in header:
        last = f.last_int(0)
        return {} if last is None else {0: last}
    i_seq, i_rank = header.index("seq"), header.index("rank")
    cut = max(i_seq, i_rank) + 1
    best: dict[int, int] = {}
    with open(f.path, "rb") as raw:
        raw.readline()
        for line in raw:
            cells = line.split(b",", cut)
            try:
                seq, rank = int(cells[i_seq]), int(cells[i_rank])
            except (ValueError, IndexError):
                continue  # a line edited by hand: skipped, as CsvFile.last_int does
            if seq > best.get(rank, -1):
                best[rank] = seq
    return best


class Table:
    """Rows of one kind (one event type, or the gap record) across its numbered CSV files."""

    def __init__(self, directory: Path, name: str, *, fsync: bool = True, keyed: bool = True) -> None:
        self.directory = directory
        self.name = name
        self.fsync = fsync
        self.keyed = keyed
        self.max_seqs: dict[int, int] = {}
        """Largest seq on disk or buffered, per rank; a keyed table refuses a rank's rows at or below
        its own (a restart's replay), so a row's key is (rank, seq)."""
        self.repaired_bytes = 0
        self.rolls = 0
        self._lost_closed = 0
        self._part = 0
        self._file: CsvFile | None = None
        self._order: dict[tuple[str, ...], list[int] | None] = {}
        for part in existing_parts(directory, name):
            f = CsvFile(part_path(directory, name, part), fsync=fsync)
            self.repaired_bytes += f.repaired_bytes
            if keyed:
                for rank, last in _max_seq_per_rank(f).items():
                    if last > self.max_seqs.get(rank, -1):
                        self.max_seqs[rank] = last
            if self._file is not None:
                self._file.close()
            self._file, self._part = f, part

    @property
    def path(self) -> Path | None:
        return self._file.path if self._file is not None else None

    @property
    def pending_rows(self) -> int:
        return self._file.pending_rows if self._file is not None else 0

    @property
    def lost_rows(self) -> int:
        """Rows the disk refused and that were given up on, across this table's files."""
        return self._lost_closed + (self._file.rows_lost if self._file is not None else 0)

    @property
    def buffered_bytes(self) -> int:
        return self._file.buffered_bytes if self._file is not None else 0

    @property
    def max_seq(self) -> int | None:
        """Rank 0's largest seq (a single-process run's only rank); None before any."""
        return self.max_seqs.get(0)

    def is_new(self, seq: int, rank: int = 0) -> bool:
        return seq > self.max_seqs.get(rank, -1)

    def append(
        self,
        columns: tuple[str, ...],
        row: Sequence[Any],
        seq: int | None = None,
        numeric: bool = False,
        rank: int = 0,
    ) -> None:
        """Buffer one row (call ``is_new`` first for keyed tables); ``numeric``: see ``CsvFile.append``."""
        f = self._file
        if f is None or (f.header is not None and columns != f.header and self._reorder(f, columns) is None):
            f = self._next_part(columns)
        if f.header is None:
            f.set_header(columns)
        order = None if columns == f.header else self._reorder(f, columns)
        f.append(row if order is None else [row[i] for i in order], numeric)
        if seq is not None:
            self.max_seqs[rank] = seq

    def append_event(self, seq: int, ts: float, event: msgspec.Struct, rank: int = 0) -> None:
        """Buffer ``event`` as the row of ``rank``'s ``seq`` (call ``is_new`` first)."""
        columns, line = encode_row(seq, ts, event, rank)
        f = self._file
        if f is not None and type(line) is bytes:
            header = f.header
            if columns is header or columns == header:
                f.append_line(line)
                self.max_seqs[rank] = seq
                return
        if type(line) is bytes:  # a new file, or the file's columns in another order
            columns, row, numeric = flatten(seq, ts, event, rank)
            self.append(columns, row, seq, numeric, rank)
        else:
            self.append(columns, line, seq, rank=rank)

    def _reorder(self, f: CsvFile, columns: tuple[str, ...]) -> list[int] | None:
        """Indices that put ``columns`` into the file's order, or None when the sets differ."""
        if columns in self._order:
            return self._order[columns]
        header = f.header or ()
        order = None
        if len(columns) == len(header) and set(columns) == set(header):
            index = {c: i for i, c in enumerate(columns)}
            order = [index[c] for c in header]
        if len(self._order) > 64:
            self._order.clear()
        self._order[columns] = order
        return order

    def _next_part(self, columns: tuple[str, ...]) -> CsvFile:
        old = self._file
        if old is not None:
            old.close()
            self._lost_closed += old.rows_lost
            added = [c for c in columns if c not in (old.header or ())]
            removed = [c for c in (old.header or ()) if c not in columns]
            self.rolls += 1
            log.info(
                "%s: columns changed (added %s, removed %s); continuing in %s",
                old.path.name,
                added or "none",
                removed or "none",
                part_path(self.directory, self.name, self._part + 1).name,
            )
        self._order.clear()
        self._part += 1
        self._file = CsvFile(part_path(self.directory, self.name, self._part), fsync=self.fsync)
        return self._file

    def flush(self) -> bool:
        return self._file.flush() if self._file is not None else True

    def close(self) -> bool:
        if self._file is None:
            return True
        ok = self._file.close()
        self._lost_closed += self._file.rows_lost
        self._file = None
        return ok
