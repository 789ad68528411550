"""Orders one consumer's stream: merges replayed history with live messages by seq, reports gaps.

This is the delivery logic shared by every consumer, kept free of sockets so it is
tested as plain calls. The socket side (``bus.subscribe``) feeds it live messages,
replayed messages and replay-end markers, and subscribes to ``feed.token`` whenever
it changes.

How it works: a consumer subscribes to the live topics and to a replay topic unique
to itself; seeing that subscription, the publisher sends its cached history on that
topic, then a ``ReplayEnd`` naming the newest seq it had sent. While a replay is
awaited ("syncing") live messages are held; at the end, history and held messages
are merged by seq with duplicates dropped. A later seq gap starts a resync under a
fresh token (at most one per ``resync_interval``), so history the publisher still
caches fills the hole; what it cannot fill is reported as a ``Gap``. A publisher that
never replays costs ``sync_timeout`` once, after which the live stream flows as is.
A message of an event type this consumer does not know arrives as ``Skipped``: it takes
its place in the seq order (so it is not a gap) and is not delivered.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

from bus.contract import Envelope, ReplayEnd


@dataclass(frozen=True)
class Gap:
    """Messages ``first``..``last`` (inclusive) of ``run_id`` were never received."""

    run_id: str
    first: int
    last: int
    detected_at: float

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Skipped:
    """Message ``seq`` of ``run_id`` arrived but carries an event type this consumer does not know."""

    run_id: str
    seq: int
    ts: float
    type: str


@dataclass
class FeedStats:
    """Counters of what the feed did with what it was given."""

    delivered: int = 0
    skipped: int = 0
    duplicates: int = 0
    stale: int = 0
    gaps: int = 0
    missed: int = 0
    replays: int = 0
    replayed: int = 0
    resyncs: int = 0
    sync_timeouts: int = 0


def new_token() -> str:
    return secrets.token_hex(8)


Item = Envelope | Gap
"""What the feed hands on, in seq order."""

Entry = Envelope | Skipped
"""What the feed is given: a decoded envelope, or the place of one it cannot decode."""


class Feed:
    """Turns live and replayed envelopes into one ordered stream of envelopes and gaps."""

    def __init__(self, *, sync_timeout: float = 0.5, resync_interval: float = 1.0) -> None:
        self.sync_timeout = sync_timeout
        self.resync_interval = resync_interval
        self.run_id: str | None = None
        self.last_seq: int | None = None
        self.token = new_token()
        self.syncing = True
        self.stats = FeedStats()
        self._deadline: float | None = None
        self._held: list[Entry] = []
        self._replay: list[Entry] = []
        self._last_resync_at = float("-inf")
        self._left: deque[str] = deque(maxlen=16)

    # -- inputs -----------------------------------------------------------------

    def on_live(self, env: Entry, now: float) -> list[Item]:
        """A message that came on a live topic."""
        out: list[Item] = []
        self.push_live(out, env, now)
        return out

    def push_live(self, out: list[Item], env: Entry, now: float) -> None:
        """``on_live``, appending what it delivers to ``out`` (the subscriber's per-message path)."""
        if env.run_id in self._left:
            self.stats.stale += 1  # still in flight from a producer that has been replaced
            return
        last = self.last_seq
        if (
            not self.syncing
            and last is not None
            and env.seq == last + 1
            and env.run_id == self.run_id
            and isinstance(env, Envelope)
        ):
            # The common case, as the general path below would take it: the next message of this run.
            self.last_seq = env.seq
            self.stats.delivered += 1
            out.append(env)
            return
        if self.syncing:
            self._hold(env, now)
            return
        if env.run_id != self.run_id:
            self._begin_sync(now, fresh_token=True)
            self._hold(env, now)
            return
        assert self.last_seq is not None
        if env.seq <= self.last_seq:
            self.stats.duplicates += 1
            return
        if env.seq > self.last_seq + 1 and now - self._last_resync_at >= self.resync_interval:
            # A hole: ask for a fresh replay; what the publisher still caches fills it.
            self._last_resync_at = now
            self.stats.resyncs += 1
            self._begin_sync(now, fresh_token=True)
            self._hold(env, now)
            return
        self._deliver_in_order(out, env, now)

    def on_replay(self, token: str, env: Entry, now: float) -> list[Item]:
        """A message replayed on the topic of ``token``."""
        if token != self.token or env.run_id in self._left:
            self.stats.stale += 1
            return []
        if not self.syncing:
            # The publisher replayed unasked: our connection came back and re-sent the subscription.
            self._begin_sync(now, fresh_token=False)
        self._replay.append(env)
        return []

    def on_replay_end(self, token: str, end: ReplayEnd, now: float) -> list[Item]:
        """The marker closing a replay burst: merge what was replayed with what was held."""
        if token != self.token or not self.syncing:
            return []
        self.stats.replays += 1
        return self._finish(now, end)

    def poll(self, now: float) -> list[Item]:
        """Call periodically: ends a sync the publisher never answered."""
        if self.syncing and self._deadline is not None and now >= self._deadline:
            self.stats.sync_timeouts += 1
            return self._finish(now, None)
        return []

    @property
    def deadline(self) -> float | None:
        """When ``poll`` next has something to do, or None."""
        return self._deadline if self.syncing else None

    # -- internals --------------------------------------------------------------

    def _hold(self, env: Entry, now: float) -> None:
        if self._deadline is None:
            self._deadline = now + self.sync_timeout
        self._held.append(env)

    def _begin_sync(self, now: float, *, fresh_token: bool) -> None:
        self.syncing = True
        self._deadline = now + self.sync_timeout
        self._held = []
        self._replay = []
        if fresh_token:
            self.token = new_token()

    def _finish(self, now: float, end: ReplayEnd | None) -> list[Item]:
        held, replay = self._held, self._replay
        self._held, self._replay = [], []
        self.syncing = False
        self._deadline = None
        if end is not None and end.run_id in self._left:
            end = None
        if end is not None:
            target: str | None = end.run_id
        elif held:
            target = held[-1].run_id
        else:
            target = self.run_id
        if target is None:
            self.syncing = True  # nothing heard yet: keep waiting for the first message
            return []
        candidates = [e for e in replay if e.run_id == target] + [e for e in held if e.run_id == target]
        self.stats.stale += len(replay) + len(held) - len(candidates)
        self.stats.replayed += sum(1 for e in replay if e.run_id == target)
        candidates.sort(key=lambda e: e.seq)
        if target != self.run_id:
            if self.run_id is not None:
                self._left.append(self.run_id)
            self.run_id = target
            self.last_seq = None

        out: list[Item] = []
        seen: set[int] = set()
        unique: list[Entry] = []
        for env in candidates:
            if env.seq in seen:
                self.stats.duplicates += 1
                continue
            seen.add(env.seq)
            unique.append(env)

        if self.last_seq is None:
            # Joining a run: what was sent before our live subscription took effect is history,
            # delivered without gap accounting; from the first live message on, every seq counts.
            first_live = min((e.seq for e in held if e.run_id == target), default=None)
            if end is not None:
                horizon = end.last_seq if first_live is None else min(end.last_seq, first_live - 1)
            else:
                horizon = unique[0].seq - 1 if unique else -1
            for env in unique:
                if env.seq <= horizon:
                    self._emit(out, env)
            self.last_seq = horizon
            rest = [e for e in unique if e.seq > horizon]
        else:
            rest = [e for e in unique if e.seq > self.last_seq]
            self.stats.duplicates += len(unique) - len(rest)
        for env in rest:
            self._deliver_in_order(out, env, now)
        if end is not None and end.last_seq > self.last_seq:
            # Sent before the replay yet neither cached nor received: lost for good.
            self._record_gap(out, self.last_seq + 1, end.last_seq, now)
            self.last_seq = end.last_seq
        return out

    def _deliver_in_order(self, out: list[Item], env: Entry, now: float) -> None:
        assert self.last_seq is not None
        if env.seq > self.last_seq + 1:
            self._record_gap(out, self.last_seq + 1, env.seq - 1, now)
        self.last_seq = env.seq
        self._emit(out, env)

    def _emit(self, out: list[Item], env: Entry) -> None:
        if isinstance(env, Skipped):
            self.stats.skipped += 1
        else:
            self.stats.delivered += 1
            out.append(env)

    def _record_gap(self, out: list[Item], first: int, last: int, now: float) -> None:
        assert self.run_id is not None
        gap = Gap(self.run_id, first, last, now)
        self.stats.gaps += 1
        self.stats.missed += gap.count
        out.append(gap)
