"""The archiver with several ranks: a rank column in every CSV, and resume keyed on (rank, seq)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from archiver_stream import batch, ppo, started
from testkit.events import envelope, heartbeat

from bus.feed import Feed, Gap
from consumers.archiver.archiver import Archiver
from consumers.archiver.run import GAP_COLUMNS, RunArchive


def two_rank_stream(run_id: str, first: int, last: int) -> list:
    """Seqs ``first..last`` of both ranks, interleaved; each rank's seq 0 is its training_started."""
    out = []
    for seq in range(first, last + 1):
        for rank in (1, 0):
            event = started() if seq == 0 else ppo(seq) if seq % 2 else batch(seq)
            out.append(envelope(seq, event, run_id, rank=rank))
    return out


def test_both_ranks_land_in_the_same_files_with_their_rank(tmp_path: Path) -> None:
    run = RunArchive(tmp_path, "r")
    for env in two_rank_stream("r", 0, 6):
        assert run.on_envelope(env, 0.0)
    run.close()
    rows = pd.read_csv(tmp_path / "r" / "ppo_update.csv")
    assert list(rows.columns[:3]) == ["seq", "ts", "rank"]
    assert sorted(zip(rows["rank"], rows["seq"], strict=True)) == [(r, s) for r in (0, 1) for s in (1, 3, 5)]
    assert (tmp_path / "r" / "run.json").exists()  # rank 0's training_started
    assert pd.read_csv(tmp_path / "r" / "training_started.csv")["rank"].tolist() == [1]
    assert run.stats.unseen == 0 and run.stats.duplicates == 0


def test_resume_skips_each_rank_s_rows_on_disk_and_only_those(tmp_path: Path) -> None:
    run = RunArchive(tmp_path, "r")
    for env in two_rank_stream("r", 0, 6):
        run.on_envelope(env, 0.0)
    run.on_envelope(envelope(7, ppo(7), "r", rank=0), 0.0)  # rank 0 is one ahead
    run.close()

    again = RunArchive(tmp_path, "r")
    assert again.held == {0: 7, 1: 6}
    replayed = [again.on_envelope(env, 1.0) for env in two_rank_stream("r", 0, 8)]
    again.close()
    written = [(e.rank, e.seq) for e, kept in zip(two_rank_stream("r", 0, 8), replayed, strict=True) if kept]
    assert sorted(written) == [(0, 8), (1, 7), (1, 8)]
    assert again.stats.duplicates == len(replayed) - 3 and again.stats.unseen == 0
    rows = pd.concat(pd.read_csv(tmp_path / "r" / f"{n}.csv") for n in ("ppo_update", "batch_completed"))
    assert not rows.duplicated(["rank", "seq"]).any() and len(rows) == 2 * 8


def test_gaps_are_per_rank_with_their_rank(tmp_path: Path) -> None:
    run = RunArchive(tmp_path, "r")
    for env in two_rank_stream("r", 0, 2):
        run.on_envelope(env, 0.0)
    run.on_gap(Gap("r", 3, 4, 5.0, rank=1), 5.0)
    run.on_envelope(envelope(3, heartbeat(), "r", rank=0), 6.0)  # rank 0 has no hole
    run.on_envelope(envelope(9, heartbeat(), "r", rank=0), 7.0)  # 4..8 never seen
    run.close()
    gaps = pd.read_csv(tmp_path / "r" / "gaps.csv")
    assert tuple(gaps.columns) == GAP_COLUMNS
    assert gaps[["rank", "from", "to", "cause"]].values.tolist() == [[1, 3, 4, "lost"], [0, 4, 8, "unseen"]]


def test_a_file_without_a_rank_column_resumes_as_rank_0(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    old = tmp_path / "r" / "heartbeat.csv"
    old.write_text("seq,ts,period_s\n0,1.0,1.0\n5,2.0,1.0\n")
    run = RunArchive(tmp_path, "r")
    assert run.held == {0: 5}
    assert not run.on_envelope(envelope(5, heartbeat(), "r"), 0.0)
    assert run.on_envelope(envelope(5, heartbeat(), "r", rank=1), 0.0)
    run.close()


def test_a_two_rank_stream_through_the_feed_reaches_the_archive_and_the_fold(tmp_path: Path) -> None:
    feed = Feed()
    stream = two_rank_stream("r", 0, 9)
    items: list = []
    for env in stream:
        feed.push_live(items, env, 0.0)
    items += feed.poll(1.0)  # a publisher that never replays: one sync timeout
    archiver = Archiver(tmp_path, fsync=False, report=lambda _: None)
    archiver.handle(items, 1.0)
    archiver.close()
    assert feed.stats.gaps == 0 and feed.last_seqs == {0: 9, 1: 9}
    state = archiver.aggregator.state
    assert set(state.ranks) == {0, 1} and state.delivery.events == len(stream)
    rows = pd.read_csv(tmp_path / "r" / "ppo_update.csv")
    assert sorted(zip(rows["rank"], rows["seq"], strict=True)) == [
        (r, s) for r in (0, 1) for s in (1, 3, 5, 7, 9)
    ]
