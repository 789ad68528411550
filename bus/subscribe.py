"""The consuming end of the bus: a SUB socket, the decoder and a Feed, giving ordered items.

Every consumer (TUI, archiver, alerts) reads through ``Subscriber.receive``: it
subscribes to the live topics and to its own replay topic, decodes, refuses bad
input without losing anything else, and returns envelopes and gaps in seq order.
ZeroMQ reconnects by itself when the producer or a tunnel comes back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import zmq

from bus.contract import REPLAY_TOPIC_PREFIX, TOPICS
from bus.feed import Feed, Item
from bus.wire import MAX_MESSAGE_BYTES, WireError, decode, decode_replay_end, replay_topic

log = logging.getLogger(__name__)

REJECT_LOG_INTERVAL_S = 10.0


@dataclass
class SubscriberStats:
    """Received frames and why any were refused (counted per WireError kind)."""

    received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class SubscriberConfig:
    """How a consumer connects."""

    endpoint: str = "tcp://127.0.0.1:5555"
    topics: Sequence[str] = TOPICS
    rcvhwm: int = 100_000
    sync_timeout_s: float = 0.5
    resync_interval_s: float = 1.0
    curve_keys_dir: str | None = None
    curve_server_public_key: bytes | None = None


class Subscriber:
    """Connect to a publisher and receive ordered envelopes and gaps."""

    def __init__(self, config: SubscriberConfig | None = None, *, ctx: zmq.Context | None = None) -> None:
        self.config = config or SubscriberConfig()
        self.stats = SubscriberStats()
        self.feed = Feed(
            sync_timeout=self.config.sync_timeout_s, resync_interval=self.config.resync_interval_s
        )
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        if self.config.curve_server_public_key is not None or self.config.curve_keys_dir is not None:
            from bus.security import apply_curve_client

            apply_curve_client(self._sock, self.config)
        for topic in self.config.topics:
            self._sock.subscribe(topic.encode())
        self._token = self.feed.token
        self._sock.subscribe(replay_topic(self._token).encode())
        self._sock.connect(self.config.endpoint)
        self._last_reject_log: dict[str, float] = {}
        self._replay_prefix = REPLAY_TOPIC_PREFIX.encode()
        self._closed = False

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def receive(self, timeout: float = 0.1, max_messages: int = 10_000) -> list[Item]:
        """Wait up to ``timeout`` seconds for input, then return every item that is ready."""
        deadline = self.feed.deadline
        wait = timeout
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        out: list[Item] = []
        if self._sock.poll(int(wait * 1000)):
            for _ in range(max_messages):
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                out.extend(self._on_frames(frames, time.monotonic()))
        out.extend(self.feed.poll(time.monotonic()))
        self._follow_token()
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_frames(self, frames: list[bytes], now: float) -> list[Item]:
        self.stats.received += 1
        if len(frames) != 2:
            self._reject(WireError("malformed", f"{len(frames)} frames, expected 2"))
            return []
        topic, body = frames
        if topic.startswith(self._replay_prefix):
            token = topic[len(self._replay_prefix) :].decode("ascii", "replace")
            end = decode_replay_end(body)
            if end is not None:
                return self.feed.on_replay_end(token, end, now)
            try:
                env = decode(body)
            except WireError as exc:
                self._reject(exc)
                return []
            return self.feed.on_replay(token, env, now)
        try:
            env = decode(body)
        except WireError as exc:
            self._reject(exc)
            return []
        return self.feed.on_live(env, now)

    def _follow_token(self) -> None:
        token = self.feed.token
        if token != self._token:
            self._sock.subscribe(replay_topic(token).encode())
            self._sock.unsubscribe(replay_topic(self._token).encode())
            self._token = token

    def _reject(self, exc: WireError) -> None:
        self.stats.rejected[exc.kind] += 1
        now = time.monotonic()
        if now - self._last_reject_log.get(exc.kind, float("-inf")) >= REJECT_LOG_INTERVAL_S:
            self._last_reject_log[exc.kind] = now
            log.warning(
                "dropped a bad message (%s; %d so far): %s",
                exc.kind,
                self.stats.rejected[exc.kind],
                exc.detail[:200],
            )
