"""One append-only CSV file that only ever holds whole lines, whatever kills the process.

Rows are formatted into an in-memory buffer and written by ``flush``. A file is opened
by first cutting off a torn last line (a write cut short by SIGKILL or a full disk), so
a reader never sees half a row twice. A failed write is undone to the last whole line
and the rows are kept for the next flush; rows the disk still refuses when the file is
closed, or that pile up past ``MAX_PENDING_BYTES``, are dropped and counted in ``rows_lost``.

A new file is born with its header: the header is written to a hidden temporary file,
fsynced and renamed into place at once (not at the next flush), so every CSV file that
exists, even one made a moment before a SIGKILL, reads with ``pandas.read_csv``.

Formatting: a row of numbers only is encoded by msgspec's JSON encoder (its numbers are
valid CSV cells, and it formats floats about ten times faster than ``repr``); a row
with text, None, NaN or infinity goes through the csv module (``nan``, ``inf``, empty).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)

TAIL_BYTES = 1 << 16
MAX_PENDING_BYTES = 32 << 20
"""Rows waiting on a disk that refuses them are dropped (and counted lost) past this many bytes."""

_numbers = msgspec.json.Encoder()


class CsvFile:
    """Append rows to ``path``; ``set_header`` creates a new file (or fills an empty one) with its header."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self.repaired_bytes = 0
        self._size = 0
        self.header: tuple[str, ...] | None = None
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            self._fd = -1  # created by set_header, header and all
        else:
            self.repaired_bytes = self._cut_torn_tail()
            self._size = os.fstat(self._fd).st_size
            self.header = self._read_header() if self._size else None
        self._header_line: bytes | None = None
        """The header, while the disk has not taken it yet."""
        self._lines: list[bytes] = []
        self._buffered = 0
        self._text = io.StringIO()
        self._writer = csv.writer(self._text, lineterminator="\n")
        self.pending_rows = 0
        self.rows_written = 0
        self.rows_lost = 0
        """Rows the disk refused (ENOSPC, EIO on write or fsync) and that were given up on."""

    # -- reading what is already there -----------------------------------------

    def _cut_torn_tail(self) -> int:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        start = max(0, size - TAIL_BYTES)
        while True:
            tail = os.pread(self._fd, size - start, start)
            if tail.endswith(b"\n"):
                return 0
            cut = tail.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            if start == 0:
                keep = 0
                break
            start = max(0, start - TAIL_BYTES)
        os.ftruncate(self._fd, keep)
        log.warning("%s: cut a torn last line (%d bytes) left by an earlier crash", self.path, size - keep)
        return size - keep

    def _read_header(self) -> tuple[str, ...]:
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            line = f.readline()
        return tuple(next(csv.reader([line]), []))

    def last_int(self, column: int = 0) -> int | None:
        """The integer in ``column`` of the last row on disk, None without rows.

        Rows are appended in seq order, so the last line answers; when it does not parse
        (a file edited by hand), the whole file is scanned for the largest value.
        """
        if self._size == 0:
            return None
        start = max(0, self._size - TAIL_BYTES)
        lines = os.pread(self._fd, self._size - start, start).split(b"\n")[:-1]
        lines = lines[1:]  # the header, or a line cut by the start of the window
        if lines:
            try:
                return int(next(csv.reader([lines[-1].decode("utf-8", "replace")]))[column])
            except (ValueError, IndexError, StopIteration):
                return self._scan_max(column)
        return None if start == 0 else self._scan_max(column)

    def _scan_max(self, column: int) -> int | None:
        best: int | None = None
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                try:
                    value = int(row[column])
                except (ValueError, IndexError):
                    continue
                best = value if best is None else max(best, value)
        return best

    # -- writing ------------------------------------------------------------------

    def set_header(self, header: Sequence[str]) -> None:
        """Write the header of a new or empty file now, fsynced; if the disk refuses it, at the next flush."""
        assert self._size == 0 and self.pending_rows == 0, "the header goes first"
        self.header = tuple(header)
        self._header_line = self._format(self.header)
        self.flush()

    def append(self, row: Sequence[Any], numeric: bool = False) -> None:
        """Buffer one row; ``numeric`` promises it holds only ints, floats and None (no bools)."""
        if numeric:
            line = _numbers.encode(row)
            if b"null" not in line:  # None, NaN and inf all encode as null: let csv tell them apart
                self._add(line[1:-1] + b"\n")
                self.pending_rows += 1
                return
        self._add(self._format(row))
        self.pending_rows += 1

    def append_line(self, line: bytes) -> None:
        """Buffer one row already encoded as a whole CSV line (``flatten.encode_row``)."""
        self._lines.append(line)
        self._buffered += len(line)
        self.pending_rows += 1

    def _format(self, row: Sequence[Any]) -> bytes:
        self._text.seek(0)
        self._text.truncate()
        self._writer.writerow(row)
        return self._text.getvalue().encode("utf-8")

    def _add(self, line: bytes) -> None:
        self._lines.append(line)
        self._buffered += len(line)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def flush(self) -> bool:
        """Write the buffered lines (then fsync); False, with the rows still buffered, on an I/O error.

        Past ``MAX_PENDING_BYTES`` of refused rows, they are dropped and counted in ``rows_lost``.
        """
        if not self._lines and self._header_line is None:
            return True
        data = b"".join(self._lines if self._header_line is None else [self._header_line, *self._lines])
        try:
            if self._fd < 0:
                self._create(data)
            else:
                _write_all(self._fd, data)
                if self.fsync:
                    os.fsync(self._fd)
        except OSError as exc:
            # Undo a partial write so the file still ends on a whole line; retry next flush.
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            if self._buffered > MAX_PENDING_BYTES:
                log.error("%s: write failed, %d rows lost: %s", self.path, self.pending_rows, exc)
                self._drop()
            else:
                log.error(
                    "%s: write failed, %d rows kept for the next try: %s", self.path, self.pending_rows, exc
                )
            return False
        self._size += len(data)
        self.rows_written += self.pending_rows
        self.pending_rows = 0
        self._header_line = None
        self._lines = []
        self._buffered = 0
        return True

    def _create(self, data: bytes) -> None:
        """Make the file with ``data`` (its header first) in one step: no reader ever sees it empty."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
            os.rename(tmp, self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fd = fd
        if self.fsync:
            fsync_dir(self.path.parent)  # the new name is durable too

    def _drop(self) -> None:
        """Give up on the buffered rows (the header, if still unwritten, stays)."""
        self.rows_lost += self.pending_rows
        self.pending_rows = 0
        self._lines = []
        self._buffered = 0

    def close(self) -> bool:
        """Flush and close; rows the disk still refuses are counted in ``rows_lost``."""
        ok = self.flush()
        if not ok and self.pending_rows:
            log.error("%s: %d rows lost: the disk refused them", self.path, self.pending_rows)
            self._drop()
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        return ok


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make new names in ``directory`` durable (best effort: some file systems refuse a directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
