"""The bus forwarder (`make bus`): ranks connect to its XSUB frontend, consumers to its XPUB backend.

``zmq.proxy_steerable`` moves every message in C. Its capture socket hands a copy of each
to a cache thread, which keeps the newest messages of every (run, rank) (``RankCaches``)
and answers replay subscriptions itself: its own XPUB connects into the frontend over
inproc, so it sees every consumer's ``~replay/<token>`` subscription (XSUB passes
subscriptions to every publisher connected to it) and its replay flows through the same
proxy to that consumer alone. Replays are admitted by ``bus.replay.ReplayQueue`` and sent
in slices between captured messages. A rank publisher in connect mode serves no replays.

Chained (``--upstream``), the backend connects to another forwarder's frontend instead of
binding; such a node forwarder serves no replays unless ``--serve-replay`` (the head, which
sees every rank, answers), so a consumer never gets two histories.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import struct
import sys
import threading
from dataclasses import dataclass

import zmq

from bus.contract import LIVE_TOPIC_PREFIXES, REPLAY_TOPIC_PREFIX
from bus.endpoint import EndpointError, check_endpoint, is_loopback
from bus.forwarder_cache import MAX_RANKS, MAX_RUNS, RankCaches
from bus.replay import ReplayQueue
from bus.wire import MAX_MESSAGE_BYTES

log = logging.getLogger("bus.forwarder")

FRONTEND = "tcp://127.0.0.1:5556"
"""Where ranks connect (``python -m producer --connect``, the torchrun default)."""
BACKEND = "tcp://127.0.0.1:5555"
"""Where consumers connect: the usual ``ENDPOINT``."""
HWM = 100_000
"""Messages queued per peer before ZeroMQ drops (slow consumer) or holds (capture) them."""
STATUS_INTERVAL_S = 10.0
"""Seconds between the command's status lines (``--status-interval``)."""
CAPTURE_BATCH = 1024
"""Captured messages cached before the cache thread sends the next replay slice."""

_REPLAY_PREFIX = REPLAY_TOPIC_PREFIX.encode()
_MAX_REPLAY_TOPIC = len(_REPLAY_PREFIX) + 64
_ids = itertools.count()
_NOBLOCK = int(zmq.NOBLOCK)


@dataclass
class ForwarderConfig:
    """Where the forwarder binds or connects, whether it answers replays, and its cache bounds."""

    frontend: str = FRONTEND
    backend: str = BACKEND
    upstream: str | None = None
    """A head forwarder's frontend: the backend connects there instead of binding ``backend``."""
    serve_replay: bool | None = None
    """Answer replays from this forwarder's cache; None: only when it has no upstream."""
    allow_remote: bool = False
    """Bind a non-loopback frontend/backend (unencrypted: a private cluster network only)."""
    max_runs: int = MAX_RUNS
    max_ranks: int = MAX_RANKS

    @property
    def serves_replay(self) -> bool:
        return self.upstream is None if self.serve_replay is None else self.serve_replay


@dataclass
class ForwarderStatus:
    """One look at the counters; ``frames_*`` from the proxy, the rest from the cache thread."""

    frames_in: int = 0
    """Frames the proxy took from the frontend (live and replayed messages are 2 frames each)."""
    frames_out: int = 0
    """Frames the proxy took from the backend: subscriptions."""
    cached: int = 0
    cache_runs: int = 0
    cache_ranks: int = 0
    cache_messages: int = 0
    cache_lost: int = 0
    replays_served: int = 0
    replays_refused: int = 0
    replays_coalesced: int = 0
    replayed: int = 0
    replay_dropped: int = 0

    def line(self) -> str:
        return (
            f"forwarded {self.frames_in} frames to consumers, {self.frames_out} to ranks; "
            f"cache {self.cache_runs} runs {self.cache_ranks} ranks {self.cache_messages} msgs "
            f"({self.cached} cached, {self.cache_lost} lost); "
            f"replays {self.replays_served} served, {self.replays_refused} refused, "
            f"{self.replays_coalesced} coalesced, {self.replayed} msgs sent, {self.replay_dropped} dropped"
        )


class Forwarder:
    """The proxy thread and, when it serves replays, the cache thread; ``close()`` stops both."""

    def __init__(self, config: ForwarderConfig | None = None) -> None:
        self.config = c = config or ForwarderConfig()
        for endpoint in (c.frontend, *(() if c.upstream else (c.backend,))):
            check_endpoint(endpoint, bind=True)
            if not c.allow_remote and not is_loopback(endpoint):
                raise EndpointError(
                    f"refusing to bind {endpoint}: it is not loopback. Pass --allow-remote (unencrypted: "
                    "a private cluster network only) or reach it through an SSH tunnel (see README)."
                )
        if c.upstream:
            check_endpoint(c.upstream)
        self.caches = RankCaches(max_runs=c.max_runs, max_ranks=c.max_ranks)
        self.replays = ReplayQueue(peer_rate=1e9, peer_burst=1e9)  # the proxy carries no peer address
        self.replayed = 0
        self.replay_dropped = 0
        self.frontend_endpoint = ""
        self.backend_endpoint = ""
        self._name = f"inproc://tamiyo-forwarder-{next(_ids)}"
        self._ctx: zmq.Context | None = None
        self._threads: list[threading.Thread] = []
        self._control: zmq.Socket | None = None
        self._stop_cache: zmq.Socket | None = None
        self._frames = (0, 0)

    def start(self) -> Forwarder:
        """Bind (raises ZMQError, e.g. address in use) and start forwarding."""
        c = self.config
        ctx = self._ctx = zmq.Context()
        socks: list[zmq.Socket] = []
        try:
            frontend = _socket(ctx, zmq.XSUB, socks)
            frontend.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES + 4096)
            frontend.bind(c.frontend)
            self.frontend_endpoint = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
            backend = _socket(ctx, zmq.XPUB, socks)
            if c.upstream:
                backend.connect(c.upstream)
                self.backend_endpoint = c.upstream
            else:
                backend.setsockopt(zmq.MAXMSGSIZE, 4096)  # inbound: subscriptions only
                backend.bind(c.backend)
                self.backend_endpoint = backend.getsockopt_string(zmq.LAST_ENDPOINT)
            control = _socket(ctx, zmq.PAIR, socks)
            control.bind(self._name + "-control")
            self._control = _socket(ctx, zmq.PAIR, socks)
            self._control.connect(self._name + "-control")
            capture = None
            if c.serves_replay:
                # The cache needs every message, whether a consumer is listening or not.
                frontend.send(b"\x01")
                frontend.bind(self._name + "-front")
                capture = _socket(ctx, zmq.PUB, socks)
                capture.bind(self._name + "-capture")
                cache_socks = self._cache_sockets(ctx, socks)
        except BaseException:
            for sock in socks:
                sock.close(0)
            self._control = self._stop_cache = None
            ctx.term()
            raise
        proxy = threading.Thread(
            target=self._proxy, args=(frontend, backend, capture, control), name="tamiyo-forwarder-proxy"
        )
        self._threads.append(proxy)
        if capture is not None:
            self._threads.append(
                threading.Thread(target=self._cache_loop, args=cache_socks, name="tamiyo-forwarder-cache")
            )
        for thread in self._threads:
            thread.start()
        return self

    def _cache_sockets(
        self, ctx: zmq.Context, socks: list[zmq.Socket]
    ) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket]:
        captured = _socket(ctx, zmq.SUB, socks)
        for prefix in LIVE_TOPIC_PREFIXES:
            captured.subscribe(prefix.encode())
        captured.connect(self._name + "-capture")
        replay = _socket(ctx, zmq.XPUB, socks)
        replay.setsockopt(zmq.XPUB_MANUAL, 1)
        replay.connect(self._name + "-front")
        stop = _socket(ctx, zmq.PAIR, socks)
        stop.bind(self._name + "-stop")
        self._stop_cache = _socket(ctx, zmq.PAIR, socks)
        self._stop_cache.connect(self._name + "-stop")
        return captured, replay, stop

    # -- owner side ---------------------------------------------------------------

    def status(self) -> ForwarderStatus:
        """The counters now; call from the thread that started the forwarder."""
        if self._control is not None and self._threads[0].is_alive():
            self._control.send(b"STATISTICS")
            if self._control.poll(1000):
                # Eight uint64 frames: frontend msgs/bytes in, msgs/bytes out, then the backend's.
                stats = [struct.unpack("=Q", f)[0] for f in self._control.recv_multipart()]
                self._frames = (stats[0], stats[4])
        r = self.replays.stats
        s = self.caches.stats
        return ForwarderStatus(
            frames_in=self._frames[0],
            frames_out=self._frames[1],
            cached=s.cached,
            cache_runs=self.caches.runs,
            cache_ranks=self.caches.ranks,
            cache_messages=self.caches.messages,
            cache_lost=s.lost,
            replays_served=r.completed,
            replays_refused=r.refused,
            replays_coalesced=r.coalesced,
            replayed=self.replayed,
            replay_dropped=self.replay_dropped,
        )

    def close(self) -> ForwarderStatus:
        """Stop both threads, close every socket; returns the final counters. Idempotent."""
        if self._control is None:
            return self.status()
        final = self.status()
        self._control.send(b"TERMINATE")
        if self._stop_cache is not None:
            self._stop_cache.send(b"")
        for thread in self._threads:
            thread.join()
        self._control.close(0)
        self._control = None
        if self._stop_cache is not None:
            self._stop_cache.close(0)
        assert self._ctx is not None
        self._ctx.term()
        return final

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads ------------------------------------------------------------------

    def _proxy(self, frontend: zmq.Socket, backend: zmq.Socket, capture, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(frontend, backend, capture, control)
        except zmq.ZMQError as exc:
            log.error("proxy stopped: %s", exc)
        finally:
            for sock in (frontend, backend, capture, control):
                if sock is not None:
                    sock.close(0)

    def _cache_loop(self, captured: zmq.Socket, replay: zmq.Socket, stop: zmq.Socket) -> None:
        poller = zmq.Poller()
        for sock in (captured, replay, stop):
            poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(0 if self.replays.pending else -1))
                if stop in ready:
                    return
                if replay in ready:
                    # Every message the proxy forwarded before this subscription is already in the
                    # capture queue: cache them all first, so the snapshot holds what the consumer
                    # could not have received live, and its ReplayEnd's last_seq leaves no false gap.
                    while self._on_captured(captured):
                        pass
                    self._on_subscriptions(replay)
                elif captured in ready:
                    self._on_captured(captured)
                if self.replays.pending:
                    self._replay_slice(replay)
        except Exception:
            log.exception("forwarder cache thread failed; forwarding goes on without replays")
        finally:
            for sock in (captured, replay, stop):
                sock.close(0)

    def _on_captured(self, captured: zmq.Socket) -> bool:
        """Cache up to CAPTURE_BATCH captured messages; True when there may be more.

        The capture SUB takes only live topics (a lowercase first letter), so subscriptions and
        replays never reach it, and each message is [topic, envelope]: received as two plain
        frames, the fastest way pyzmq has (a Frame, or asking RCVMORE, costs µs per message).
        """
        add = self.caches.add
        recv = captured.recv
        for _ in range(CAPTURE_BATCH):
            try:
                topic = recv(_NOBLOCK)
                body = recv(_NOBLOCK)
            except zmq.Again:
                return False
            if not add(topic, body) and captured.rcvmore:
                # Not [topic, envelope]: a message of other frames (forwarded as is) put us out of
                # step; skip to the first frame of the next message.
                while captured.rcvmore:
                    recv(_NOBLOCK)
        return True

    def _on_subscriptions(self, replay: zmq.Socket) -> None:
        for _ in range(4096):
            try:
                msg = replay.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) < 2 or msg[0] > 1:
                continue
            topic = msg[1:]
            if not topic.startswith(_REPLAY_PREFIX) or len(topic) > _MAX_REPLAY_TOPIC:
                continue  # live topics are the ranks' to serve
            if msg[0] == 0:
                replay.setsockopt(zmq.UNSUBSCRIBE, topic)
            elif self.replays.request(topic, "", self.caches.snapshot, -1):
                replay.setsockopt(zmq.SUBSCRIBE, topic)

    def _replay_slice(self, replay: zmq.Socket) -> None:
        taken = self.replays.next_slice()
        if taken is None:
            return
        pending, bodies, _ = taken
        for body in bodies:
            try:
                replay.send(pending.topic, zmq.SNDMORE | zmq.NOBLOCK)
                replay.send(body, zmq.NOBLOCK)
                self.replayed += 1
            except zmq.Again:
                self.replay_dropped += 1


def _socket(ctx: zmq.Context, kind: int, socks: list[zmq.Socket]) -> zmq.Socket:
    sock = ctx.socket(kind)
    socks.append(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    if kind in (zmq.XSUB, zmq.XPUB):
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    return sock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bus.forwarder", description=__doc__.split("\n\n")[0])
    p.add_argument("--frontend", default=FRONTEND, help=f"bind: where ranks connect (default {FRONTEND})")
    p.add_argument("--backend", default=BACKEND, help=f"bind: where consumers connect (default {BACKEND})")
    p.add_argument(
        "--upstream",
        default=None,
        help="connect the backend to this head forwarder's frontend (one forwarder per node) "
        "instead of binding --backend",
    )
    p.add_argument(
        "--serve-replay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer late joiners from this forwarder's cache (default: only without --upstream; "
        "exactly one forwarder on a consumer's path may)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="bind a non-loopback --frontend/--backend, e.g. the head's frontend for other nodes "
        "(unencrypted: a private cluster network, else SSH tunnels)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=STATUS_INTERVAL_S,
        help=f"seconds between status lines (default {STATUS_INTERVAL_S:g})",
    )
    p.add_argument("--runs", type=int, default=MAX_RUNS, help=f"runs cached (default {MAX_RUNS})")
    p.add_argument(
        "--max-ranks", type=int, default=MAX_RANKS, help=f"ranks cached per run (default {MAX_RANKS})"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.status_interval <= 0 or args.runs < 1 or args.max_ranks < 1:
        p.error("--status-interval, --runs and --max-ranks must be positive")
    config = ForwarderConfig(
        frontend=args.frontend,
        backend=args.backend,
        upstream=args.upstream,
        serve_replay=args.serve_replay,
        allow_remote=args.allow_remote,
        max_runs=args.runs,
        max_ranks=args.max_ranks,
    )
    try:
        forwarder = Forwarder(config).start()
    except (EndpointError, zmq.ZMQError) as exc:
        print(f"python -m bus.forwarder: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "ranks connect to %s; %s %s; replays %s",
        forwarder.frontend_endpoint,
        "forwarding up to" if config.upstream else "consumers connect to",
        forwarder.backend_endpoint,
        "served here" if config.serves_replay else "left to the head forwarder",
    )
    while not stop.wait(args.status_interval):
        log.info("%s", forwarder.status().line())
    log.info("stopped: %s", forwarder.close().line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
