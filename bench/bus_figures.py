"""Bus figures: throughput against raw pyzmq, publish-to-applied latency, fold rate, consumer memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import time

import zmq

from bench.events import mixed_envelopes, ppo_update
from bench.report import Figure, at_least, at_most
from bus.aggregator import Aggregator, fold
from bus.contract import PPOUpdate
from bus.publish import BusPublisher, PublisherConfig
from bus.state import Snapshot
from bus.subscribe import Subscriber, SubscriberConfig
from bus.wire import decode, encode

HWM = 100_000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- consumer processes ---------------------------------------------------------------


def _consume_bus(endpoint: str, want: int, mode: str, checkpoints: tuple[int, ...], conn) -> None:
    """Fold ppo_update events through the real Subscriber until ``want`` arrived; report timings."""
    sub = Subscriber(SubscriberConfig(endpoint=endpoint, rcvhwm=HWM))
    agg = Aggregator()
    got = 0
    first = last = 0.0
    latencies: list[float] = []
    rss: dict[int, float] = {}
    conn.send("ready")
    deadline = time.monotonic() + 600
    while got < want and time.monotonic() < deadline:
        for item in sub.receive(0.2):
            agg.apply(item)
            if isinstance(getattr(item, "event", None), PPOUpdate):
                now = time.time()
                if got == 0:
                    first = now
                got += 1
                last = now
                if mode == "latency":
                    latencies.append(now - item.ts)
                if got in checkpoints:
                    rss[got] = _rss_mb()
    rss["end"] = _rss_mb()
    conn.send(
        {
            "got": got,
            "first": first,
            "last": last,
            "latencies": latencies,
            "rss": rss,
            "missed": agg.state.delivery.missed,
        }
    )
    sub.close()


def _consume_raw(endpoint: str, want: int, conn) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    sock.subscribe(b"")
    sock.connect(endpoint)
    conn.send("ready")
    got = 0
    first = last = 0.0
    while got < want and sock.poll(5000):
        sock.recv_multipart()
        now = time.time()
        if got == 0:
            first = now
        got += 1
        last = now
    conn.send({"got": got, "first": first, "last": last})
    sock.close(0)
    ctx.term()


def _spawn(target, *args) -> tuple[mp.Process, object]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    assert parent.recv() == "ready"
    return proc, parent


# -- figures --------------------------------------------------------------------------


def throughput(n: int) -> Figure:
    rng = random.Random(0)
    events = [ppo_update(i, rng) for i in range(n)]

    # Raw pyzmq PUB -> SUB of pre-encoded bodies of the same size.
    bodies = [encode(e) for e in _as_envelopes(events)]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, HWM)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    proc, conn = _spawn(_consume_raw, f"tcp://127.0.0.1:{port}", n)
    pub.recv()  # the subscription: the consumer is connected, no slow joiner
    for frames in bodies:
        pub.send_multipart(frames)
    raw = conn.recv()
    proc.join(10)
    pub.close(0)
    ctx.term()
    raw_rate = raw["got"] / max(raw["last"] - raw["first"], 1e-9)

    # The producer's publisher -> Subscriber + Feed + aggregator fold in another process.
    publisher = BusPublisher("bench", PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=HWM)).start()
    proc, conn = _spawn(_consume_bus, publisher.bound_endpoint, n, "throughput", ())
    publisher.wait_for_subscriber(10)
    for ev in events:
        while not publisher.publish(ev):
            time.sleep(0)  # the benchmark waits for queue room; training would drop and count
    ours = conn.recv()
    proc.join(10)
    publisher.close()
    rate = ours["got"] / max(ours["last"] - ours["first"], 1e-9)
    return at_least(
        "bus_throughput",
        "bus throughput (publish, encode, send, decode, fold)",
        rate,
        raw_rate,
        "ev/s",
        0.5,
        f"{n} ppo_update events of {len(bodies[0][1])} B; reference: raw pyzmq PUB->SUB of the same bytes; "
        f"received {ours['got']}/{n} (raw {raw['got']}/{n})",
    )


def publish_paced(publisher: BusPublisher, n: int, rate_hz: float, rng: random.Random) -> None:
    """ppo_update 1 .. n-1 at ``rate_hz``, each at its scheduled time (not after the previous one)."""
    start = time.perf_counter()
    for i in range(1, n):
        target = start + i / rate_hz
        while (now := time.perf_counter()) < target:
            time.sleep(min(target - now, 0.0005))
        publisher.publish(ppo_update(i, rng))


def latency_percentiles_ms(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms of latencies in s, the first tenth (the consumer's sync warm-up) skipped."""
    lat = sorted(latencies[len(latencies) // 10 :])
    return lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def latency(rate_hz: float, seconds: float) -> list[Figure]:
    n = int(rate_hz * seconds)
    rng = random.Random(1)
    publisher = BusPublisher("bench", PublisherConfig(endpoint="tcp://127.0.0.1:*")).start()
    proc, conn = _spawn(_consume_bus, publisher.bound_endpoint, n, "latency", ())
    publisher.wait_for_subscriber(10)
    # Let the consumer's replay sync finish so held messages don't count as latency.
    publisher.publish(ppo_update(0, rng))
    publish_paced(publisher, n, rate_hz, rng)
    result = conn.recv()
    proc.join(10)
    publisher.close()
    p50, p99 = latency_percentiles_ms(result["latencies"])
    how = f"{n} ppo_update at {rate_hz:g}/s, publish() call to applied in the consumer's fold"
    return [
        at_most("latency_p50", "latency p50", p50, 2.0, "ms", 1.0, how),
        at_most("latency_p99", "latency p99 (limit 2 ms)", p99, 2.0, "ms", 1.0, how),
    ]


def fold_rate(n: int) -> list[Figure]:
    envelopes = mixed_envelopes(n)
    bodies = [encode(e)[1] for e in envelopes]
    state = Snapshot()
    t0 = time.perf_counter()
    for env in envelopes:
        state = fold(state, env)
    fold_s = time.perf_counter() - t0
    state = Snapshot()
    t0 = time.perf_counter()
    for body in bodies:
        state = fold(state, decode(body))
    decode_fold_s = time.perf_counter() - t0
    return [
        at_least(
            "aggregator_fold",
            "aggregator fold rate (one core)",
            n / fold_s,
            300_000,
            "ev/s",
            1.0,
            f"{n} mixed ppo_update/batch_completed/heartbeat envelopes, fold only",
        ),
        at_least(
            "decode_fold",
            "decode + fold rate (one core)",
            n / decode_fold_s,
            300_000,
            "ev/s",
            0.5,
            "same envelopes from MessagePack bytes; informational (goal: half the fold goal)",
        ),
    ]


def consumer_memory(n: int, rate_hz: float = 20_000) -> Figure:
    """Paced below the consumer's fold rate: measures the consumer, not a filling socket buffer."""
    rng = random.Random(2)
    warm = n // 4
    publisher = BusPublisher("bench", PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=HWM)).start()
    proc, conn = _spawn(_consume_bus, publisher.bound_endpoint, n, "memory", (warm, n))
    publisher.wait_for_subscriber(10)
    events = [ppo_update(i, rng) for i in range(1000)]
    start = time.perf_counter()
    sent = 0
    while sent < n:
        due = min(n, int((time.perf_counter() - start) * rate_hz))
        while sent < due:
            if publisher.publish(events[sent % 1000]):
                sent += 1
        time.sleep(0.001)
    result = conn.recv()
    proc.join(10)
    publisher.close()
    rss = result["rss"]
    after_warm, at_end = rss.get(warm, float("nan")), rss["end"]
    return at_most(
        "consumer_memory",
        f"consumer RSS after {result['got']:,} events vs after {warm:,}",
        at_end,
        after_warm,
        "MiB",
        1.05,
        f"Subscriber + Feed + aggregator in its own process, ppo_update paced at {rate_hz:,.0f}/s; "
        f"received {result['got']:,}",
    )


def _as_envelopes(events: list[PPOUpdate]):
    from bus.contract import SCHEMA_VERSION, Envelope

    return [
        Envelope(schema=SCHEMA_VERSION, run_id="bench", seq=i, ts=time.time(), event=e)
        for i, e in enumerate(events)
    ]
