"""Reading archives back: exact values, older and newer layouts, bad input named by file and line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest
from testkit.archive import envelopes, eventful_run, write_archive
from testkit.proc import Proc

from consumers.archiver.flatten import escape_text
from consumers.archiver.reader import ArchiveError, open_archive, unescape_text


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_archive(tmp_path, envelopes(eventful_run(updates=10), hole=(7, 8)))


def test_every_envelope_comes_back_bit_for_bit(tmp_path: Path) -> None:
    items = envelopes(eventful_run(updates=30), hole=(7, 8))
    archive = open_archive(write_archive(tmp_path, items))
    back = archive.read_all()
    encode = msgspec.msgpack.encode
    assert [encode(e) for e in back] == [encode(e) for e in items]  # NaN, ±inf, None, text included
    assert any(math.isnan(e.event.policy_loss) for e in back if hasattr(e.event, "policy_loss"))
    assert [(g.first, g.last, g.cause) for g in archive.gaps] == [(7, 8, "unseen")]
    assert archive.warnings == []


@pytest.mark.parametrize("text", ["", "plain", "a\nb", "c:\\dir\\n", "\\\\n", "\r\n\\"])
def test_unescape_inverts_the_archivers_escape(text: str) -> None:
    assert unescape_text(escape_text(text)) == text


def test_a_missing_run_json_is_an_error_naming_it(run_dir: Path) -> None:
    (run_dir / "run.json").unlink()
    with pytest.raises(ArchiveError, match=r"run\.json: missing"):
        open_archive(run_dir)


def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such run directory"):
        open_archive(tmp_path / "nope")


def test_a_broken_run_json_names_its_line(run_dir: Path) -> None:
    (run_dir / "run.json").write_text('{\n  "run_id": "x",\n  oops\n}\n')
    with pytest.raises(ArchiveError, match=r"run\.json:3: not JSON"):
        open_archive(run_dir)


def test_a_torn_last_line_is_skipped_with_a_warning_naming_file_and_line(run_dir: Path) -> None:
    path = run_dir / "ppo_update.csv"
    whole = path.read_text()
    rows = whole.count("\n")
    path.write_text(whole + "123,17000")  # a write cut short
    archive = open_archive(run_dir)
    back = archive.read_all()
    assert sum(type(e.event).__name__ == "PPOUpdate" for e in back) == 10
    assert archive.warnings == [
        f"{path}:{rows + 1}: torn last line (no line end, 9 bytes: a write cut short); skipped"
    ]


def test_a_truncated_row_inside_a_file_is_an_error_naming_file_and_line(run_dir: Path) -> None:
    path = run_dir / "batch_completed.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3][:20] + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ArchiveError, match=rf"{path}:4: \d+ cells, the header has \d+"):
        open_archive(run_dir).read_all()


def test_an_unparseable_value_names_file_line_and_column(run_dir: Path) -> None:
    path = run_dir / "heartbeat.csv"
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[1].rstrip("\n").split(",")
    cells[header.index("phase")] = "dancing"
    lines[1] = ",".join(cells) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ArchiveError, match=rf"{path}:2: unreadable value in column 'phase'"):
        open_archive(run_dir).read_all()


def test_an_unknown_column_is_skipped_with_a_warning(run_dir: Path) -> None:
    path = run_dir / "batch_completed.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",from_the_future"] + [line + ",7" for line in lines[1:]]) + "\n")
    archive = open_archive(run_dir)
    assert len(archive.read_all()) == len(open_archive(run_dir).read_all())
    assert (
        f"{path}:1: column 'from_the_future' is not a field of this contract's batch_completed; skipped"
        in (archive.warnings)
    )


def test_an_older_layout_without_a_defaulted_field_reads_with_the_default(run_dir: Path) -> None:
    path = run_dir / "training_finished.csv"
    lines = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name != "error"]
    path.write_text("\n".join(",".join(row[i] for i in keep) for row in lines) + "\n")
    finish = open_archive(run_dir).read_all()[-1].event
    assert finish.error == ""  # type: ignore[union-attr]


def test_a_missing_required_column_is_an_error(run_dir: Path) -> None:
    path = run_dir / "heartbeat.csv"
    lines = [line.split(",") for line in path.read_text().splitlines()]
    drop = lines[0].index("uptime_s")
    path.write_text("\n".join(",".join(c for i, c in enumerate(row) if i != drop) for row in lines) + "\n")
    with pytest.raises(ArchiveError, match=rf"{path}:1: no column for uptime_s"):
        open_archive(run_dir).read_all()


def test_seqs_out_of_order_are_an_error(run_dir: Path) -> None:
    path = run_dir / "ppo_update.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines))
    with pytest.raises(ArchiveError, match=rf"{path}:4: seq \d+ is not after seq \d+ \(ppo_update.csv:3\)"):
        open_archive(run_dir).read_all()


def test_an_empty_file_and_an_unknown_event_file_are_skipped(run_dir: Path) -> None:
    (run_dir / "heartbeat.csv").write_text("")
    (run_dir / "gpu_sample.csv").write_text("seq,ts,x\n3,1.0,2\n")
    archive = open_archive(run_dir)
    archive.read_all()
    assert any("heartbeat.csv: empty file" in w for w in archive.warnings)
    assert any("gpu_sample.csv: not an event type this version knows" in w for w in archive.warnings)


def test_the_replay_command_reports_a_bad_archive_without_a_traceback(run_dir: Path) -> None:
    (run_dir / "run.json").write_text(json.dumps({"run_id": "x"}))
    player = Proc("consumers.replay", str(run_dir), "--endpoint", "tcp://127.0.0.1:1")
    assert player.wait(60) == 2
    assert "run.json: not a training_started record" in player.stderr_text()
    assert "Traceback" not in player.stderr_text()
