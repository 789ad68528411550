"""The forwarder's last-value cache: one ``ReplayCache`` per (run_id, rank), and its replay of them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from bus.contract import ReplayEnd
from bus.publish import DEFAULT_REPLAY_DEPTH
from bus.replay import ReplayCache
from bus.wire import encode_replay_end

MAX_RUNS = 4
"""Runs cached, the newest by first arrival; a fifth evicts the oldest."""
MAX_RANKS = 1024
"""Ranks cached per run; messages of further ranks are forwarded but not cached (counted)."""


class _Key(msgspec.Struct):
    """The part of an envelope that says where it goes in the cache; the event is skipped unread."""

    run_id: str
    seq: int
    rank: int = 0


_key_decoder = msgspec.msgpack.Decoder(_Key)


@dataclass
class CacheStats:
    """What the cache did with the messages it saw."""

    cached: int = 0
    undecodable: int = 0
    """Not an envelope (no run_id, seq, rank): forwarded all the same, never cached."""
    ranks_refused: int = 0
    """Messages of a rank beyond ``max_ranks`` in its run: forwarded, not cached."""
    restarts: int = 0
    """A rank's seq went back (its process restarted under the same run_id): its cache started over."""
    lost: int = 0
    """Seqs a rank skipped in what the cache saw (the capture socket fell behind, or never sent)."""
    runs_evicted: int = 0


@dataclass
class _Rank:
    cache: ReplayCache
    last_seq: int = -1


@dataclass
class _Run:
    ranks: dict[int, _Rank] = field(default_factory=dict)


class RankCaches:
    """The newest messages of every (run, rank) seen, bounded in runs, ranks and messages per rank."""

    def __init__(
        self,
        depths: Mapping[str, int] = DEFAULT_REPLAY_DEPTH,
        *,
        max_runs: int = MAX_RUNS,
        max_ranks: int = MAX_RANKS,
    ) -> None:
        self._depths = dict(depths)
        self._max_runs = max_runs
        self._max_ranks = max_ranks
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self.stats = CacheStats()

    def add(self, topic: bytes, body: bytes) -> bool:
        """One forwarded live message, ``topic`` and MessagePack envelope ``body``; False: not an envelope."""
        try:
            key = _key_decoder.decode(body)
        except (msgspec.DecodeError, ValueError, RecursionError):
            self.stats.undecodable += 1
            return False
        run = self._runs.get(key.run_id)
        if run is None:
            if len(self._runs) >= self._max_runs:
                self._runs.popitem(last=False)
                self.stats.runs_evicted += 1
            run = self._runs[key.run_id] = _Run()
        rank = run.ranks.get(key.rank)
        if rank is None:
            if len(run.ranks) >= self._max_ranks:
                self.stats.ranks_refused += 1
                return True
            rank = run.ranks[key.rank] = _Rank(ReplayCache(self._depths))
        if key.seq <= rank.last_seq:
            self.stats.restarts += 1
            rank.cache = ReplayCache(self._depths)
        elif key.seq > rank.last_seq + 1 and rank.last_seq >= 0:
            self.stats.lost += key.seq - rank.last_seq - 1
        rank.last_seq = key.seq
        rank.cache.add(key.seq, topic.decode("ascii", "replace"), body)
        self.stats.cached += 1
        return True

    def snapshot(self) -> list[tuple[int, bytes]]:
        """The newest run's replay: each rank's cached bodies in seq order, then that rank's ReplayEnd.

        Every ReplayEnd says ``ranks``, how many ends the consumer is to wait for. Empty before any run.
        """
        if not self._runs:
            return []
        run_id, run = next(reversed(self._runs.items()))
        out: list[tuple[int, bytes]] = []
        for number in sorted(run.ranks):
            rank = run.ranks[number]
            messages = rank.cache.messages()
            out.extend(messages)
            end = ReplayEnd(
                replay_end=True,
                run_id=run_id,
                last_seq=rank.last_seq,
                count=len(messages),
                rank=number,
                ranks=len(run.ranks),
            )
            out.append((rank.last_seq, encode_replay_end(end)))
        return out

    def last_seqs(self, run_id: str) -> dict[int, int]:
        """The newest seq seen of each rank of ``run_id`` (empty for a run not cached)."""
        run = self._runs.get(run_id)
        return {} if run is None else {n: rank.last_seq for n, rank in list(run.ranks.items())}

    @property
    def runs(self) -> int:
        return len(self._runs)

    @property
    def ranks(self) -> int:
        """Ranks cached, all runs together."""
        return sum(len(run.ranks) for run in list(self._runs.values()))

    @property
    def messages(self) -> int:
        """Messages cached, all runs and ranks together."""
        runs = list(self._runs.values())  # read by the owner's thread while the cache thread adds
        return sum(len(rank.cache) for run in runs for rank in list(run.ranks.values()))
