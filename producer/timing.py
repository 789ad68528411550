"""This rank's compute and collective-wait time in an update (compute_time_ms, collective_wait_ms).

Per minibatch three marks: ``start`` (forward begins), ``ready`` (the last gradient bucket is
ready, from the DDP comm hook: local compute is over) and ``done`` (backward returned: the
all-reduce is over). compute = ready - start, wait = done - ready; in a single process nothing
marks ``ready``, so it is ``done`` and the wait is 0. On CPU the marks are perf_counter
readings; on CUDA they are events on the stream, read after the update's one host sync.
"""

# No ``from __future__ import annotations``: DDP checks the comm hook's annotations as real types.
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

Mark = float | torch.cuda.Event


class RankTimer:
    """Sums compute and collective wait over an update's minibatches."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._spans: list[tuple[Mark, Mark, Mark]] = []
        self._start: Mark = 0.0
        self._ready: Mark | None = None

    def reset(self) -> None:
        """At the start of an update."""
        self._spans.clear()

    def start(self) -> None:
        self._start = self._mark()
        self._ready = None

    def ready(self) -> None:
        self._ready = self._mark()

    def done(self) -> None:
        done = self._mark()
        self._spans.append((self._start, done if self._ready is None else self._ready, done))

    def totals_ms(self) -> tuple[float, float]:
        """(compute, wait) in ms over the update; on CUDA, call after the update's host sync."""
        compute = wait = 0.0
        for start, ready, done in self._spans:
            if isinstance(start, float):
                compute += (ready - start) * 1000.0  # type: ignore[operator]
                wait += (done - ready) * 1000.0  # type: ignore[operator]
            else:
                done.synchronize()  # type: ignore[union-attr]  # already complete after the sync
                compute += start.elapsed_time(ready)
                wait += ready.elapsed_time(done)  # type: ignore[union-attr]
        return compute, wait

    def _mark(self) -> Mark:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event


def timed_allreduce_hook(timer: RankTimer, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's own all-reduce, marking ``ready`` when the last bucket's gradients are all computed."""
    if bucket.is_last():
        timer.ready()
    return allreduce_hook(None, bucket)  # type: ignore[arg-type]  # None: the default group
