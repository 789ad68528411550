"""The dashboard against a real ``python -m producer`` subprocess: every panel fills and the numbers move."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from testkit.net import free_port
from testkit.wait import pilot_wait_until
from tui_helpers import async_test, settle

from consumers.tui.app import TamiyoApp

ROOT = Path(__file__).resolve().parents[2]
UPDATES = 8
DEADLINE_S = 150.0
EXITED_GRACE_S = 5.0
"""After the producer has exited, what it sent is in flight for at most this long."""
BANNER = re.compile(r"tamiyo: publishing on (\S+) \(run (\S+)\)")


class Producer:
    """``python -m producer`` on a free port; its stderr is drained by a thread and kept."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "producer",
                "--endpoint",
                self.endpoint,
                "--updates",
                str(UPDATES),
                "--n-envs",
                "4",
                "--wait-for-subscriber",
                "20",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.first_line = self.proc.stderr.readline()
        self.stderr: list[str] = [self.first_line]
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=5)


def shown_update(text: str) -> int:
    """The n of the header's `update n/N`, N being the run's --updates."""
    match = re.search(rf"update (\d+)/{UPDATES}\b", text)
    assert match, f"no 'update n/{UPDATES}' on screen:\n{text}"
    return int(match.group(1))


async def wait_for(pilot, condition, what: str, producer: Producer) -> None:
    def stderr() -> str:
        return f"; producer stderr: {''.join(producer.stderr)[-2000:]}"

    await pilot_wait_until(pilot, condition, what, DEADLINE_S, stderr)


@async_test
async def test_dashboard_follows_a_real_producer():
    producer = Producer()
    try:
        match = BANNER.search(producer.first_line)
        assert match, f"unexpected first stderr line: {producer.first_line!r}"
        assert match.group(1) == producer.endpoint
        run_id = match.group(2)

        app = TamiyoApp(producer.endpoint)
        async with app.run_test(size=(160, 48)) as pilot:
            state = lambda: app.aggregator.state  # noqa: E731
            await wait_for(pilot, lambda: state().tamiyo.ppo_data_received, "the first ppo_update", producer)
            first = await settle(app, pilot)
            first_update = shown_update(first)
            await wait_for(pilot, lambda: state().tamiyo.update > first_update, "a later update", producer)
            later = await settle(app, pilot)
            assert shown_update(later) > first_update  # the numbers on screen moved on
            await wait_for(pilot, lambda: state().run.finished, "training_finished", producer)
            final = await settle(app, pilot)

        assert state().run.run_id == run_id
        heads = state().run.started.action_heads  # type: ignore[union-attr]
        assert heads, "training_started names the action heads"
        for text in (later, final):
            assert "TAMIYO" in text and "Flow: CV:" in text and "Dead:" in text and "Clip:↑" in text
            for head in heads:
                assert f"│ {head} " in text
            assert "(↑" in text and "↓" in text
        assert "● FINISHED" in final and "0 dropped" in final
        assert producer.proc.wait(timeout=30) == 0
    finally:
        producer.close()
