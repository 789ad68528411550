"""`make gpu-check`: compiled training on CUDA; cuda_* fields, compile status and fragmentation checked."""

from __future__ import annotations

import io
import math
import sys
from typing import Any

UPDATES = 4
FIELDS_NONZERO = (
    "cuda_memory_allocated_gb",
    "cuda_memory_reserved_gb",
    "cuda_memory_peak_gb",
    "cuda_memory_total_gb",
    "cuda_memory_free_gb",
)


class Recorder:
    """The trainer's Telemetry, keeping every event it publishes and every phase it reports."""

    def __init__(self) -> None:
        self.run_id = "gpu-check"
        self.endpoint = ""
        self.events: list[Any] = []
        self.phases: list[str] = []

    def set_phase(self, phase: str) -> None:
        self.phases.append(phase)

    def set_update(self, update: int) -> None:
        pass

    def publish(self, event: Any) -> None:
        self.events.append(event)

    def wait_for_subscriber(self, timeout: float, should_stop: Any) -> bool:
        return False

    def close(self) -> None:
        pass


def consistency(m: dict[str, float], where: str) -> list[str]:
    """What is wrong with one set of cuda_* values (empty when they agree with each other)."""
    bad = []
    alloc, reserved = m["cuda_memory_allocated_gb"], m["cuda_memory_reserved_gb"]
    total, free = m["cuda_memory_total_gb"], m["cuda_memory_free_gb"]
    if not alloc <= reserved <= total:
        bad.append(f"{where}: not allocated {alloc:.4f} <= reserved {reserved:.4f} <= total {total:.4f} GB")
    if not 0 < free <= total:
        bad.append(f"{where}: free {free:.4f} GB not in (0, total {total:.4f}]")
    if reserved > 0 and not math.isclose(m["cuda_memory_fragmentation"], 1 - alloc / reserved, abs_tol=1e-9):
        bad.append(f"{where}: fragmentation {m['cuda_memory_fragmentation']:.4f} != 1 - allocated/reserved")
    if not 0 <= m["cuda_memory_inactive_split_gb"] <= reserved:
        bad.append(
            f"{where}: inactive split {m['cuda_memory_inactive_split_gb']:.4f} GB not in [0, reserved]"
        )
    return bad


def train_and_check() -> list[str]:
    """A few compiled updates on CUDA through the real run loop; the published events checked."""
    from bus.contract import PPOUpdate, TrainingStarted
    from producer.__main__ import StopFlag, config_from_args, run

    cfg = config_from_args(
        ["--device", "cuda", "--compile", "--updates", str(UPDATES), "--diagnostics-every", "1"]
    )
    rec = Recorder()
    err = io.StringIO()
    code = run(cfg, rec, StopFlag(), err)  # type: ignore[arg-type]
    if code != 0:
        return [f"training exited {code}: {err.getvalue()[-2000:]}"]
    bad = []
    started = [e for e in rec.events if isinstance(e, TrainingStarted)]
    updates = [e for e in rec.events if isinstance(e, PPOUpdate)]
    if len(started) != 1 or not started[0].compile_enabled or not started[0].compile_backend:
        bad.append(f"training_started does not show the compile status: {started}")
    elif not started[0].policy_device.startswith("cuda"):
        bad.append(f"training_started policy_device is {started[0].policy_device!r}, not cuda")
    if "compiling" not in rec.phases:
        bad.append(f"the compiling phase was never reported (phases: {sorted(set(rec.phases))})")
    if len(updates) != UPDATES:
        return [*bad, f"{len(updates)} ppo_update events, expected {UPDATES}"]
    for u in updates:
        values = {f: getattr(u, f) for f in PPOUpdate.__struct_fields__ if f.startswith("cuda_")}
        zero = [f for f in FIELDS_NONZERO if not values[f] > 0]
        if zero:
            bad.append(f"update {u.update}: zero or missing {zero}")
        bad += consistency(values, f"update {u.update}")
        if u.cuda_memory_step != u.train_steps:
            bad.append(
                f"update {u.update}: cuda_memory_step {u.cuda_memory_step} (measured every update here)"
            )
        print(
            f"update {u.update}: "
            + " ".join(f"{k.removeprefix('cuda_')}={v:.4g}" for k, v in values.items()),
            f"gradient_cv={u.gradient_cv:.3f}",
        )
    return bad


def fragment_and_check() -> list[str]:
    """Interleaved small and large blocks, every other one freed: the fragmentation figures must move;
    an allocation larger than the device must count an OOM (and the allocator's retry before it)."""
    import torch

    from producer.diagnostics import collect_cuda_memory_metrics

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    before = collect_cuda_memory_metrics(device)
    blocks = []
    for i in range(400):  # 4 MB blocks split from 20 MB segments, 256 KB ones from 2 MB segments
        blocks.append(torch.empty(1 << 20 if i % 2 else 1 << 16, device=device))
    del blocks[::2]
    torch.cuda.synchronize()
    after = collect_cuda_memory_metrics(device)
    bad = consistency(before, "before fragmenting") + consistency(after, "after fragmenting")
    print(
        "fragmentation",
        f"{before['cuda_memory_fragmentation']:.3f} -> {after['cuda_memory_fragmentation']:.3f},",
        f"inactive split {before['cuda_memory_inactive_split_gb']:.4f}",
        f"-> {after['cuda_memory_inactive_split_gb']:.4f} GB",
    )
    if not after["cuda_memory_fragmentation"] > before["cuda_memory_fragmentation"]:
        bad.append("fragmentation did not rise after freeing every other block")
    if not after["cuda_memory_inactive_split_gb"] > before["cuda_memory_inactive_split_gb"]:
        bad.append("inactive split bytes did not rise after freeing every other block")
    try:
        torch.empty(int(after["cuda_memory_total_gb"] * 1e9 * 2) // 4, device=device)
        bad.append("an allocation of twice the device's memory succeeded")
    except torch.cuda.OutOfMemoryError:
        pass
    oom = collect_cuda_memory_metrics(device)
    print(
        f"after an oversized allocation: ooms {after['cuda_ooms']:g} -> {oom['cuda_ooms']:g},",
        f"alloc retries {after['cuda_alloc_retries']:g} -> {oom['cuda_alloc_retries']:g}",
    )
    if not oom["cuda_ooms"] > after["cuda_ooms"]:
        bad.append("cuda_ooms did not count the failed allocation")
    if not oom["cuda_alloc_retries"] > after["cuda_alloc_retries"]:
        bad.append("cuda_alloc_retries did not count the allocator's retry before the OOM")
    del blocks
    return bad


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    print(f"gpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    bad = train_and_check() + fragment_and_check()
    for line in bad:
        print(f"FAIL {line}", file=sys.stderr)
    print("gpu-check: FAILED" if bad else "gpu-check: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
