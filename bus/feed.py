"""Orders one consumer's stream: merges replayed history with live messages by seq, reports gaps.

This is the delivery logic shared by every consumer, kept free of sockets so it is
tested as plain calls. The socket side (``bus.subscribe``) feeds it live messages,
replayed messages and replay-end markers, and subscribes to ``feed.token`` whenever
it changes.

How it works: a consumer subscribes to the live topics and to a replay topic unique
to itself; seeing that subscription, the publisher sends its cached history on that
topic, then a ``ReplayEnd`` naming the newest seq it had sent. While a replay is
awaited ("syncing") live messages are held; at the end, history and held messages
are merged by seq with duplicates dropped. Behind a forwarder every rank's publisher
sees the subscription and replays its own history with its own ``ReplayEnd``: the
sync ends once every rank heard during it has sent its end (or at the deadline).
A later seq gap starts a resync under a fresh token (at most one per
``resync_interval``), so history the publisher still caches fills the hole; what it
cannot fill is reported as a ``Gap``. A publisher that never replays costs
``sync_timeout`` once, after which the live stream flows as is.
A message of an event type this consumer does not know arrives as ``Skipped``: it takes
its place in the seq order (so it is not a gap) and is not delivered.

Every rank of a run (torch.distributed) numbers its own messages, so seqs, holes and
gaps are per (run, rank); a run's ranks interleave freely. Which run is current is
decided by arrival alone, never by timestamps: a message of another run starts a sync,
and the run it settles on is the one the replay end names or, without one, the run of
the newest message held. A run left that way is remembered (the last 16), and its
stragglers are dropped and counted as ``stale``.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from dataclasses import dataclass
from operator import attrgetter

from bus.contract import Envelope, ReplayEnd


@dataclass(frozen=True)
class Gap:
    """Messages ``first``..``last`` (inclusive) of ``run_id``'s rank ``rank`` were never received."""

    run_id: str
    first: int
    last: int
    detected_at: float
    rank: int = 0

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Skipped:
    """Message ``seq`` of rank ``rank`` of ``run_id`` has an event type this consumer does not know."""

    run_id: str
    seq: int
    ts: float
    type: str
    rank: int = 0


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


_ts = attrgetter("ts")


class Feed:
    """Turns live and replayed envelopes into one ordered stream of envelopes and gaps."""

    def __init__(self, *, sync_timeout: float = 0.5, resync_interval: float = 1.0) -> None:
        self.sync_timeout = sync_timeout
        self.resync_interval = resync_interval
        self.run_id: str | None = None
        self.last_seqs: dict[int, int] = {}
        """The newest seq handed on per rank of the current run."""
        self.token = new_token()
        self.syncing = True
        self.stats = FeedStats()
        self._deadline: float | None = None
        self._held: list[Entry] = []
        self._replay: list[Entry] = []
        self._ends: dict[int, ReplayEnd] = {}
        """The replay ends received in this sync, by rank (each rank's publisher replays its own history)."""
        self._last_resync_at = float("-inf")
        self._left: deque[str] = deque(maxlen=16)

    @property
    def last_seq(self) -> int | None:
        """Rank 0's newest seq handed on (a single-process run's only rank); None before any."""
        return self.last_seqs.get(0)

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
        if self.syncing:
            self._hold(env, now)
            return
        if env.run_id != self.run_id:
            self._begin_sync(now, fresh_token=True)
            self._hold(env, now)
            return
        last = self.last_seqs.get(env.rank, -1)  # a rank first heard now: from its seq 0 on, all count
        if env.seq == last + 1 and type(env) is Envelope:
            # The common case: the next message of this rank of this run.
            self.last_seqs[env.rank] = env.seq
            self.stats.delivered += 1
            out.append(env)
            return
        if env.seq <= last:
            self.stats.duplicates += 1
            return
        if env.seq > last + 1 and now - self._last_resync_at >= self.resync_interval:
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
        """The marker closing one rank's replay burst; when the replay is complete, merge what was
        replayed with what was held. A forwarder's replay is complete at ``end.ranks`` ends (one per
        rank it replays); a publisher's once every rank heard in this sync has closed its burst."""
        if token != self.token or not self.syncing:
            return []
        self.stats.replays += 1
        if end.run_id in self._left:
            return []
        self._ends.pop(end.rank, None)
        self._ends[end.rank] = end  # newest last: the newest end names the run
        if end.ranks > 1:
            # Ranks whose history comes later in the burst are not heard yet: count the ends instead.
            done = len(self._ends) >= end.ranks
        else:
            heard = {e.rank for e in (*self._replay, *self._held) if e.run_id == end.run_id}
            done = heard <= self._ends.keys()
        # Not done: other ranks' replays are still on their way (or refused: the deadline ends the wait).
        return self._finish(now) if done else []

    def poll(self, now: float) -> list[Item]:
        """Call periodically: ends a sync some publisher never answered."""
        if self.syncing and self._deadline is not None and now >= self._deadline:
            if not self._ends:
                self.stats.sync_timeouts += 1
            return self._finish(now)
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
        self._ends = {}
        if fresh_token:
            self.token = new_token()

    def _finish(self, now: float) -> list[Item]:
        held, replay, ends = self._held, self._replay, self._ends
        self._held, self._replay, self._ends = [], [], {}
        self.syncing = False
        self._deadline = None
        end = next(reversed(ends.values()), None)
        if end is not None:
            target: str | None = end.run_id
        elif held:
            target = held[-1].run_id  # the newest arrival decides, never a timestamp
        else:
            target = self.run_id
        if target is None:
            self.syncing = True  # nothing heard yet: keep waiting for the first message
            return []
        replayed = [e for e in replay if e.run_id == target]
        live = [e for e in held if e.run_id == target]
        self.stats.stale += len(replay) + len(held) - len(replayed) - len(live)
        self.stats.replayed += len(replayed)
        if target != self.run_id:
            if self.run_id is not None:
                self._left.append(self.run_id)
            self.run_id = target
            self.last_seqs = {}

        by_rank: dict[int, list[Entry]] = {}
        for env in replayed + live:
            by_rank.setdefault(env.rank, []).append(env)
        ends_seq = {r: e.last_seq for r, e in ends.items() if e.run_id == target}
        out: list[Item] = []
        streams: list[list[Entry]] = []
        for rank in sorted(by_rank.keys() | ends_seq.keys()):
            streams.append(self._merge_rank(out, rank, by_rank.get(rank, []), live, ends_seq.get(rank), now))
        # Ranks interleave by send time for display only; each rank's own order is its seq.
        for env in heapq.merge(*streams, key=_ts) if len(streams) > 1 else (streams[0] if streams else ()):
            self._emit(out, env)
        return out

    def _merge_rank(
        self,
        out: list[Item],
        rank: int,
        entries: list[Entry],
        live: list[Entry],
        end_seq: int | None,
        now: float,
    ) -> list[Entry]:
        """One rank's entries in seq order, duplicates dropped; its gaps go straight to ``out``."""
        entries.sort(key=attrgetter("seq"))
        unique: list[Entry] = []
        seen: set[int] = set()
        for env in entries:
            if env.seq in seen:
                self.stats.duplicates += 1
                continue
            seen.add(env.seq)
            unique.append(env)
        last = self.last_seqs.get(rank)
        ordered: list[Entry] = []
        if last is None:
            # Joining a rank: what was sent before our live subscription took effect is history,
            # delivered without gap accounting; from the first live message on, every seq counts.
            first_live = min((e.seq for e in live if e.rank == rank), default=None)
            if end_seq is not None:
                horizon = end_seq if first_live is None else min(end_seq, first_live - 1)
            else:
                horizon = unique[0].seq - 1 if unique else -1
            ordered = [e for e in unique if e.seq <= horizon]
            last = horizon
            rest = [e for e in unique if e.seq > horizon]
        else:
            rest = [e for e in unique if e.seq > last]
            self.stats.duplicates += len(unique) - len(rest)
        for env in rest:
            if env.seq > last + 1:
                self._record_gap(out, rank, last + 1, env.seq - 1, now)
            last = env.seq
            ordered.append(env)
        if end_seq is not None and end_seq > last:
            # Sent before the replay yet neither cached nor received: lost for good.
            self._record_gap(out, rank, last + 1, end_seq, now)
            last = end_seq
        self.last_seqs[rank] = last
        return ordered

    def _deliver_in_order(self, out: list[Item], env: Entry, now: float) -> None:
        last = self.last_seqs.get(env.rank, -1)
        if env.seq > last + 1:
            self._record_gap(out, env.rank, last + 1, env.seq - 1, now)
        self.last_seqs[env.rank] = env.seq
        self._emit(out, env)

    def _emit(self, out: list[Item], env: Entry) -> None:
        if isinstance(env, Skipped):
            self.stats.skipped += 1
        else:
            self.stats.delivered += 1
            out.append(env)

    def _record_gap(self, out: list[Item], rank: int, first: int, last: int, now: float) -> None:
        assert self.run_id is not None
        gap = Gap(self.run_id, first, last, now, rank)
        self.stats.gaps += 1
        self.stats.missed += gap.count
        out.append(gap)
