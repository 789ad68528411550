"""The publishing end of the bus: one XPUB socket owned by one I/O thread, which never blocks training.

The training thread calls ``publish(event)``: that stamps the time, appends to a bounded
in-memory queue and returns (a full queue drops the event and counts it). The I/O
thread assigns ``seq``, encodes with one reused encoder, sends without blocking, keeps
the replay cache, answers replay subscriptions and sends a heartbeat every period,
also while the trainer is stuck in a long ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import zmq

from bus.contract import (
    REPLAY_TOPIC_PREFIX,
    SCHEMA_VERSION,
    Envelope,
    Event,
    Heartbeat,
    ReplayEnd,
    topic_of,
)
from bus.endpoint import check_bind
from bus.wire import encode_body, encode_replay_end

log = logging.getLogger(__name__)

DEFAULT_REPLAY_DEPTH: dict[str, int] = {
    "training_started": 1,
    "ppo_update": 256,
    "batch_completed": 256,
    "heartbeat": 16,
    "training_finished": 1,
}
"""Per event type, how many of the newest messages a late joiner is sent."""


@dataclass
class PublisherStats:
    """What the publisher did; ``dropped`` is also reported in every heartbeat."""

    published: int = 0
    sent: int = 0
    dropped: int = 0
    replays: int = 0
    replayed: int = 0


@dataclass
class PublisherConfig:
    """How the publisher binds and how much it buffers."""

    endpoint: str = "tcp://127.0.0.1:5555"
    heartbeat_period_s: float = 1.0
    queue_limit: int = 10_000
    sndhwm: int = 10_000
    replay_depth: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_REPLAY_DEPTH))
    allow_remote: bool = False
    curve_secret_key: bytes | None = None
    curve_public_key: bytes | None = None
    curve_authorized_dir: str | None = None


class BusPublisher:
    """Bind an XPUB socket and publish events as envelopes of one run."""

    def __init__(self, run_id: str, config: PublisherConfig | None = None) -> None:
        self.run_id = run_id
        self.config = config or PublisherConfig()
        check_bind(
            self.config.endpoint,
            allow_remote=self.config.allow_remote,
            curve=self.config.curve_secret_key is not None,
        )
        self.stats = PublisherStats()
        self.phase = "starting"
        self.update = 0
        self._queue: deque[tuple[float, Event]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._subscribed = threading.Event()
        self._started_at = time.time()
        self._error: BaseException | None = None
        self._flush_timeout = 0.0
        self._ctx = zmq.Context()
        self._caches: dict[str, deque[tuple[int, bytes]]] = {
            topic: deque(maxlen=depth) for topic, depth in self.config.replay_depth.items() if depth > 0
        }
        self._thread = threading.Thread(target=self._run, name="tamiyo-bus-publisher", daemon=True)
        self.bound_endpoint = ""

    # -- training-thread side ---------------------------------------------------

    def start(self) -> BusPublisher:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def publish(self, event: Event) -> bool:
        """Queue an event; never blocks. False (and counted) when the queue is full."""
        if len(self._queue) >= self.config.queue_limit:
            self.stats.dropped += 1
            return False
        self._queue.append((time.time(), event))
        self.stats.published += 1
        if not self._wake_pending:
            self._wake_pending = True
            os.write(self._wake_w, b"\0")
        return True

    def wait_for_subscriber(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until any consumer's subscription has reached this socket."""
        return self._subscribed.wait(timeout)

    def close(self, flush_timeout: float = 0.5) -> None:
        """Send what is queued (within ``flush_timeout``), then close the socket."""
        if not self._thread.is_alive():
            self._close_pipe()
            self._ctx.term()
            return
        self._flush_timeout = flush_timeout
        self._stop.set()
        os.write(self._wake_w, b"\0")
        self._thread.join(flush_timeout + 2.0)
        self._close_pipe()
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
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
            sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # inbound: subscriptions only
            if self.config.curve_secret_key is not None:
                from bus.security import apply_curve_server

                apply_curve_server(sock, ctx, self.config)
            sock.bind(self.config.endpoint)
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as exc:
            self._error = exc
            sock.close(0)
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

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._seq = 0
        period = self.config.heartbeat_period_s
        next_beat = time.monotonic()
        last_dropped = 0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                dropped = self.stats.dropped
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
                    ),
                )
                last_dropped = dropped
                next_beat = now + period
            if self._stop.is_set():
                self._drain(sock)
                return
            timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000) + 1)
            for what, _ in poller.poll(timeout_ms):
                if what is sock:
                    self._on_subscription(sock)
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._wake_pending = False
                    self._drain(sock)

    def _drain(self, sock: zmq.Socket) -> None:
        queue = self._queue
        while queue:
            ts, event = queue.popleft()
            self._send(sock, ts, event)

    def _send(self, sock: zmq.Socket, ts: float, event: Event) -> None:
        seq = self._seq
        self._seq = seq + 1
        topic = topic_of(event)
        body = encode_body(Envelope(schema=SCHEMA_VERSION, run_id=self.run_id, seq=seq, ts=ts, event=event))
        try:
            sock.send_multipart((topic.encode(), body), zmq.NOBLOCK, copy=False)
            self.stats.sent += 1
        except zmq.Again:
            self.stats.dropped += 1
        cache = self._caches.get(topic)
        if cache is not None:
            cache.append((seq, body))

    def _on_subscription(self, sock: zmq.Socket) -> None:
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) < 2 or msg[0] != 1:
                continue
            self._subscribed.set()
            topic = msg[1:]
            if topic.startswith(REPLAY_TOPIC_PREFIX.encode()):
                self._replay(sock, topic)

    def _replay(self, sock: zmq.Socket, topic: bytes) -> None:
        history = sorted(self._history(), key=lambda item: item[0])
        for _, body in history:
            try:
                sock.send_multipart((topic, body), zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
        end = ReplayEnd(replay_end=True, run_id=self.run_id, last_seq=self._seq - 1, count=len(history))
        with contextlib.suppress(zmq.Again):
            sock.send_multipart((topic, encode_replay_end(end)), zmq.NOBLOCK)
        self.stats.replays += 1
        self.stats.replayed += len(history)

    def _history(self) -> Iterable[tuple[int, bytes]]:
        for cache in self._caches.values():
            yield from cache
