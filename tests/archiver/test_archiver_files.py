"""The archiver's files in-process: column names, whole lines, resume, schema rule, gap record."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from archiver_stream import HEADS, batch, ppo, started
from msgspec.structs import replace
from testkit.events import envelope

from bus.contract import Heartbeat, TrainingFinished
from bus.feed import Gap
from consumers.archiver import csvfile
from consumers.archiver.archiver import Archiver
from consumers.archiver.csvfile import CsvFile
from consumers.archiver.flatten import escape_text, flatten
from consumers.archiver.run import GAP_COLUMNS, RunArchive, run_dirname
from consumers.archiver.table import Table


def test_columns_start_with_seq_ts_and_rank_and_spread_heads_into_named_columns() -> None:
    columns, row, numeric = flatten(7, 1.5, ppo(3), rank=5)
    assert numeric
    assert columns[:4] == ("seq", "ts", "rank", "update")
    for head in HEADS:
        assert f"head_{head}_entropy" in columns and f"head_{head}_grad_norm" in columns
    assert "head_entropy" not in columns and len(columns) == len(row)
    values = dict(zip(columns, row, strict=True))
    assert values["head_op_entropy"] == 1.0 and values["head_slot_grad_norm"] == pytest.approx(0.2)
    assert values["seq"] == 7 and values["rank"] == 5 and values["update"] == 3


def test_every_row_is_one_line_and_text_round_trips(tmp_path: Path) -> None:
    error = 'Traceback:\n  File "x.py", line 1\r\nValueError: a, "b" \\ c'
    table = Table(tmp_path, "training_finished")
    columns, row, numeric = flatten(
        9, 2.0, TrainingFinished(reason="crashed", updates=3, env_steps=9, error=error)
    )
    assert not numeric
    table.append(columns, row, 9)
    table.close()
    path = tmp_path / "training_finished.csv"
    assert path.read_bytes().count(b"\n") == 2
    frame = pd.read_csv(path)
    stored = frame["error"][0]
    assert "\n" not in stored
    unescaped = stored.replace("\\\\", "\0").replace("\\n", "\n").replace("\\r", "\r").replace("\0", "\\")
    assert unescaped == error and escape_text(error) == stored


def test_a_torn_last_line_is_cut_when_the_file_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"seq,ts,x\n0,1.0,5\n1,2.0,6\n2,3.0")
    f = CsvFile(path)
    assert f.repaired_bytes == len(b"2,3.0") and f.header == ("seq", "ts", "x") and f.last_int() == 1
    f.append([2, 3.0, 7])
    f.close()
    assert pd.read_csv(path)["x"].tolist() == [5, 6, 7]


def test_a_torn_header_leaves_an_empty_file_that_gets_a_fresh_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"seq,t")
    f = CsvFile(path)
    assert f.header is None and f.last_int() is None
    f.set_header(["seq", "ts"])
    f.append([0, 1.0])
    f.close()
    assert path.read_text() == "seq,ts\n0,1.0\n"


def test_a_failed_write_is_undone_to_the_last_whole_line_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.csv"
    f = CsvFile(path, fsync=False)
    f.set_header(["seq", "v"])
    f.append([0, 10])
    assert f.flush()
    f.append([1, 11])
    f.append([2, 12])
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:3]))  # part of a line gets out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csvfile.os, "write", disk_full)
    assert not f.flush()
    assert path.read_text() == "seq,v\n0,10\n" and f.pending_rows == 2
    monkeypatch.setattr(csvfile.os, "write", real_write)
    assert f.flush()
    f.close()
    assert pd.read_csv(path)["v"].tolist() == [10, 11, 12]


def test_same_columns_in_another_order_share_a_file_and_new_columns_start_the_next(tmp_path: Path) -> None:
    table = Table(tmp_path, "ppo_update")
    table.append(("seq", "a", "b"), (0, 1, 2), 0)
    table.append(("seq", "b", "a"), (1, 20, 10), 1)
    table.append(("seq", "a", "b", "c"), (2, 1, 2, 3), 2)
    table.close()
    assert pd.read_csv(tmp_path / "ppo_update.csv").to_dict("list") == {
        "seq": [0, 1],
        "a": [1, 10],
        "b": [2, 20],
    }
    assert pd.read_csv(tmp_path / "ppo_update.2.csv").to_dict("list") == {
        "seq": [2],
        "a": [1],
        "b": [2],
        "c": [3],
    }

    resumed = Table(tmp_path, "ppo_update")
    assert resumed.max_seq == 2 and resumed.path == tmp_path / "ppo_update.2.csv"
    assert not resumed.is_new(2) and resumed.is_new(3)


def test_resuming_a_file_written_with_other_columns_starts_a_new_part(tmp_path: Path) -> None:
    (tmp_path / "ppo_update.csv").write_text("seq,ts,update\n0,1.0,0\n1,2.0,1\n")  # an older archiver
    run = RunArchive(tmp_path.parent, tmp_path.name)
    run.on_envelope(envelope(1, ppo(1), tmp_path.name), 0.0)  # already on disk
    run.on_envelope(envelope(2, ppo(2), tmp_path.name), 0.0)
    run.close()
    assert pd.read_csv(tmp_path / "ppo_update.csv")["update"].tolist() == [0, 1]
    assert pd.read_csv(tmp_path / "ppo_update.2.csv")["update"].tolist() == [2]


def test_a_resumed_run_skips_what_is_on_disk_and_records_what_it_never_got(tmp_path: Path) -> None:
    run = RunArchive(tmp_path, "r1")
    run.on_envelope(envelope(0, started(), "r1"), 100.0)
    for seq in range(1, 11):
        run.on_envelope(envelope(seq, ppo(seq) if seq % 2 else batch(seq), "r1"), 100.0)
    run.close()

    again = RunArchive(tmp_path, "r1")
    assert again.resumed and again.held_through == 10
    assert not again.on_envelope(envelope(0, started(), "r1"), 200.0)  # the replay resends history
    assert not again.on_envelope(envelope(9, ppo(9), "r1"), 200.0)
    assert again.on_envelope(envelope(14, ppo(14), "r1"), 200.0)  # 11..13: gone before the restart
    again.on_gap(Gap("r1", 15, 16, 0.0), 201.0)  # lost on the way while connected
    again.on_envelope(envelope(17, batch(17), "r1"), 202.0)
    again.close()
    assert again.stats.duplicates == 2 and again.stats.missed == 2 and again.stats.unseen == 3
    gaps = pd.read_csv(tmp_path / "r1" / "gaps.csv")
    assert tuple(gaps.columns) == GAP_COLUMNS
    assert gaps[["from", "to", "count", "cause"]].values.tolist() == [
        [11, 13, 3, "unseen"],
        [15, 16, 2, "lost"],
    ]
    assert gaps["detected_at"].tolist() == [200.0, 201.0]
    ppo_rows = pd.read_csv(tmp_path / "r1" / "ppo_update.csv")
    assert ppo_rows["seq"].tolist() == [1, 3, 5, 7, 9, 14]
    assert json.loads((tmp_path / "r1" / "run.json").read_text())["seq"] == 0


def test_run_ids_cannot_escape_the_output_directory(tmp_path: Path) -> None:
    for run_id in ("../../etc", "..", "/abs/path", "a b\nc", ""):
        name = run_dirname(run_id)
        assert (
            "/" not in name and name.strip(".") and (tmp_path / name).resolve().parent == tmp_path.resolve()
        )


def test_the_archiver_switches_runs_and_reports_each(tmp_path: Path) -> None:
    lines: list[str] = []
    arch = Archiver(tmp_path, report=lines.append, wall_clock=lambda: 42.0)
    items = [
        envelope(0, started(), "a"),
        envelope(1, ppo(0), "a"),
        Gap("a", 2, 4, 0.0),
        envelope(5, ppo(1), "a"),
    ]
    items.append(envelope(6, TrainingFinished(reason="done", updates=2, env_steps=1), "a"))
    beat = Heartbeat(
        period_s=1.0, phase="rollout", update=0, uptime_s=1.0, dropped=0, dropped_since_last=0, sent=1
    )
    items += [envelope(0, started(), "b", ts=1.8e9), envelope(1, beat, "b", ts=1.8e9 + 1)]
    arch.handle(items, now=1.0)
    arch.close()
    assert [line.split(":")[1].strip() for line in lines] == ["run a", "run b"]
    assert "missed 3 messages in 1 gaps" in lines[0] and "training finished (done)" in lines[0]
    assert pd.read_csv(tmp_path / "a" / "gaps.csv")[["from", "to", "detected_at"]].values.tolist() == [
        [2, 4, 42]
    ]
    assert pd.read_csv(tmp_path / "b" / "heartbeat.csv")["phase"].tolist() == ["rollout"]
    assert not (tmp_path / "b" / "gaps.csv").exists()


def test_every_file_reads_with_pandas_without_options(tmp_path: Path) -> None:
    arch = Archiver(tmp_path, report=lambda line: None)
    items = [envelope(0, started(), "r")]
    for u in range(6):
        items += [envelope(2 * u + 1, ppo(u), "r"), envelope(2 * u + 2, batch(u), "r")]
    arch.handle(items, now=0.0)
    arch.close()
    for path in (tmp_path / "r").glob("*.csv"):
        frame = pd.read_csv(path)
        assert len(frame) > 0 and frame.columns[0] == "seq", path
    returns = pd.read_csv(tmp_path / "r" / "batch_completed.csv")["return_mean"]
    assert returns.isna().tolist() == [u % 3 == 0 for u in range(6)]  # None is an empty cell


def test_numbers_round_trip_exactly_and_none_nan_inf_stay_distinct(tmp_path: Path) -> None:
    odd = replace(
        ppo(1), policy_loss=math.nan, value_loss=math.inf, grad_norm=-math.inf, kl_divergence=1e-300
    )
    plain = replace(ppo(2), policy_loss=0.1 + 0.2, value_loss=1 / 3, env_steps=2**53 + 1)
    table = Table(tmp_path, "ppo_update")
    for seq, event in ((1, odd), (2, plain)):
        columns, row, numeric = flatten(seq, 1.7e9 + seq / 7, event)
        table.append(columns, row, seq, numeric)
    table.close()
    with open(tmp_path / "ppo_update.csv", newline="") as f:
        first, second = list(csv.DictReader(f))
    assert (first["policy_loss"], first["value_loss"], first["grad_norm"]) == ("nan", "inf", "-inf")
    assert float(first["kl_divergence"]) == 1e-300
    assert float(second["policy_loss"]) == 0.1 + 0.2 and float(second["value_loss"]) == 1 / 3
    assert int(second["env_steps"]) == 2**53 + 1 and float(second["ts"]) == 1.7e9 + 2 / 7
    frame = pd.read_csv(tmp_path / "ppo_update.csv")
    assert math.isnan(frame["policy_loss"][0]) and frame["value_loss"][0] == math.inf
    assert frame["grad_norm"][0] == -math.inf
