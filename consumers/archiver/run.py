"""The archive of one run: ``<out>/<run_id>/`` with run.json, one CSV per event type and gaps.csv."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bus.contract import TOPICS, Envelope, TrainingStarted, topic_of
from bus.feed import Gap
from bus.text import printable
from consumers.archiver.csvfile import fsync_dir
from consumers.archiver.table import Table, existing_parts

log = logging.getLogger(__name__)

GAP_COLUMNS = ("from", "to", "count", "detected_at", "cause", "rank")
LOST = "lost"
"""Gap cause: sent while this archiver was connected, never received (bus.feed reported it)."""
UNSEEN = "unseen"
"""Gap cause: never delivered to this archiver as an event it knows: sent while it was not
connected (started late, restarted) and no longer in the publisher's replay cache when it
(re)joined, or of an event type newer than this archiver (the bus skips those)."""

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def run_dirname(run_id: str) -> str:
    """A directory name for ``run_id`` that cannot leave the output directory."""
    name = _SAFE.sub("_", run_id)[:128]
    return name if name.strip(".") else f"run_{name}"


@dataclass
class RunStats:
    """What this archiver wrote for the run in this session."""

    rows: dict[str, int] = field(default_factory=dict)
    """Rows taken in, by event type (what reached disk: these less ``RunArchive.lost()``)."""
    run_json_lost: int = 0
    duplicates: int = 0
    gaps: int = 0
    missed: int = 0
    unseen: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


class RunArchive:
    """Appends one run's events to its directory; resumes the same directory without duplicating rows."""

    def __init__(self, out: Path, run_id: str, *, fsync: bool = True) -> None:
        self.run_id = run_id
        self.directory = out / run_dirname(run_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.stats = RunStats()
        self._tables: dict[str, Table] = {}
        self._gaps = Table(self.directory, "gaps", fsync=fsync, keyed=False)
        self._run_json = self.directory / "run.json"
        self._started_seq = self._read_started_seq()
        self.resumed = self._run_json.exists() or any(self.directory.glob("*.csv"))
        # Per rank, every seq up to here is on disk (or recorded as a gap): the base for spotting holes.
        self.held: dict[int, int] = {} if self._started_seq is None else {0: self._started_seq}
        for name in TOPICS:
            if existing_parts(self.directory, name):
                for rank, last in self._table(name).max_seqs.items():
                    self.held[rank] = max(self.held.get(rank, -1), last)
        self._synced_paths: tuple[Path | None, ...] = ()
        self._sinks: dict[type, tuple[str, Table]] = {}
        if self.resumed:
            log.info("resuming %s: rows up to seq %d are on disk", self.directory, self.held_through)

    @property
    def held_through(self) -> int:
        """Rank 0's: every seq up to here is on disk or recorded as a gap."""
        return self.held.get(0, -1)

    def _read_started_seq(self) -> int | None:
        try:
            return int(json.loads(self._run_json.read_text())["seq"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s); it will be rewritten from the replay", self._run_json, exc)
            return None

    def _table(self, name: str) -> Table:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = Table(self.directory, name, fsync=self.fsync)
        return table

    # -- input --------------------------------------------------------------------

    def on_envelope(self, env: Envelope, detected_at: float) -> bool:
        """Archive one envelope of this run; False when it is already on disk."""
        event = env.event
        seq = env.seq
        rank = env.rank
        kind = type(event)
        if kind is TrainingStarted and rank == 0:  # the other ranks' are rows of training_started.csv
            if self._started_seq is not None and seq <= self._started_seq:
                self.stats.duplicates += 1
                return False
            try:
                self._write_run_json(env, event)  # type: ignore[arg-type]
            except OSError as exc:  # a full disk: counted lost, the rest of the run still recorded
                log.error("%s: could not write run.json: %s", self.directory, exc)
                self.stats.run_json_lost += 1
            else:
                self._started_seq = seq
            name = "training_started"
        else:
            sink = self._sinks.get(kind)
            if sink is None:
                name = topic_of(event)
                sink = self._sinks[kind] = (name, self._table(name))
            name, table = sink
            if seq <= table.max_seqs.get(rank, -1):  # Table.is_new, inline: this runs for every event
                self.stats.duplicates += 1
                return False
            table.append_event(seq, env.ts, event, rank)
        held = self.held.get(rank, -1)
        if seq > held:
            if seq > held + 1:
                self._record_gap(held + 1, seq - 1, detected_at, UNSEEN, rank)
            self.held[rank] = seq
        stats = self.stats
        rows = stats.rows
        rows[name] = rows.get(name, 0) + 1
        if stats.first_seq is None:
            stats.first_seq = seq
        stats.last_seq = seq
        return True

    def on_gap(self, gap: Gap, detected_at: float) -> None:
        """A range the bus lost while this archiver was connected."""
        first = max(gap.first, self.held.get(gap.rank, -1) + 1)
        if gap.last >= first:
            self._record_gap(first, gap.last, detected_at, LOST, gap.rank)
            self.held[gap.rank] = gap.last

    def _record_gap(self, first: int, last: int, detected_at: float, cause: str, rank: int = 0) -> None:
        count = last - first + 1
        self._gaps.append(GAP_COLUMNS, (first, last, count, detected_at, cause, rank))
        if cause == LOST:
            self.stats.gaps += 1
            self.stats.missed += count
        else:
            self.stats.unseen += count

    def _write_run_json(self, env: Envelope, event: TrainingStarted) -> None:
        doc = {
            "run_id": env.run_id,
            "seq": env.seq,
            "ts": env.ts,
            "schema": env.schema,
            "training_started": msgspec.to_builtins(event),
        }
        tmp = self._run_json.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self._run_json)

    # -- output -------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        return sum(t.buffered_bytes for t in self._tables.values()) + self._gaps.buffered_bytes

    def flush(self) -> bool:
        ok = all([t.flush() for t in self._tables.values()])
        ok = self._gaps.flush() and ok
        paths = (*(t.path for t in self._tables.values()), self._gaps.path)
        if ok and self.fsync and paths != self._synced_paths:
            fsync_dir(self.directory)  # a new file's name is durable only once its directory is synced
            self._synced_paths = paths
        return ok

    def close(self) -> bool:
        ok = all([t.close() for t in self._tables.values()])
        return self._gaps.close() and ok

    def lost(self) -> dict[str, int]:
        """Rows taken in but refused by the disk, by event type (``gaps`` for gap records); nonzero only."""
        out = {name: table.lost_rows for name, table in self._tables.items() if table.lost_rows}
        if self.stats.run_json_lost:
            out["training_started"] = self.stats.run_json_lost
        if self._gaps.lost_rows:
            out["gaps"] = self._gaps.lost_rows
        return out

    @property
    def lost_total(self) -> int:
        return sum(self.lost().values())

    def summary(self) -> str:
        """One line: the rows that reached disk by event type, then what was missed, lost or skipped."""
        s = self.stats
        lost = self.lost()
        written = {name: n - lost.get(name, 0) for name, n in s.rows.items()}
        total = sum(written.values())
        parts = ", ".join(f"{name} {n}" for name, n in sorted(written.items())) or "nothing new"
        span = f"seq {s.first_seq}..{s.last_seq}" if s.first_seq is not None else "no new seq"
        line = (
            f"run {printable(self.run_id)}: {total} rows written ({parts}; {span}) in {self.directory}; "
            f"missed {s.missed} messages in {s.gaps} gaps"
        )
        if lost:
            kinds = ", ".join(f"{name} {n}" for name, n in sorted(lost.items()))
            line += f"; LOST {sum(lost.values())} rows the disk refused ({kinds})"
        if s.unseen:
            line += (
                f"; {s.unseen} not seen (sent while not connected and no longer replayable, or unknown types)"
            )
        if s.duplicates:
            line += f"; {s.duplicates} already on disk skipped"
        return line
