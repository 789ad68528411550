"""torchrun and DDP: the process group from env://, the shared run id, the policy's DDP, agreed stops."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from producer.timing import RankTimer, timed_allreduce_hook
from producer.world import World

STOP_CHECK_EVERY = 8
"""The ranks agree on stopping at every 8th stop check (env steps and minibatches): one tiny all-reduce."""


class ProcessGroup:
    """This rank's process group (gloo on CPU, nccl on CUDA) from torchrun's env://; ``close`` destroys it."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world = world
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        # Stop flags and the run id travel on CPU tensors: on a gloo group they cost no device sync.
        self.control = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD

    def shared_run_id(self, run_id: str) -> str:
        """Rank 0's ``run_id`` on every rank.

        Not TORCHELASTIC_RUN_ID: that is "none" unless --rdzv-id or --standalone set it, and it
        survives an elastic restart, after which every rank's seq starts again at 0.
        """
        box = [run_id]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def agreed_stop(self, local: Callable[[], bool]) -> AgreedStop:
        return AgreedStop(local, self.control)

    def wrap(self, module: nn.Module, timer: RankTimer) -> DistributedDataParallel:
        """DDP over ``module``, its all-reduce timed by ``timer`` (see producer.timing)."""
        ddp = DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            forward_sync_buffers=False,  # the policy's buffers are constant masks
        )
        ddp.register_comm_hook(timer, timed_allreduce_hook)
        return ddp

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class AgreedStop:
    """A stop check that every rank answers alike, so no rank leaves while the others wait in a collective.

    Every rank calls it at the same points of the same loop, so its n-th call is the n-th call on
    every rank: every ``STOP_CHECK_EVERY``-th call (the first included) takes the maximum of the
    ranks' local flags. Once it says stop, it stays so without further collectives.
    """

    def __init__(self, local: Callable[[], bool], group: dist.ProcessGroup | None) -> None:
        self.local = local
        self.group = group
        self.calls = 0
        self.stopped = False
        self._flag = torch.zeros(1, dtype=torch.int32)

    def __call__(self) -> bool:
        if self.stopped:
            return True
        due = self.calls % STOP_CHECK_EVERY == 0
        self.calls += 1
        if due:
            self._flag.fill_(int(self.local()))
            dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self.group)
            self.stopped = bool(self._flag.item())
        return self.stopped
