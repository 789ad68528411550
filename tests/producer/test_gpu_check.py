"""bench/gpu_check.py where no GPU exists: it skips cleanly, and its consistency rules catch bad figures."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_check

GOOD = {
    "cuda_memory_allocated_gb": 3.0,
    "cuda_memory_reserved_gb": 4.0,
    "cuda_memory_peak_gb": 5.0,
    "cuda_memory_fragmentation": 0.25,
    "cuda_memory_total_gb": 80.0,
    "cuda_memory_free_gb": 30.0,
    "cuda_memory_inactive_split_gb": 0.5,
    "cuda_alloc_retries": 0,
    "cuda_ooms": 0,
}


def test_without_cuda_it_says_skipped_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main() == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: skipped"


def test_consistent_figures_pass() -> None:
    assert gpu_check.consistency(GOOD, "x") == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"cuda_memory_allocated_gb": 4.5, "cuda_memory_fragmentation": 1 - 4.5 / 4}, "allocated"),
        ({"cuda_memory_reserved_gb": 90.0, "cuda_memory_fragmentation": 1 - 3 / 90}, "reserved"),
        ({"cuda_memory_free_gb": 81.0}, "free"),
        ({"cuda_memory_fragmentation": 0.75}, "fragmentation"),  # allocated/reserved, inverted
        ({"cuda_memory_inactive_split_gb": 4.5}, "inactive split"),
    ],
)
def test_each_inconsistency_is_named(change: dict[str, float], complaint: str) -> None:
    problems = gpu_check.consistency(GOOD | change, "update 3")
    assert len(problems) == 1 and problems[0].startswith("update 3: ") and complaint in problems[0], problems
