"""A disk that refuses rows, in-process: what is lost is counted and said; no file exists without a header."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pytest
from archiver_stream import batch, ppo, started
from testkit.events import envelope

from consumers.archiver import csvfile
from consumers.archiver.archiver import Archiver
from consumers.archiver.csvfile import CsvFile
from consumers.archiver.run import RunArchive


def _refuse(err: int):
    def fail(*args: object) -> int:
        raise OSError(err, os.strerror(err))

    return fail


def _items(run_id: str = "r", updates: int = 5) -> list:
    items = [envelope(0, started(), run_id)]
    for u in range(updates):
        items += [envelope(2 * u + 1, ppo(u), run_id), envelope(2 * u + 2, batch(u), run_id)]
    return items


def test_a_new_file_appears_with_its_header_before_any_flush(tmp_path: Path) -> None:
    path = tmp_path / "ppo_update.csv"
    f = CsvFile(path)
    assert not path.exists(), "opening does not create an empty file"
    f.set_header(["seq", "ts", "x"])
    assert path.read_text() == "seq,ts,x\n"  # on disk now, not at the next flush
    assert pd.read_csv(path).columns.tolist() == ["seq", "ts", "x"]
    assert [p.name for p in tmp_path.iterdir()] == ["ppo_update.csv"]  # no temporary file left behind
    f.append([0, 1.0, 5])
    f.close()
    assert pd.read_csv(path)["x"].tolist() == [5]


def test_a_header_the_disk_refuses_leaves_no_file_and_goes_out_with_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.csv"
    real_write = os.write
    monkeypatch.setattr(csvfile.os, "write", _refuse(errno.ENOSPC))
    f = CsvFile(path, fsync=False)
    f.set_header(["seq", "v"])
    f.append([0, 10])
    assert not f.flush()
    assert list(tmp_path.iterdir()) == []  # neither an empty CSV nor a temporary file
    monkeypatch.setattr(csvfile.os, "write", real_write)
    assert f.close() and f.rows_lost == 0
    assert path.read_text() == "seq,v\n0,10\n"


@pytest.mark.parametrize(
    ("call", "err"), [("write", errno.ENOSPC), ("write", errno.EIO), ("fsync", errno.EIO)]
)
def test_rows_the_disk_refuses_are_counted_lost_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, err: int
) -> None:
    lines: list[str] = []
    arch = Archiver(tmp_path, report=lines.append)
    arch.handle(_items(updates=3), now=0.0)
    assert arch.flush()  # 3 ppo_update and 3 batch_completed rows reach disk
    monkeypatch.setattr(csvfile.os, call, _refuse(err))
    arch.handle([envelope(7 + u, ppo(3 + u), "r") for u in range(4)], now=1.0)
    assert not arch.flush()
    assert not arch.close()
    assert arch.rows_lost == 4
    (line,) = lines
    assert "run r: 7 rows written (batch_completed 3, ppo_update 3, training_started 1;" in line
    assert line.endswith("; LOST 4 rows the disk refused (ppo_update 4)")
    monkeypatch.undo()
    assert pd.read_csv(tmp_path / "r" / "ppo_update.csv")["update"].tolist() == [0, 1, 2]


def test_refused_rows_past_the_memory_bound_are_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csvfile, "MAX_PENDING_BYTES", 1000)
    lines: list[str] = []
    arch = Archiver(tmp_path, report=lines.append)
    arch.handle(_items(updates=1), now=0.0)
    assert arch.flush()
    real_write = os.write
    monkeypatch.setattr(csvfile.os, "write", _refuse(errno.ENOSPC))
    arch.handle([envelope(3 + u, ppo(1 + u), "r") for u in range(10)], now=1.0)  # > 1000 bytes waiting
    assert not arch.flush()
    assert arch.run is not None and arch.run.buffered_bytes == 0  # given up on: memory stays bounded
    monkeypatch.setattr(csvfile.os, "write", real_write)  # the disk has room again
    arch.handle([envelope(13, ppo(11), "r")], now=2.0)
    assert arch.close()
    assert arch.rows_lost == 10
    assert pd.read_csv(tmp_path / "r" / "ppo_update.csv")["update"].tolist() == [0, 11]
    assert "ppo_update 2," in lines[0] and lines[0].endswith("LOST 10 rows the disk refused (ppo_update 10)")


def test_a_run_json_the_disk_refuses_is_counted_and_the_run_still_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: RunArchive, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunArchive, "_write_run_json", full)
    lines: list[str] = []
    arch = Archiver(tmp_path, report=lines.append)
    arch.handle(_items(updates=2), now=0.0)
    assert arch.close()
    assert arch.rows_lost == 1 and "LOST 1 rows the disk refused (training_started 1)" in lines[0]
    assert len(pd.read_csv(tmp_path / "r" / "ppo_update.csv")) == 2
