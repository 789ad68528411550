"""The publishing end of the bus: one XPUB socket owned by one I/O thread, which never blocks training.

The training thread calls ``publish(event)``: that stamps the time, appends to a bounded
in-memory queue and returns (a full queue drops the event and counts it). The I/O
thread assigns ``seq``, encodes with one reused encoder, sends without blocking, keeps
the replay cache, answers replay subscriptions and sends a heartbeat every period,
also while the trainer is stuck in a long ``torch.compile``.

Subscriptions are applied by hand (``XPUB_MANUAL``): only prefixes of this publisher's
topics and accepted replay topics reach libzmq's subscription table, so no pattern of
subscriptions grows it. Replays are admitted by ``bus.replay.ReplayQueue`` (rate-limited
per peer and in total, bounded, refusals counted in every heartbeat) and sent in slices
between live sends and heartbeats.

A recorded run is republished through the same path (``consumers.replay``):
``publish_envelope`` sends an envelope with its own seq, ts and run_id, and a ``lossless``
publisher waits for its slowest subscriber instead of dropping.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from bus import replay
from bus.contract import (
    EVENT_TYPES,
    REPLAY_TOPIC_PREFIX,
    SCHEMA_VERSION,
    Envelope,
    Event,
    Heartbeat,
    ReplayEnd,
    topic_of,
)
from bus.endpoint import check_bind, default_endpoint, validate_endpoint
from bus.ratelog import rate_limited_logger
from bus.replay import ReplayCache, ReplayQueue
from bus.wire import ENCODE_ERRORS, MAX_MESSAGE_BYTES, encode_body, encode_replay_end

log = rate_limited_logger(__name__)

DEFAULT_REPLAY_DEPTH: dict[str, int] = {
    "training_started": 1,
    "ppo_update": 256,
    "batch_completed": 256,
    "heartbeat": 16,
    "training_finished": 1,
}
"""Per event type, how many of the newest messages a late joiner is sent."""

SUBSCRIPTION_INTERVAL_S = 0.01
"""Subscriptions are read in batches at most this often: a storm of them wakes the I/O thread (and
takes the GIL from training) 100 times a second, not once per subscription."""
SUBSCRIPTIONS_PER_TURN = 4096
"""Subscription messages handled before the I/O thread looks at live traffic and heartbeats again."""

_TOPICS = tuple(t.__struct_config__.tag for t in EVENT_TYPES)
_LIVE_PREFIXES = frozenset(t[:i].encode() for t in _TOPICS for i in range(len(t) + 1))
"""Every subscription that can match one of this publisher's topics; any other would match nothing."""
_REPLAY_PREFIX = REPLAY_TOPIC_PREFIX.encode()
_MAX_REPLAY_TOPIC = len(_REPLAY_PREFIX) + 64


@dataclass
class PublisherStats:
    """What the publisher did; ``dropped`` is also reported in every heartbeat.

    Each counter has one writer thread: ``dropped_queue_full`` the training thread,
    the rest the I/O thread. A consumer that falls behind loses messages inside ZeroMQ
    (its own high-water mark), which the publisher cannot see: that consumer reports them
    as gaps.
    """

    published: int = 0
    sent: int = 0
    dropped_queue_full: int = 0
    dropped_send: int = 0
    dropped_oversized: int = 0
    dropped_unencodable: int = 0
    replays: int = 0
    replayed: int = 0
    replays_refused: int = 0
    """Replay requests refused by the rate limits or the pending bound (also in every heartbeat)."""

    @property
    def dropped(self) -> int:
        """Events that never left this process: queue full, socket refused, too big, or not encodable."""
        return self.dropped_queue_full + self.dropped_send + self.dropped_oversized + self.dropped_unencodable


@dataclass
class PublisherConfig:
    """How the publisher binds and how much it buffers."""

    endpoint: str = field(default_factory=default_endpoint)
    connect: bool = False
    """Connect to ``endpoint`` (a forwarder's XSUB frontend, any host) instead of binding it.
    A connected publisher serves no replays: the forwarder answers them from its cache for every rank."""
    heartbeat_period_s: float = 1.0
    """0: send no heartbeats of its own (a replay sends the recorded ones)."""
    queue_limit: int = 10_000
    sndhwm: int = 10_000
    replay_depth: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_REPLAY_DEPTH))
    replay_rate_per_s: float = replay.REPLAY_RATE_PER_S
    replay_burst: int = replay.REPLAY_BURST
    replay_peer_rate_per_s: float = replay.PEER_RATE_PER_S
    replay_peer_burst: int = replay.PEER_BURST
    replay_max_pending: int = replay.MAX_PENDING
    allow_remote: bool = False
    curve_secret_key: bytes | None = None
    curve_public_key: bytes | None = None
    curve_authorized_dir: str | None = None
    lossless: bool = False
    """Wait rather than drop: a send waits for room at every subscriber (ZMQ_XPUB_NODROP) and
    ``publish_envelope`` waits for room in the queue. For a replay, never for training."""


_SEND_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)  # as plain ints: or-ing the enum costs µs per event
_SEND_LAST = int(zmq.NOBLOCK)


@functools.lru_cache(maxsize=64)
def _topic_bytes(topic: str) -> bytes:
    return topic.encode()


class BusPublisher:
    """Bind (or connect) an XPUB socket and publish events as envelopes of one run's ``rank``."""

    def __init__(self, run_id: str, config: PublisherConfig | None = None, *, rank: int = 0) -> None:
        self.run_id = run_id
        self.rank = rank
        self.config = config or PublisherConfig()
        if self.config.connect:
            validate_endpoint(self.config.endpoint)
        else:
            check_bind(
                self.config.endpoint,
                allow_remote=self.config.allow_remote,
                curve=self.config.curve_secret_key is not None,
            )
        self.stats = PublisherStats()
        self.phase = "starting"
        self.update = 0
        self._progress_at: float | None = None  # time.monotonic() of the last mark_progress()
        self._queue: deque[tuple[float, Event]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._subscribed = threading.Event()
        self._room = threading.Condition()
        self._room_wanted = False
        self._started_at = time.time()
        self._error: BaseException | None = None
        self._closed = False
        self._seq = 0  # owned by the I/O thread
        self._flush_timeout = 0.0
        self._ctx = zmq.Context()
        c = self.config
        self.cache = ReplayCache(c.replay_depth)
        self.replays = ReplayQueue(
            rate=c.replay_rate_per_s,
            burst=c.replay_burst,
            peer_rate=c.replay_peer_rate_per_s,
            peer_burst=c.replay_peer_burst,
            max_pending=c.replay_max_pending,
        )
        self._thread = threading.Thread(target=self._run, name="tamiyo-bus-publisher", daemon=True)
        self.bound_endpoint = ""

    # -- training-thread side ---------------------------------------------------

    def start(self) -> BusPublisher:
        """Bind (in the I/O thread) and start sending; raises what binding raised."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self.close()
            raise self._error
        return self

    def publish(self, event: Event) -> bool:
        """Queue an event; never blocks. False (and counted) when the queue is full or closed."""
        if self._closed or len(self._queue) >= self.config.queue_limit:
            self.stats.dropped_queue_full += 1
            return False
        self._queue.append((time.time(), event))
        self.stats.published += 1
        if not self._wake_pending:
            self._wake_pending = True
            os.write(self._wake_w, b"\0")
        return True

    def mark_progress(self) -> None:
        """The training loop made progress (an env step, a minibatch): heartbeats report its age."""
        self._progress_at = time.monotonic()

    def publish_envelope(self, envelope: Envelope, timeout: float | None = None) -> bool:
        """Queue a whole envelope to send as it is: its seq, ts and run_id are kept (a replay).

        Its seqs must increase; the next ``publish`` continues after the largest. A ``lossless``
        publisher waits up to ``timeout`` s (None: for ever) for room in the queue and returns
        False when there is still none, with nothing dropped (the caller may try again). Otherwise
        False (and counted) when the queue is full or the publisher closed.
        """
        if envelope.run_id != self.run_id:
            raise ValueError(f"envelope of run {envelope.run_id!r} on the publisher of run {self.run_id!r}")
        limit = self.config.queue_limit
        if len(self._queue) >= limit and self.config.lossless and not self._closed:
            with self._room:
                self._room_wanted = True
                room = self._room.wait_for(lambda: len(self._queue) < limit // 2 or self._closed, timeout)
            if not room:
                return False
        if self._closed or len(self._queue) >= limit:
            self.stats.dropped_queue_full += 1
            return False
        self._queue.append(envelope)
        self.stats.published += 1
        if not self._wake_pending:
            self._wake_pending = True
            os.write(self._wake_w, b"\0")
        return True

    @property
    def last_seq(self) -> int:
        """The seq of the newest message handed to the socket (-1 before the first)."""
        return self._seq - 1

    def wait_for_subscriber(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until any consumer's subscription has reached this socket."""
        return self._subscribed.wait(timeout)

    def close(self, flush_timeout: float = 0.5) -> None:
        """Send what is queued (within ``flush_timeout``), then close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._room:
            self._room.notify_all()
        if self._thread.is_alive():
            self._flush_timeout = flush_timeout
            self._stop.set()
            os.write(self._wake_w, b"\0")
            self._thread.join(flush_timeout + 2.0)
        self._close_pipe()
        if self._thread.is_alive():
            self._ctx.destroy(0)  # the I/O thread is wedged: do not wait on its socket
        else:
            self._ctx.term()

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> BusPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O thread -------------------------------------------------------------

    def _run(self) -> None:
        ctx = self._ctx
        sock = ctx.socket(zmq.XPUB)
        auth = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
            sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # inbound: subscriptions only
            sock.setsockopt(zmq.XPUB_MANUAL, 1)
            if self.config.lossless:
                sock.setsockopt(zmq.XPUB_NODROP, 1)
            if self.config.curve_secret_key is not None:
                from bus.security import apply_curve_server

                auth = apply_curve_server(sock, ctx, self.config)
            if self.config.connect:
                sock.connect(self.config.endpoint)
                self.bound_endpoint = self.config.endpoint
            else:
                sock.bind(self.config.endpoint)
                self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as exc:
            self._error = exc
            sock.close(0)
            if auth is not None:
                auth.stop()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(sock)
        except BaseException:
            log.exception("bus publisher thread failed")
        finally:
            # Linger only on a clean stop, so the final training_finished gets out.
            sock.close(int(self._flush_timeout * 1000))
            if auth is not None:
                auth.stop()

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        wake_only = zmq.Poller()
        wake_only.register(self._wake_r, zmq.POLLIN)
        read_subs_at = 0.0
        period = self.config.heartbeat_period_s
        next_beat = time.monotonic()
        last_dropped = 0
        if period <= 0:
            next_beat = float("inf")
        while True:
            now = time.monotonic()
            if now >= next_beat:
                dropped = self.stats.dropped
                progress_at = self._progress_at
                self._send(
                    sock,
                    time.time(),
                    Heartbeat(
                        period_s=period,
                        phase=self.phase,
                        update=self.update,
                        uptime_s=time.time() - self._started_at,
                        dropped=dropped,
                        dropped_since_last=dropped - last_dropped,
                        sent=self.stats.sent,
                        progress_age_s=None if progress_at is None else max(0.0, now - progress_at),
                        replays_refused=self.stats.replays_refused,
                    ),
                )
                last_dropped = dropped
                next_beat = now + period
            if self._stop.is_set():
                self._drain(sock)
                return
            busy = self.replays.pending > 0
            now = time.monotonic()
            listen = now >= read_subs_at
            wait = next_beat - now if listen else min(next_beat, read_subs_at) - now
            timeout_ms = 0 if busy else max(0, int(min(wait, 1.0) * 1000) + 1)
            for what, _ in (poller if listen else wake_only).poll(timeout_ms):
                if what is sock:
                    self._on_subscription(sock)
                    read_subs_at = time.monotonic() + SUBSCRIPTION_INTERVAL_S
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._wake_pending = False
                    self._drain(sock)
            if busy:
                self._replay_slice(sock)

    def _drain(self, sock: zmq.Socket) -> None:
        queue = self._queue
        while queue:
            item = queue.popleft()
            if type(item) is Envelope:
                self._emit(sock, item)
            else:
                self._send(sock, *item)
            if self._room_wanted and len(queue) < self.config.queue_limit // 2:
                with self._room:
                    self._room_wanted = False
                    self._room.notify_all()

    def _send(self, sock: zmq.Socket, ts: float, event: Event) -> None:
        envelope = Envelope(
            schema=SCHEMA_VERSION, run_id=self.run_id, seq=self._seq, ts=ts, event=event, rank=self.rank
        )
        self._emit(sock, envelope)

    def _emit(self, sock: zmq.Socket, envelope: Envelope) -> None:
        seq = envelope.seq
        topic = topic_of(envelope.event)
        try:
            body = encode_body(envelope)
        except ENCODE_ERRORS as exc:
            # A producer bug; it costs this one event (and no seq), never the publisher thread.
            self.stats.dropped_unencodable += 1
            self._log_error(topic, "not sending a %s (%d dropped so far): %s", topic, self.stats.dropped, exc)
            return
        self._seq = seq + 1
        if len(body) > MAX_MESSAGE_BYTES:
            # Consumers drop the connection on such a frame; cached, it would poison every replay.
            self.stats.dropped_oversized += 1
            self._log_error(
                topic, "not sending a %s of %d bytes (limit %d)", topic, len(body), MAX_MESSAGE_BYTES
            )
            return
        try:
            # Two sends, as send_multipart does them, minus its per-call checks (a few µs an event).
            sock.send(_topic_bytes(topic), _SEND_MORE)
            sock.send(body, _SEND_LAST)
            self.stats.sent += 1
        except zmq.Again:
            if self.config.lossless and self._send_when_room(sock, _topic_bytes(topic), body):
                self.stats.sent += 1
            else:
                self.stats.dropped_send += 1
        if not self.config.connect:  # connected: the forwarder caches and replays
            self.cache.add(seq, topic, body)

    def _send_when_room(self, sock: zmq.Socket, topic: bytes, body: bytes) -> bool:
        """Wait for the slowest subscriber to take a message, answering subscriptions meanwhile.

        Gives up only once ``close`` has asked to stop and its flush time has passed. A refused
        first frame sent nothing, and once it is taken the second frame is too (the high-water
        mark counts whole messages).
        """
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN | zmq.POLLOUT)
        deadline: float | None = None
        while True:
            try:
                sock.send(topic, _SEND_MORE)
            except zmq.Again:
                pass
            else:
                sock.send(body)
                return True
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + self._flush_timeout
                if time.monotonic() >= deadline:
                    return False
            for _, mask in poller.poll(100):
                if mask & zmq.POLLIN:
                    self._on_subscription(sock)

    def _log_error(self, key: str, msg: str, *args: object) -> None:
        log.error(msg, *args, extra={"ratelimit_key": (id(self), key)})

    def _on_subscription(self, sock: zmq.Socket) -> None:
        """Apply or refuse waiting (un)subscriptions; each must be handled before the next recv."""
        for _ in range(SUBSCRIPTIONS_PER_TURN):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = frame.bytes
            if not msg or msg[0] > 1:
                continue
            topic = msg[1:]
            option = zmq.SUBSCRIBE if msg[0] == 1 else zmq.UNSUBSCRIBE
            if topic in _LIVE_PREFIXES:
                sock.setsockopt(option, topic)
                if option == zmq.SUBSCRIBE:
                    self._subscribed.set()
            elif (
                topic.startswith(_REPLAY_PREFIX)
                and len(topic) <= _MAX_REPLAY_TOPIC
                and not self.config.connect
            ):
                if option == zmq.UNSUBSCRIBE:
                    sock.setsockopt(option, topic)
                    continue
                self._subscribed.set()
                try:
                    peer = frame.get("Peer-Address")
                except zmq.ZMQError:
                    peer = ""
                if self.replays.request(topic, peer, self.cache.messages, self._seq - 1):
                    sock.setsockopt(zmq.SUBSCRIBE, topic)  # to the peer that asked, and only if accepted
                else:
                    self.stats.replays_refused = self.replays.stats.refused

    def _replay_slice(self, sock: zmq.Socket) -> None:
        taken = self.replays.next_slice()
        if taken is None:
            return
        pending, bodies, done = taken
        topic = pending.topic
        for body in bodies:
            with contextlib.suppress(zmq.Again):
                sock.send(topic, _SEND_MORE)
                sock.send(body, _SEND_LAST)
        self.stats.replayed += len(bodies)
        if done:
            end = ReplayEnd(
                replay_end=True,
                run_id=self.run_id,
                last_seq=pending.last_seq,
                count=len(pending.messages),
                rank=self.rank,
            )
            with contextlib.suppress(zmq.Again):
                sock.send_multipart((topic, encode_replay_end(end)), zmq.NOBLOCK)
            self.stats.replays += 1
