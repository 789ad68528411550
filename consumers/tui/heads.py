"""The newest update's head entropy figures from bus.derived, computed once per update and not per frame."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bus.derived import entropy_fraction, head_entropy_fractions
from bus.state import Snapshot
from consumers.tui.thresholds import HEAD_ENTROPY, Level


@dataclass(frozen=True)
class HeadEntropy:
    """Per-head entropies as fractions of their maxima, the policy's overall fraction, the collapsed heads."""

    fractions: dict[str, float | None]
    overall: float | None
    collapsed: list[str]
    """Heads whose fraction is in the fail band of ``HEAD_ENTROPY``, in the trainer's order."""


_memo: tuple[Mapping[str, float], Mapping[str, int], HeadEntropy] | None = None


def head_entropy(snapshot: Snapshot) -> HeadEntropy:
    """Reused while the same entropy and size maps come again (a run may have thousands of heads)."""
    global _memo
    entropy = snapshot.tamiyo.head_entropy
    sizes = snapshot.tamiyo.head_sizes
    memo = _memo
    if memo is not None and memo[0] is entropy and memo[1] is sizes:
        return memo[2]
    fractions = head_entropy_fractions(entropy, sizes)
    collapsed = [h for h, f in fractions.items() if f is not None and HEAD_ENTROPY.level(f) == Level.FAIL]
    result = HeadEntropy(fractions, entropy_fraction(entropy, sizes), collapsed)
    _memo = (entropy, sizes, result)
    return result
