"""Everything one redraw needs, computed once per frame from the folded snapshot and the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.liveness import liveness, progress_age_s, silence_s, stuck_bound_s
from bus.state import Snapshot
from consumers.tui.health import Status, assess
from consumers.tui.source import LinkStats
from consumers.tui.widgets.palette import Palette


@dataclass(frozen=True)
class View:
    """A frame's inputs: the snapshot plus what the consumer knows about the connection."""

    snapshot: Snapshot
    status: Status
    connection: str
    silence_s: float
    endpoint: str
    palette: Palette
    paused: bool = False
    waited_s: float = 0.0
    link: LinkStats = field(default_factory=LinkStats)
    bus_warning: str = ""
    now: float = 0.0
    """The consumer's clock at this frame (what received items are stamped with)."""
    progress_age_s: float | None = None
    """Seconds since the training loop last progressed (None: not in a training phase or not reported)."""
    stuck_bound_s: float = 0.0
    """Past this many seconds without progress the run is STUCK (``bus.liveness.stuck_bound_s``)."""


def make_view(
    snapshot: Snapshot,
    now: float,
    *,
    endpoint: str,
    palette: Palette,
    paused: bool = False,
    started_at: float | None = None,
    link: LinkStats | None = None,
    bus_warning: str = "",
) -> View:
    """Derive status and liveness for ``now`` (the same clock items were stamped with on receipt)."""
    return View(
        snapshot=snapshot,
        status=assess(snapshot),
        connection=liveness(snapshot, now),
        silence_s=silence_s(snapshot, now) if snapshot.run.run_id else 0.0,
        endpoint=endpoint,
        palette=palette,
        paused=paused,
        waited_s=max(0.0, now - started_at) if started_at is not None else 0.0,
        link=link or LinkStats(),
        bus_warning=bus_warning,
        now=now,
        progress_age_s=progress_age_s(snapshot, now),
        stuck_bound_s=stuck_bound_s(snapshot),
    )
