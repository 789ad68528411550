"""Consumer figures: TUI frame time and CPU share under load, archiver rows/s with no gaps."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec

from bench.events import HEADS, batch_completed, heartbeat, mixed_envelopes, ppo_update
from bench.report import Figure, at_least, at_most
from bus.contract import SCHEMA_VERSION, Envelope, Event, TrainingFinished, TrainingStarted, topic_of
from bus.publish import BusPublisher, PublisherConfig

STARTED = TrainingStarted(
    n_envs=16,
    max_epochs=25,
    task="bench",
    host_params=1_000_000,
    slot_ids=["s0", "s1", "s2"],
    seed=1,
    n_episodes=100,
    lr=3e-4,
    clip_ratio=0.2,
    entropy_coef=0.01,
    param_budget=200_000,
    policy_device="cpu",
    env_devices=["cpu"],
    reward_mode="shaped",
    action_heads=dict(HEADS),
    total_updates=100_000,
)


FRAME_EVENTS = 40
"""Events folded between two measured frames: every panel (values, sparklines, the returns chart) changes."""


def _run_envelopes(n: int) -> list[Envelope]:
    """training_started (seq 0), then ``n`` envelopes of the training-like mix (seq 1..n)."""
    first = Envelope(schema=SCHEMA_VERSION, run_id="bench", seq=0, ts=1.7e9, event=STARTED)
    return [first, *(msgspec.structs.replace(e, seq=e.seq + 1) for e in mixed_envelopes(n))]


async def _frame_times(frames: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds of each frame: draw() plus Textual's layout and render of what changed.

    Not ``draw(); await pilot.pause()``: pause() waits until the process looks idle, sleeping at
    least 1/50 s (textual._wait.SLEEP_GRANULARITY) whatever the frame cost, and lets the app's own
    redraw timer fire inside the measurement. Here the paint is held back (batch_update) while
    the widgets' refresh messages reach the screen, then run at once by the screen's update
    callback (what pilot.pause() itself calls last): layout if needed, compositor render of the
    changed regions, write to the driver. New events are folded before each frame, untimed.
    """
    from consumers.tui.app import TamiyoApp

    envs = _run_envelopes(4000 + frames * FRAME_EVENTS)
    app = TamiyoApp("tcp://127.0.0.1:5555", connect=False, refresh_hz=1e-3)  # no timer draws in between
    async with app.run_test(size=(160, 48)) as pilot:
        app.ingest(envs[:4001])
        app.draw()
        await pilot.pause()
        app.draw()  # again, at the widths the first layout gave
        await pilot.pause()
        screen = app.main_screen
        wall: list[float] = []
        cpu: list[float] = []
        for i in range(frames):
            app.ingest(envs[4001 + i * FRAME_EVENTS : 4001 + (i + 1) * FRAME_EVENTS])
            with app.batch_update():
                c0, t0 = time.thread_time(), time.perf_counter()
                app.draw()
                c1, t1 = time.thread_time(), time.perf_counter()
                await pilot._wait_for_screen()  # deliver the refresh messages; nothing paints in a batch
            c2, t2 = time.thread_time(), time.perf_counter()
            screen._on_timer_update()
            c3, t3 = time.thread_time(), time.perf_counter()
            wall.append(t1 - t0 + t3 - t2)
            cpu.append(c1 - c0 + c3 - c2)
            await pilot.pause()
        histories = len(app.aggregator.state.tamiyo.history["entropy"])
    return wall, cpu, histories


def _tui_under_load(endpoint: str, seconds: float, conn) -> None:
    from consumers.tui.app import TamiyoApp

    async def run() -> dict:
        app = TamiyoApp(endpoint, refresh_hz=4.0)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()  # mounted and drawn: the start-up draws fall before the window
            conn.send("ready")
            go = await asyncio.to_thread(conn.recv)  # the app keeps running while it waits
            assert go == "go"
            state = app.aggregator.state
            r0, f0, w0 = resource.getrusage(resource.RUSAGE_SELF), app.frames, time.monotonic()
            e0 = state.delivery.events
            while time.monotonic() - w0 < seconds:
                await asyncio.sleep(0.1)  # not pilot.pause(): it walks every widget each call
            r1, f1, w1 = resource.getrusage(resource.RUSAGE_SELF), app.frames, time.monotonic()
            state = app.aggregator.state
            delivery = state.delivery
            folded = delivery.events - e0
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        return {
            "cpu_share": cpu / (w1 - w0),
            "fps": (f1 - f0) / (w1 - w0),
            "folded_rate": folded / (w1 - w0),
            "missed": delivery.missed,
            "stragglers": {r: (rs.straggler.score, rs.straggler.flagged) for r, rs in state.ranks.items()},
        }

    conn.send(asyncio.run(run()))


def tui(quick: bool) -> list[Figure]:
    times, cpu_times, histories = asyncio.run(_frame_times(10 if quick else 60))
    wall_ms = statistics.median(times) * 1e3
    # The value is the UI thread's CPU time: on a shared machine, wall time adds whatever else runs.
    cpu_ms = statistics.median(cpu_times) * 1e3

    rate, seconds = 50_000, 2.0 if quick else 5.0
    publisher = BusPublisher("bench", PublisherConfig(endpoint="tcp://127.0.0.1:*")).start()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_tui_under_load, args=(publisher.bound_endpoint, seconds, child), daemon=True)
    proc.start()
    assert parent.recv() == "ready"
    publisher.wait_for_subscriber(20)
    publisher.publish(STARTED)
    rng = random.Random(3)
    updates = [ppo_update(i, rng) for i in range(500)]
    parent.send("go")
    start = time.perf_counter()
    sent = accepted = 0
    while not parent.poll():
        due = int((time.perf_counter() - start) * rate)
        while sent < due:
            accepted += publisher.publish(updates[sent % 500])  # False: its queue was full, dropped
            sent += 1
        time.sleep(0.001)
    load = parent.recv()
    achieved = accepted / (time.perf_counter() - start)
    proc.join(10)
    publisher.close()
    dropped = publisher.stats.dropped
    # The share only means something if the dashboard kept up with the stream it was offered;
    # its CPU per event does not depend on that (but a loaded machine inflates both).
    per_event_us = load["cpu_share"] / max(load["folded_rate"], 1.0) * 1e6
    kept_up = load["folded_rate"] >= 0.95 * rate and not load["missed"]
    share = at_most(
        "tui_cpu_share",
        "TUI CPU share of one core under a 50k events/s stream",
        load["cpu_share"],
        0.5,
        "",
        1.0,
        f"getrusage over {seconds:g} s while the bench published {achieved:,.0f} ppo_update/s "
        f"({dropped:,} dropped by the bench's publisher); the dashboard folded "
        f"{load['folded_rate']:,.0f} ev/s ({'kept up' if kept_up else 'FELL BEHIND'}, "
        f"{load['missed']:,} missed), {per_event_us:.1f} µs CPU per event, so "
        f"{per_event_us * rate / 1e6:.2f} of a core at {rate:,} ev/s; "
        f"redraw held at {load['fps']:.1f} frames/s (set 4)",
    )
    return [
        at_most(
            "tui_frame_ms",
            "TUI frame at 160x48, full histories (median)",
            cpu_ms,
            20.0,
            "ms",
            1.0,
            f"draw() + Textual's layout and render of the changed regions to the headless driver, "
            f"CPU time of the UI thread (wall {wall_ms:.1f} ms); {len(times)} frames, "
            f"{FRAME_EVENTS} new events folded before each, {histories}-sample histories",
        ),
        dataclasses.replace(share, met=share.met and kept_up),
    ]


ARCHIVE_OFFERED = 60_000
"""Events/s the bench offers the archiver: above the goal, so an archiver that keeps up shows it."""


def _archive_pool(size: int = 2000) -> list[Event]:
    """Events in the training-like mix, built once and cycled: building one per publish would
    cost the bench's own publisher several µs an event, on the same 2 cores as the archiver."""
    rng = random.Random(4)
    return [
        heartbeat(i) if i % 20 == 19 else batch_completed(i, rng) if i % 2 else ppo_update(i, rng)
        for i in range(size)
    ]


def archiver(n: int) -> Figure:
    """Rows/s from the first publish until the archiver has taken the last event, at an offered rate.

    The bench publishes at ``ARCHIVE_OFFERED`` events/s (never dropping one: a full queue waits)
    and notes when the archiver takes the last event (its training_finished.csv appears); the
    rows reach disk at the next flush, within the 1 s promise, which is checked, as is every
    row of every file and the absence of gap rows.
    """
    pool = _archive_pool()
    expected = Counter(topic_of(pool[i % len(pool)]) for i in range(n))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run = out / "bench-archive"
        publisher = BusPublisher(
            "bench-archive", PublisherConfig(endpoint="tcp://127.0.0.1:*", sndhwm=100_000)
        ).start()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consumers.archiver",
                "--endpoint",
                publisher.bound_endpoint,
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            publisher.wait_for_subscriber(30)
            publisher.publish(STARTED)
            done = run / "training_finished.csv"
            cpu0 = _cpu_seconds(proc.pid)
            start = time.perf_counter()
            sent = 0
            while sent < n:
                due = min(n, int((time.perf_counter() - start) * ARCHIVE_OFFERED))
                while sent < due:
                    while not publisher.publish(pool[sent % len(pool)]):
                        time.sleep(0.0005)
                    sent += 1
                time.sleep(0.001)
            offered = n / (time.perf_counter() - start)
            publisher.publish(TrainingFinished(reason="done", updates=n, env_steps=n))
            deadline = time.monotonic() + 300
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.002)
            taken = time.perf_counter()
            elapsed = taken - start
            cpu = _cpu_seconds(proc.pid) - cpu0
            while _rows(done) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            on_disk_after = time.perf_counter() - taken
        finally:
            proc.terminate()
            proc.wait(30)
            publisher.close()
        rows = {path.stem: _rows(path) for path in run.glob("*.csv")}
    gap_rows = rows.pop("gaps", 0)
    # The publisher adds heartbeats of its own: heartbeat.csv holds at least the bench's.
    complete = all(rows.get(name, 0) >= count for name, count in expected.items())
    rate = n / elapsed
    figure = at_least(
        "archiver_rows",
        "archiver rows/s sustained (all rows, no gaps)",
        rate,
        50_000,
        "rows/s",
        1.0,
        f"{n:,} training-like events (half ppo_update) offered at {offered:,.0f}/s by the bench's "
        f"BusPublisher; first publish to the last event taken by the archiver; its row was on disk "
        f"{on_disk_after:.2f} s later (flush and fsync each second); "
        f"{'every row on disk' if complete else 'ROWS MISSING'}, {gap_rows} gap rows; "
        f"the archiver used {cpu / elapsed:.2f} of a core, {cpu / n * 1e6:.1f} µs CPU per row",
    )
    return dataclasses.replace(figure, met=figure.met and complete and not gap_rows and on_disk_after <= 1.5)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (Linux /proc; 0.0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _rows(path: Path) -> int:
    """Data rows of a CSV file (lines after the header); 0 when it does not exist."""
    try:
        with open(path, "rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    except FileNotFoundError:
        return 0
