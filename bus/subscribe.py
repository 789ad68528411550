"""The consuming end of the bus: a SUB socket, the decoder and a Feed, giving ordered items.

Every consumer (TUI, archiver, alerts) reads through ``Subscriber.receive``: it
subscribes to the live topics and to its own replay topic, decodes, refuses bad
input without losing anything else, and returns envelopes and gaps in seq order.

Reconnecting: ZeroMQ reconnects by itself after a network error, but drops a
connection for good after a protocol error (a message over MAXMSGSIZE) or a refused
CURVE handshake. A socket monitor sees every disconnect, and the subscriber connects
again itself (backing off to ``RECONNECT_MAX_S``), so it follows a restarted producer
or a reopened SSH tunnel without being restarted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

from bus.contract import LIVE_TOPIC_PREFIXES, REPLAY_TOPIC_PREFIX
from bus.endpoint import default_endpoint, validate_endpoint
from bus.feed import Feed, Item, Skipped
from bus.ratelog import rate_limited_logger
from bus.wire import MAX_MESSAGE_BYTES, WireError, decode, decode_replay_end, replay_topic

log = rate_limited_logger(__name__)
"""At most one line per kind of refused message (and per connection event) per LOG_INTERVAL_S."""

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 8.0

_NOBLOCK = int(zmq.NOBLOCK)

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class SubscriberStats:
    """Received frames, why any were refused (per WireError kind), and the connection's history.

    ``connects`` counts completed handshakes and ``disconnects`` the loss of such a connection,
    so ``connects - disconnects`` is 1 while connected. A connection refused during the
    handshake counts in ``auth_failures`` (CURVE key not authorized) or ``handshake_failures``.
    """

    received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    reconnects: int = 0
    auth_failures: int = 0
    handshake_failures: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class SubscriberConfig:
    """How a consumer connects. The curve_* settings come from ``bus.security.subscriber_security``."""

    endpoint: str = field(default_factory=default_endpoint)
    # Prefixes, not event types: keep the default, since seq counts every event type and a
    # filtered stream would look like gaps.
    topics: Sequence[str] = LIVE_TOPIC_PREFIXES
    rcvhwm: int = 100_000
    sync_timeout_s: float = 0.5
    resync_interval_s: float = 1.0
    curve_secret_key: bytes | None = None
    curve_public_key: bytes | None = None
    curve_server_public_key: bytes | None = None
    curve_keys_dir: str | None = None


class Subscriber:
    """Connect to a publisher and receive ordered envelopes and gaps.

    Raises EndpointError for a malformed endpoint and SecurityError for unusable CURVE keys.
    """

    def __init__(self, config: SubscriberConfig | None = None, *, ctx: zmq.Context | None = None) -> None:
        self.config = config or SubscriberConfig()
        validate_endpoint(self.config.endpoint)
        self.stats = SubscriberStats()
        self.feed = Feed(
            sync_timeout=self.config.sync_timeout_s, resync_interval=self.config.resync_interval_s
        )
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._monitor: zmq.Socket | None = None
        try:
            self._setup()
        except BaseException:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(0)
            self._sock.close(0)
            raise
        self._replay_prefix = REPLAY_TOPIC_PREFIX.encode()
        self._reconnect_at: float | None = None
        self._backoff = RECONNECT_MIN_S
        self._closed = False

    def _setup(self) -> None:
        sock = self._sock
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        c = self.config
        if c.curve_secret_key is not None or c.curve_keys_dir is not None:
            from bus.security import apply_curve_client

            apply_curve_client(sock, c)
        for topic in c.topics:
            sock.subscribe(topic.encode())
        self._token = self.feed.token
        sock.subscribe(replay_topic(self._token).encode())
        self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        sock.connect(c.endpoint)

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def receive(self, timeout: float = 0.1, max_messages: int = 10_000) -> list[Item]:
        """Wait up to ``timeout`` seconds for input, then return every item that is ready."""
        now = time.monotonic()
        wait = timeout
        for deadline in (self.feed.deadline, self._reconnect_at):
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
        out: list[Item] = []
        ready = dict(self._poller.poll(math.ceil(wait * 1000)))
        if self._monitor in ready:
            self._on_monitor()
        if self._sock in ready:
            self._receive_ready(out, max_messages)
        now = time.monotonic()
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect()
        out.extend(self.feed.poll(now))
        self._follow_token()
        return out

    def _receive_ready(self, out: list[Item], max_messages: int) -> None:
        """Take up to ``max_messages`` messages that are waiting, without blocking.

        This runs for every message, so it is written for speed: frame by frame rather
        than with recv_multipart, which asks the socket for RCVMORE (a getsockopt, several
        µs in pyzmq) after every frame, where a Frame carries the flag; and a live message
        of two frames that decodes (nearly all of them) goes straight to the feed, as
        ``_take`` would send it.
        """
        recv = self._sock.recv
        take = self._take
        push_live = self.feed.push_live
        stats = self.stats
        replay = self._replay_prefix
        monotonic = time.monotonic
        for _ in range(max_messages):
            try:
                frame = recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = monotonic()
            if not frame.more:
                take(out, [frame.bytes], now)
                continue
            body = recv(_NOBLOCK, copy=False)  # the rest of a message arrives with its first frame
            topic = frame.bytes
            if not body.more and not topic.startswith(replay):
                data = body.bytes
                try:
                    env = decode(data)
                except WireError:
                    take(out, [topic, data], now)  # refused and counted there
                    continue
                stats.received += 1
                push_live(out, env, now)
                continue
            frames = [topic, body.bytes]
            while body.more:
                body = recv(_NOBLOCK, copy=False)
                frames.append(body.bytes)
            take(out, frames, now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        if self._monitor is not None:
            self._monitor.close(0)
        self._sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames -----------------------------------------------------------------

    def _on_frames(self, frames: list[bytes], now: float) -> list[Item]:
        out: list[Item] = []
        self._take(out, frames, now)
        return out

    def _take(self, out: list[Item], frames: list[bytes], now: float) -> None:
        """One message's frames: decode, refuse or order; what is ready is appended to ``out``."""
        self.stats.received += 1
        if len(frames) != 2:
            self._reject(WireError("malformed", f"{len(frames)} frames, expected 2"))
            return
        topic, body = frames
        token: str | None = None
        if topic.startswith(self._replay_prefix):
            token = topic[len(self._replay_prefix) :].decode("ascii", "replace")
            end = decode_replay_end(body)
            if end is not None:
                out.extend(self.feed.on_replay_end(token, end, now))
                return
        try:
            env = decode(body)
        except WireError as exc:
            self._reject(exc)
            if exc.kind != "unknown_event" or exc.seq is None or exc.run_id is None:
                return
            # A newer producer's event type: it holds a seq, so it must not look like a gap.
            skipped = Skipped(exc.run_id, exc.seq, exc.ts or 0.0, exc.detail, exc.rank)
            if token is None:
                self.feed.push_live(out, skipped, now)
            else:
                out.extend(self.feed.on_replay(token, skipped, now))
            return
        if token is None:
            self.feed.push_live(out, env, now)
        else:
            out.extend(self.feed.on_replay(token, env, now))

    def _follow_token(self) -> None:
        token = self.feed.token
        if token != self._token:
            self._sock.subscribe(replay_topic(token).encode())
            self._sock.unsubscribe(replay_topic(self._token).encode())
            self._token = token

    def _reject(self, exc: WireError) -> None:
        self.stats.rejected[exc.kind] += 1
        self._log(
            exc.kind,
            "dropped a bad message (%s; %d so far): %s",
            exc.kind,
            self.stats.rejected[exc.kind],
            exc.detail[:200],
        )

    def _log(self, key: str, msg: str, *args: object) -> None:
        log.warning(msg, *args, extra={"ratelimit_key": (id(self), key)})

    # -- connection -------------------------------------------------------------

    def _on_monitor(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.stats.connects += 1
                self.stats.connected = True
                self._backoff = RECONNECT_MIN_S
                self._reconnect_at = None  # ZeroMQ got there first
            elif event == zmq.EVENT_DISCONNECTED:
                if self.stats.connected:
                    self.stats.connected = False
                    self.stats.disconnects += 1
                    self._log(
                        "disconnected",
                        "lost the connection to %s (%d so far): publisher gone, network, or a message "
                        "over %d bytes; reconnecting",
                        self.config.endpoint,
                        self.stats.disconnects,
                        MAX_MESSAGE_BYTES,
                    )
                # Also after a failed handshake: ZeroMQ itself may not try again.
                if self._reconnect_at is None:
                    self._reconnect_at = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.stats.auth_failures += 1
                self._log(
                    "auth",
                    "the publisher at %s refused this consumer's CURVE key (%d so far); "
                    "is its public key in the publisher's authorized_clients?",
                    self.config.endpoint,
                    self.stats.auth_failures,
                )
            else:
                self.stats.handshake_failures += 1
                self._log(
                    "handshake",
                    "handshake with %s failed (%d so far): CURVE on one side only?",
                    self.config.endpoint,
                    self.stats.handshake_failures,
                )

    def _reconnect(self) -> None:
        self._reconnect_at = None
        self.stats.reconnects += 1
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disconnect(self.config.endpoint)
        self._sock.connect(self.config.endpoint)
