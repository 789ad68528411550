"""Forwarder figures: throughput and latency through `make bus` against direct publishing; 64 ranks."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import random
import time

import msgspec
import zmq

from bench import bus_figures
from bench.bus_figures import HWM, _consume_bus, _spawn
from bench.consumer_figures import _tui_under_load
from bench.events import batch_completed, heartbeat, ppo_update
from bench.report import Figure, at_least, at_most
from bus.contract import SCHEMA_VERSION, Envelope, PPOUpdate, TrainingStarted
from bus.forwarder import Forwarder, ForwarderConfig
from bus.publish import BusPublisher, PublisherConfig
from bus.straggler import STRAGGLER_FLAG
from bus.wire import decode, decode_replay_end, encode

ANY = "tcp://127.0.0.1:*"
CONSUMER_SUBSCRIPTIONS = 27
"""Subscription frames a Subscriber sends: 26 live prefixes and its replay topic."""
COMPUTE_MS = 80.0
"""A simulated rank's mean forward+backward time per update (5% spread between updates)."""
SLOW_FACTOR = 1.6
"""The simulated straggler's compute time against the other ranks'."""


def _serve_forwarder(conn) -> None:  # type: ignore[no-untyped-def]
    """The forwarder in a process of its own, as `make bus` runs it; answers status requests."""
    fw = Forwarder(ForwarderConfig(frontend=ANY, backend=ANY)).start()
    conn.send((fw.frontend_endpoint, fw.backend_endpoint))
    cpu0, wall0 = time.process_time(), time.monotonic()
    while (cmd := conn.recv()) != "stop":
        if cmd == "cpu":
            cpu0, wall0 = time.process_time(), time.monotonic()
            conn.send(None)
        else:
            conn.send((fw.status(), (time.process_time() - cpu0) / (time.monotonic() - wall0)))
    conn.send(fw.close())


class _ForwarderProc:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_forwarder, args=(child,), daemon=True)
        self.proc.start()
        self.frontend, self.backend = self.conn.recv()

    def status(self):  # type: ignore[no-untyped-def]
        self.conn.send("status")
        return self.conn.recv()

    def reset_cpu(self) -> None:
        self.conn.send("cpu")
        self.conn.recv()

    def wait_subscriptions(self, frames: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status()[0].frames_out < frames:
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer's subscriptions never reached the forwarder")
            time.sleep(0.01)

    def close(self):  # type: ignore[no-untyped-def]
        """The final ForwarderStatus."""
        self.conn.send("stop")
        final = self.conn.recv()
        self.proc.join(10)
        return final


def _run_publisher(publisher: BusPublisher, events: list[PPOUpdate]) -> None:
    for ev in events:
        while not publisher.publish(ev):
            time.sleep(0)  # the benchmark waits for queue room; training would drop and count


def throughput(n: int) -> Figure:
    rng = random.Random(0)
    events = [ppo_update(i, rng) for i in range(n)]

    publisher = BusPublisher("bench", PublisherConfig(endpoint=ANY, sndhwm=HWM)).start()
    proc, conn = _spawn(_consume_bus, publisher.bound_endpoint, n, "throughput", ())
    publisher.wait_for_subscriber(10)
    _run_publisher(publisher, events)
    direct = conn.recv()
    proc.join(10)
    publisher.close()

    fw = _ForwarderProc()
    config = PublisherConfig(endpoint=fw.frontend, connect=True, sndhwm=HWM)
    publisher = BusPublisher("bench", config).start()
    proc, conn = _spawn(_consume_bus, fw.backend, n, "throughput", ())
    fw.wait_subscriptions(CONSUMER_SUBSCRIPTIONS)
    _run_publisher(publisher, events)
    through = conn.recv()
    proc.join(10)
    publisher.close()
    final = fw.close()

    def rate(r: dict) -> float:
        return r["got"] / max(r["last"] - r["first"], 1e-9)

    return at_least(
        "forwarder_throughput",
        "throughput through the forwarder vs direct publishing",
        rate(through),
        rate(direct),
        "ev/s",
        0.8,
        f"{n} ppo_update, BusPublisher -> Subscriber + fold in another process; through: the "
        f"publisher connects to the forwarder (own process, caching); received {through['got']}/{n} "
        f"(direct {direct['got']}/{n}); forwarder cached {final.cached}, missed {final.cache_lost}",
    )


def latency(rate_hz: float, seconds: float) -> list[Figure]:
    n = int(rate_hz * seconds)
    rng = random.Random(1)
    fw = _ForwarderProc()
    publisher = BusPublisher("bench", PublisherConfig(endpoint=fw.frontend, connect=True)).start()
    publisher.wait_for_subscriber(10)  # the forwarder's own subscription
    publisher.publish(ppo_update(0, rng))
    # Cached before the consumer comes, so its replay names the run and its sync ends at once.
    while fw.status()[0].cached < 1:
        time.sleep(0.01)
    proc, conn = _spawn(_consume_bus, fw.backend, n, "latency", ())
    fw.wait_subscriptions(CONSUMER_SUBSCRIPTIONS)
    bus_figures.publish_paced(publisher, n, rate_hz, rng)
    result = conn.recv()
    proc.join(10)
    publisher.close()
    fw.close()
    p50, p99 = bus_figures.latency_percentiles_ms(result["latencies"])
    direct = {f.key: f.value for f in bus_figures.latency(rate_hz, seconds)}
    how = (
        f"{n} ppo_update at {rate_hz:g}/s, publish() to applied in the consumer's fold, via the forwarder "
        f"(own process); direct publishing in the same run: p50 {direct['latency_p50']:.3g} ms, "
        f"p99 {direct['latency_p99']:.3g} ms"
    )
    return [
        at_most("forwarder_latency_p50", "latency p50 through the forwarder", p50, 2.0, "ms", 1.0, how),
        at_most(
            "forwarder_latency_p99",
            "latency p99 through the forwarder (limit 2 ms)",
            p99,
            2.0,
            "ms",
            1.0,
            how,
        ),
    ]


def _ranks(  # type: ignore[no-untyped-def]
    frontend: str, ranks: int, updates: int, period: float, conn, slow: int = -1, heartbeats: bool = False
) -> None:
    """``ranks`` lightweight publishers speaking the contract: plain XPUB sockets, one seq per rank.

    Each update every rank sends a ppo_update whose ``compute_time_ms`` is about ``COMPUTE_MS``
    (``SLOW_FACTOR`` times that at rank ``slow``), a batch_completed and, with ``heartbeats``, a heartbeat.
    """
    ctx = zmq.Context()
    socks = []
    for _ in range(ranks):
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.connect(frontend)
        socks.append(sock)
    for sock in socks:
        sock.recv()  # the forwarder's subscription to everything: this rank is connected
    rng = random.Random(3)
    seqs = [0] * ranks
    conn.send("ready")
    conn.recv()

    def send(rank: int, event) -> None:  # type: ignore[no-untyped-def]
        env = Envelope(
            schema=SCHEMA_VERSION,
            run_id="bench-ranks",
            seq=seqs[rank],
            ts=time.time(),
            event=event,
            rank=rank,
        )
        socks[rank].send_multipart(encode(env))
        seqs[rank] += 1

    for rank in range(ranks):
        started = TrainingStarted(
            n_envs=4,
            max_epochs=25,
            task="tamiyo-sim",
            host_params=1,
            slot_ids=["r0c0"],
            seed=rank,
            n_episodes=1,
            lr=3e-4,
            clip_ratio=0.2,
            entropy_coef=0.01,
            param_budget=1,
            policy_device="cpu",
            env_devices=["cpu"],
            reward_mode="accuracy_gain_minus_rent",
            world_size=ranks,
            rank=rank,
        )
        send(rank, started)
    start = time.perf_counter()
    for u in range(1, updates + 1):
        while (now := time.perf_counter()) < start + u * period:
            time.sleep(min(start + u * period - now, 0.002))
        for rank in range(ranks):
            compute = rng.gauss(COMPUTE_MS, COMPUTE_MS * 0.05) * (SLOW_FACTOR if rank == slow else 1.0)
            send(rank, msgspec.structs.replace(ppo_update(u, rng), compute_time_ms=compute))
            send(rank, batch_completed(u, rng))
            if heartbeats:
                send(rank, msgspec.structs.replace(heartbeat(u), period_s=period))
    conn.send(sum(seqs))
    for sock in socks:
        sock.close()
    ctx.term()


def many_ranks(ranks: int = 64, updates: int = 50, period: float = 0.1) -> list[Figure]:
    """Every rank's events arrive through the forwarder; the forwarder's CPU; a late joiner's replay."""
    fw = _ForwarderProc()
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, HWM)
    sub.subscribe(b"")
    sub.connect(fw.backend)
    fw.wait_subscriptions(1)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_ranks, args=(fw.frontend, ranks, updates, period, child), daemon=True)
    proc.start()
    assert parent.recv() == "ready"
    fw.reset_cpu()
    parent.send("go")
    per_rank: dict[int, list[int]] = {}
    total = 1 + 2 * updates
    received = 0
    end = time.monotonic() + updates * period + 30
    while received < ranks * total and time.monotonic() < end:
        if sub.poll(200):
            env = decode(sub.recv_multipart()[1])
            per_rank.setdefault(env.rank, []).append(env.seq)
            received += 1
    sent = parent.recv()
    status, cpu_share = fw.status()
    proc.join(10)
    complete = sum(1 for seqs in per_rank.values() if seqs == list(range(total)))

    late = zctx.socket(zmq.SUB)
    late.setsockopt(zmq.LINGER, 0)
    late.setsockopt(zmq.RCVHWM, HWM)
    late.subscribe(b"~replay/late")
    t0 = time.perf_counter()
    late.connect(fw.backend)
    ends = replayed = 0
    while ends < ranks and late.poll(10_000):
        body = late.recv_multipart()[1]
        if decode_replay_end(body) is not None:
            ends += 1
        else:
            replayed += 1
    replay_s = time.perf_counter() - t0
    late.close(0)
    sub.close(0)
    zctx.term()
    fw.close()
    how = (
        f"{ranks} plain XPUB ranks, {updates} updates each (ppo_update + batch_completed every {period:g} s) "
        f"into the forwarder (own process); {complete}/{ranks} ranks arrived whole and in seq order"
    )
    return [
        at_least(
            "forwarder_64_ranks",
            f"events of {ranks} ranks received through the forwarder",
            received,
            sent,
            "msgs",
            1.0,
            how,
        ),
        at_most(
            "forwarder_64_ranks_cpu",
            f"forwarder CPU at {ranks} ranks",
            cpu_share,
            1.0,
            "cores",
            0.5,
            f"{sent / (updates * period):,.0f} msgs/s; forwarder process CPU time / wall time while they ran",
        ),
        at_least(
            "forwarder_64_ranks_replay",
            f"late joiner's replay of {ranks} ranks: ReplayEnds received",
            ends,
            ranks,
            "ends",
            1.0,
            f"{replayed} messages and {ends} ends in {replay_s * 1e3:.0f} ms, one subscription, one port; "
            f"cache {status.cache_ranks} ranks, {status.cache_messages} msgs",
        ),
    ]


def dashboard_64_ranks(
    ranks: int = 64, updates: int = 40, period: float = 0.25, slow: int = 37
) -> list[Figure]:
    """The dashboard (own process) fed by ``ranks`` simulated ranks through the forwarder: its CPU, and
    whether its fold flags rank ``slow`` (compute ``SLOW_FACTOR``× its peers') as the only straggler."""
    fw = _ForwarderProc()
    seconds = updates * period
    ctx = mp.get_context("spawn")
    tui_conn, tui_child = ctx.Pipe()
    tui = ctx.Process(target=_tui_under_load, args=(fw.backend, seconds, tui_child), daemon=True)
    tui.start()
    assert tui_conn.recv() == "ready"
    fw.wait_subscriptions(CONSUMER_SUBSCRIPTIONS)
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_ranks, args=(fw.frontend, ranks, updates, period, child, slow, True), daemon=True
    )
    proc.start()
    assert parent.recv() == "ready"
    fw.reset_cpu()
    tui_conn.send("go")
    parent.send("go")
    sent = parent.recv()
    load = tui_conn.recv()
    fw_share = fw.status()[1]
    proc.join(10)
    tui.join(10)
    fw.close()
    scores = load["stragglers"]
    flagged = sorted(r for r, (_, f) in scores.items() if f)
    others = [s for r, (s, _) in scores.items() if r != slow]
    slow_score = scores.get(slow, (float("nan"), False))[0]
    rate = sent / seconds
    how = (
        f"{ranks} plain XPUB ranks -> forwarder (own process) -> TamiyoApp headless at 160x48, refresh 4/s "
        f"(own process); each rank every {period:g} s: ppo_update (compute_time_ms ~{COMPUTE_MS:g} ms ±5%, "
        f"rank {slow} {SLOW_FACTOR:g}×) + batch_completed + heartbeat, {updates} updates, {rate:,.0f} msgs/s"
    )
    # The share only counts if the dashboard folded the whole stream from every rank.
    kept_up = load["folded_rate"] >= 0.95 * rate and not load["missed"] and len(scores) == ranks
    cpu = at_most(
        "dashboard_64_ranks_cpu",
        f"dashboard CPU share of one core at {ranks} ranks through the forwarder",
        load["cpu_share"],
        0.5,
        "",
        1.0,
        f"{how}; getrusage over {seconds:g} s; folded {load['folded_rate']:,.0f} ev/s, "
        f"{load['missed']:,} missed, {load['fps']:.1f} frames/s; ranks seen {len(scores)}; "
        f"forwarder {fw_share:.2f} of a core",
    )
    return [
        dataclasses.replace(cpu, met=cpu.met and kept_up),
        Figure(
            "dashboard_64_ranks_straggler",
            f"ranks the dashboard flags as stragglers (goal: rank {slow} alone)",
            float(len(flagged)),
            1.0,
            "ranks",
            f"rank {slow} only",
            flagged == [slow],
            f"flagged {flagged}; rank {slow} score {slow_score:.2f}, others max "
            f"{max(others, default=float('nan')):.2f} (flag at ≥ {STRAGGLER_FLAG:g}); {how}",
        ),
    ]
