"""The three dashboard states the snapshot tests show: waiting, healthy, alarmed."""

from __future__ import annotations

from tui_helpers import ENDPOINT
from tui_synth import Clock, Run, batch, head_entropies, healthy_run, heartbeat, ppo

from bus.feed import Gap
from consumers.tui.app import TamiyoApp


def waiting_app() -> TamiyoApp:
    clock = Clock()
    app = TamiyoApp(ENDPOINT, clock=clock, connect=False)
    clock.advance(12.0)
    return app


def healthy_items() -> list:
    run = Run("7f3a9c21e4b0")
    items = healthy_run(run, 120, compile_enabled=True, device="cuda:0")
    memory = dict(cuda_memory_allocated_gb=4.2, cuda_memory_reserved_gb=8.0, cuda_memory_total_gb=80.0)
    items.append(run.env(ppo(120, **memory, cuda_memory_free_gb=70.4)))  # [Mem:12%]: plenty left
    items.append(run.env(heartbeat("rollout", 120)))
    return items


def alarmed_items() -> list:
    run = Run("c0ffee5eed01")
    items = healthy_run(run, 60, device="cuda:0")
    for u in range(60, 90):
        collapse = max(0.02, 0.8 - 0.03 * (u - 60))
        mean = 2.0 - 0.1 * (u - 60)
        items.append(run.env(batch(u, return_mean=mean, return_min=mean - 2.0, return_max=mean + 2.0)))
        items.append(
            run.env(
                ppo(
                    u,
                    kl_divergence=0.02 + 0.01 * (u - 60),
                    clip_fraction=0.2 + 0.012 * (u - 60),
                    clip_fraction_positive=0.05 + 0.01 * (u - 60),
                    clip_fraction_negative=0.02,
                    head_entropy=head_entropies(collapse) | {"op": 0.01},
                    grad_norm=3.0 + 0.6 * (u - 60),
                    gradient_cv=2.6,
                    dead_layers=2,
                    explained_variance=0.3 - 0.02 * (u - 60),
                    cuda_memory_allocated_gb=7.5,
                    cuda_memory_reserved_gb=8.0,
                    cuda_memory_total_gb=80.0,
                    cuda_memory_free_gb=4.8,  # [Mem:94%]: another process holds most of the GPU
                )
            )
        )
    items.append(Gap(run.run_id, run.seq, run.seq + 2, 0.0))
    run.seq += 3
    items.append(run.env(heartbeat("update", 90)))
    return items
