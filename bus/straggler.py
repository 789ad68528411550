"""The straggler score: each rank's compute time against the other ranks' median, smoothed (EWMA)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

STRAGGLER_ALPHA = 0.25
"""EWMA weight of the newest update's ratio."""

STRAGGLER_RATIO_CAP = 2.0
"""One update's ratio counts at most this much: a single stall moves the score by at most α·(cap − score)."""

STRAGGLER_FLAG = 1.3
"""A score at or above this flags the rank as a straggler (30% slower than its peers, chronically)."""


@dataclass(slots=True)
class StragglerScore:
    """One rank's straggler score (docs/metrics.md, "Ranks").

    ``ratio`` = this rank's ``compute_time_ms`` / the median of every other rank's newest one;
    ``score`` ← ``score`` + α·(min(ratio, cap) − ``score``), starting at 1.0 (at the median).
    From a score of 1, one stall of any length gives at most 1 + α·(cap − 1) = 1.25 < 1.3, while
    a rank chronically 2× slower is flagged at its 2nd update and one 1.5× slower at its 4th.
    """

    score: float = 1.0
    samples: int = 0
    """Updates that moved the score (``compute_time_ms`` measured here and at another rank)."""
    ratio: float | None = None
    """The newest update's ratio, uncapped."""
    compute_ms: float | None = None
    """The newest measured ``compute_time_ms`` (0.0 on the wire means not measured)."""

    @property
    def flagged(self) -> bool:
        return self.score >= STRAGGLER_FLAG

    def record(self, compute_ms: float, others: Iterable[StragglerScore]) -> None:
        """Take this rank's newest ``compute_ms`` and score it against the ``others``' newest."""
        if not (math.isfinite(compute_ms) and compute_ms > 0):
            return
        self.compute_ms = compute_ms
        peers = [o.compute_ms for o in others if o.compute_ms is not None]
        if not peers:
            return
        self.ratio = compute_ms / statistics.median(peers)
        self.score += STRAGGLER_ALPHA * (min(self.ratio, STRAGGLER_RATIO_CAP) - self.score)
        self.samples += 1
