"""Late-joiner replay: a seq-ordered cache of recent messages and a bounded, rate-limited replay queue.

Both are free of sockets so a forwarder can keep one ``ReplayCache`` per (run_id, rank)
and one ``ReplayQueue`` per socket, as the publisher does for its single run.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

REPLAY_RATE_PER_S = 5.0
"""Replays started per second, all peers together (token bucket refill)."""
REPLAY_BURST = 16
"""Replays that may start at once: every consumer of a restarted dashboard, archiver and alert daemon."""
PEER_RATE_PER_S = 1.0
"""Replays started per second for one peer address (on loopback every local peer shares one)."""
PEER_BURST = 8
MAX_PENDING = 32
"""Replays accepted but not yet fully sent; a request beyond this is refused."""
MAX_PEERS = 1024
"""Peer addresses whose buckets are remembered; the least recently seen is forgotten first."""
SLICE_MESSAGES = 64
"""Replayed messages sent between two looks at live traffic and heartbeats."""


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take()`` spends one if there is one."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ReplayCache:
    """The newest ``depths[topic]`` messages of each topic, kept in seq order as they are added.

    ``add`` must be called in increasing seq order (one publisher's, or one rank's, stream);
    ``messages()`` is then already sorted, with no sort per replay.
    """

    def __init__(self, depths: Mapping[str, int]) -> None:
        self._depths = {topic: depth for topic, depth in depths.items() if depth > 0}
        self._by_topic: dict[str, deque[int]] = {topic: deque() for topic in self._depths}
        self._ordered: OrderedDict[int, bytes] = OrderedDict()
        self.last_seq = -1

    def add(self, seq: int, topic: str, body: bytes) -> None:
        """Keep ``body`` if its topic is cached, dropping that topic's oldest beyond its depth."""
        seqs = self._by_topic.get(topic)
        if seqs is None:
            return
        if seq <= self.last_seq:
            raise ValueError(f"seq {seq} added after {self.last_seq}: the cache is kept in seq order")
        self.last_seq = seq
        seqs.append(seq)
        self._ordered[seq] = body
        if len(seqs) > self._depths[topic]:
            del self._ordered[seqs.popleft()]

    def messages(self) -> list[tuple[int, bytes]]:
        """(seq, body) of every cached message, oldest first: a snapshot, unaffected by later adds."""
        return list(self._ordered.items())

    def __len__(self) -> int:
        return len(self._ordered)


@dataclass
class ReplayStats:
    """Replay requests: started, merged into one already pending, refused (rate or pending limit)."""

    requested: int = 0
    started: int = 0
    coalesced: int = 0
    refused: int = 0
    completed: int = 0
    sent: int = 0


@dataclass
class PendingReplay:
    """One accepted replay: the snapshot to send and how far it got."""

    topic: bytes
    messages: list[tuple[int, bytes]]
    last_seq: int
    """The newest seq sent before the snapshot was taken (what ``ReplayEnd.last_seq`` reports)."""
    next: int = 0


class ReplayQueue:
    """Admits replay requests under per-peer and total token buckets, and hands them out in slices.

    Bounded whatever peers send: at most ``max_pending`` snapshots, ``max_peers`` buckets.
    """

    def __init__(
        self,
        *,
        rate: float = REPLAY_RATE_PER_S,
        burst: float = REPLAY_BURST,
        peer_rate: float = PEER_RATE_PER_S,
        peer_burst: float = PEER_BURST,
        max_pending: int = MAX_PENDING,
        max_peers: int = MAX_PEERS,
        slice_messages: int = SLICE_MESSAGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = ReplayStats()
        self._total = TokenBucket(rate, burst, clock)
        self._peer_rate, self._peer_burst = peer_rate, peer_burst
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_pending = max_pending
        self._max_peers = max_peers
        self._slice = slice_messages
        self._clock = clock
        self._pending: OrderedDict[bytes, PendingReplay] = OrderedDict()

    def request(
        self, topic: bytes, peer: str, snapshot: Callable[[], list[tuple[int, bytes]]], last_seq: int
    ) -> bool:
        """A replay asked for on ``topic`` by ``peer``: True when it will be (or already is being) sent.

        ``snapshot`` is called only for an accepted request, so a refused one costs no copy.
        """
        self.stats.requested += 1
        if topic in self._pending:
            self.stats.coalesced += 1  # the same topic reaches every peer subscribed to it
            return True
        if (
            len(self._pending) >= self._max_pending
            or not self._peer_bucket(peer).take()
            or not self._total.take()
        ):
            self.stats.refused += 1
            return False
        self._pending[topic] = PendingReplay(topic, snapshot(), last_seq)
        self.stats.started += 1
        return True

    def next_slice(self) -> tuple[PendingReplay, list[bytes], bool] | None:
        """Up to ``slice_messages`` bodies of the oldest pending replay, and whether it is now complete."""
        if not self._pending:
            return None
        replay = next(iter(self._pending.values()))
        stop = replay.next + self._slice
        bodies = [body for _, body in replay.messages[replay.next : stop]]
        replay.next = min(stop, len(replay.messages))
        self.stats.sent += len(bodies)
        done = replay.next >= len(replay.messages)
        if done:
            del self._pending[replay.topic]
            self.stats.completed += 1
        else:
            self._pending.move_to_end(replay.topic)  # round robin between pending replays
        return replay, bodies, done

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def peers(self) -> int:
        return len(self._peers)

    def _peer_bucket(self, peer: str) -> TokenBucket:
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= self._max_peers:
                self._peers.popitem(last=False)
            bucket = self._peers[peer] = TokenBucket(self._peer_rate, self._peer_burst, self._clock)
        else:
            self._peers.move_to_end(peer)
        return bucket
