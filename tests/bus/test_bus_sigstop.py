"""A SIGSTOPped consumer never holds up publish(); resumed, it refills or reports what it missed."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from bus_factories import ppo_update, training_started
from testkit.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONSUMER = Path(__file__).with_name("consumer_proc.py")
DEADLINE_S = 60.0
CHUNK = 1_000
BURST = 20_000
"""ppo_update messages (~700 bytes each) published while the consumer is stopped: far more than
the socket buffers and both high-water marks hold, so the publisher's side must drop."""


class ConsumerProcess:
    def __init__(self, endpoint: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, str(CONSUMER), endpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        self.last = -1
        self.done: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def poll(self) -> None:
        while True:
            try:
                msg = self.lines.get_nowait()
            except queue.Empty:
                return
            if "last" in msg:
                self.last = msg["last"]
            else:
                self.done = msg

    def wait_for(self, predicate) -> bool:  # type: ignore[no-untyped-def]
        def check() -> bool:
            self.poll()
            return predicate()

        return wait_until(check, DEADLINE_S)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX job-control signals")
def test_stopped_consumer_never_blocks_publish_and_then_reports_or_refills_its_gaps(make_publisher) -> None:
    pub = make_publisher("run-stop", sndhwm=1000)
    consumer = ConsumerProcess(pub.bound_endpoint)
    try:
        pub.publish(training_started())
        assert consumer.wait_for(lambda: consumer.last >= 1), "consumer never caught up"

        os.kill(consumer.proc.pid, signal.SIGSTOP)
        returned = 0
        for chunk in range(0, BURST, CHUNK):
            first = pub.last_seq
            for i in range(chunk, chunk + CHUNK):
                pub.publish(ppo_update(update=i))  # the "trainer" loop: every call must return
                returned += 1
            # Let the I/O thread hand the chunk to the socket, so none is lost to a full queue.
            assert wait_until(lambda first=first: pub.last_seq >= first + CHUNK, DEADLINE_S)
        assert returned == BURST and pub.stats.dropped == 0
        sent_after_burst = pub.last_seq
        # The I/O thread is not stuck either: it keeps sending heartbeats.
        assert wait_until(lambda: pub.last_seq > sent_after_burst + 3, DEADLINE_S)

        os.kill(consumer.proc.pid, signal.SIGCONT)
        target = pub.last_seq
        assert consumer.wait_for(lambda: consumer.last >= target), "consumer never caught up after SIGCONT"
        consumer.proc.send_signal(signal.SIGTERM)
        assert consumer.wait_for(lambda: consumer.done is not None)
        assert consumer.proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if consumer.proc.poll() is None:
            os.kill(consumer.proc.pid, signal.SIGCONT)
            consumer.proc.kill()
            consumer.proc.wait()
    done = consumer.done
    assert done is not None
    delivered = {s for first, last in done["delivered"] for s in range(first, last + 1)}
    missed: set[int] = set()
    for first, last in done["gaps"]:
        span = set(range(first, last + 1))
        assert not span & delivered and not span & missed
        missed |= span
    assert missed, "the burst should have overflowed the stopped consumer's buffers"
    start = min(delivered)
    end = max(delivered)
    assert delivered | missed == set(range(start, end + 1)), "every seq delivered or reported missing"
    assert done["resyncs"] + done["disconnects"] >= 1
    print(
        f"stopped consumer: {len(delivered)} delivered, {len(missed)} reported missing in "
        f"{len(done['gaps'])} gaps, {done['resyncs']} resyncs; publisher dropped {pub.stats.dropped}"
    )
