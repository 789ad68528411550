"""The trainer's telemetry adapter: turns metrics into bus.contract events and hands them to BusPublisher.

``publish`` never blocks the training loop (BusPublisher queues, drops and counts on
overflow, and heartbeats from its own thread). ``NullTelemetry`` is the same interface
with no socket at all, for ``--no-telemetry`` overhead runs.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from bus.contract import BatchCompleted, Event, PPOUpdate, TrainingFinished, TrainingStarted
from bus.publish import BusPublisher, PublisherConfig
from bus.security import publisher_security
from producer.config import TrainConfig

TASK = "tamiyo-sim"
REWARD_MODE = "accuracy_gain_minus_rent"


class Telemetry(Protocol):
    """What the training loop talks to."""

    run_id: str
    endpoint: str
    """The bound (or connected) endpoint ("" when telemetry is off)."""

    def set_phase(self, phase: str) -> None: ...
    def set_update(self, update: int) -> None: ...
    def mark_progress(self) -> None:
        """The training loop made progress (an env step or a minibatch); must be cheap."""

    def publish(self, event: Event) -> None: ...
    def wait_for_subscriber(self, timeout: float, should_stop: Callable[[], bool]) -> bool: ...
    def close(self) -> None: ...


class BusTelemetry:
    """Publishes rank ``rank``'s events through a BusPublisher bound to ``endpoint`` (connected to it with
    ``connect``); raises EndpointError/ZMQError if it cannot."""

    def __init__(
        self,
        run_id: str,
        endpoint: str,
        *,
        allow_remote: bool = False,
        curve_keys: str = "",
        connect: bool = False,
        rank: int = 0,
    ) -> None:
        self.run_id = run_id
        security = publisher_security(allow_remote=allow_remote, curve_keys=curve_keys)
        config = PublisherConfig(endpoint=endpoint, connect=connect, **security)
        self.publisher = BusPublisher(run_id, config, rank=rank).start()
        self.endpoint = self.publisher.bound_endpoint

    def set_phase(self, phase: str) -> None:
        self.publisher.phase = phase

    def set_update(self, update: int) -> None:
        self.publisher.update = update

    def mark_progress(self) -> None:
        self.publisher.mark_progress()

    def publish(self, event: Event) -> None:
        self.publisher.publish(event)

    def wait_for_subscriber(self, timeout: float, should_stop: Callable[[], bool]) -> bool:
        """Wait in short slices so a Ctrl-C during the wait is seen within a fraction of a second."""
        deadline = time.monotonic() + timeout
        while not should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.publisher.wait_for_subscriber(min(left, 0.1)):
                return True
        return False

    def close(self) -> None:
        self.publisher.close()


class NullTelemetry:
    """``--no-telemetry``: the same calls, no socket, nothing sent."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.endpoint = ""
        self.events = 0

    def set_phase(self, phase: str) -> None:
        pass

    def set_update(self, update: int) -> None:
        pass

    def mark_progress(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        self.events += 1

    def wait_for_subscriber(self, timeout: float, should_stop: Callable[[], bool]) -> bool:
        return False

    def close(self) -> None:
        pass


def training_started(
    cfg: TrainConfig,
    *,
    heads: Mapping[str, int],
    slot_ids: Sequence[str],
    policy_device: str,
    torch_version: str,
    world_size: int = 1,
    rank: int = 0,
) -> TrainingStarted:
    """The run's static metadata, as rank ``rank`` of ``world_size`` sees it."""
    planned_episodes = cfg.updates * cfg.rollout_steps * cfg.n_envs // cfg.max_epochs
    return TrainingStarted(
        n_envs=cfg.n_envs,
        max_epochs=cfg.max_epochs,
        task=TASK,
        host_params=cfg.host_params,
        slot_ids=list(slot_ids),
        seed=cfg.seed,
        n_episodes=planned_episodes,
        lr=cfg.lr,
        clip_ratio=cfg.clip_ratio,
        entropy_coef=cfg.entropy_coef,
        param_budget=cfg.param_budget,
        policy_device=policy_device,
        env_devices=[policy_device] * cfg.n_envs,
        reward_mode=REWARD_MODE,
        compile_enabled=cfg.compile,
        compile_backend=cfg.compile_backend if cfg.compile else "",
        compile_mode=cfg.compile_mode if cfg.compile else "",
        action_heads=dict(heads),
        world_size=world_size,
        rank=rank,
        total_updates=cfg.updates,
        rollout_steps=cfg.rollout_steps,
        num_minibatches=cfg.num_minibatches,
        update_epochs=cfg.update_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        diagnostics_every=cfg.diagnostics_every,
        torch_version=torch_version,
        hostname=socket.gethostname(),
    )


def batch_completed(
    *,
    update: int,
    env_steps: int,
    fps: float,
    step_time_ms: float,
    episodes_completed: int,
    returns: Sequence[float],
) -> BatchCompleted:
    """One rollout; the return statistics cover the episodes that ended in it (None when none did)."""
    finite = [r for r in returns if math.isfinite(r)]
    return BatchCompleted(
        update=update,
        env_steps=env_steps,
        fps=fps,
        step_time_ms=step_time_ms,
        episodes_completed=episodes_completed,
        episodes=len(returns),
        return_mean=sum(finite) / len(finite) if finite else None,
        return_min=min(finite) if finite else None,
        return_max=max(finite) if finite else None,
    )


def ppo_update(metrics: Mapping[str, Any]) -> PPOUpdate:
    """A PPOUpdate from the trainer's metrics; a missing required field is a bug (KeyError).

    A field with a default that the trainer does not measure yet keeps its default.
    """
    required = PPOUpdate.__struct_fields__[
        : len(PPOUpdate.__struct_fields__) - len(PPOUpdate.__struct_defaults__)
    ]
    return PPOUpdate(
        **{name: metrics[name] for name in required},
        **{name: metrics[name] for name in PPOUpdate.__struct_fields__[len(required) :] if name in metrics},
    )


def training_finished(reason: str, *, updates: int, env_steps: int, error: str = "") -> TrainingFinished:
    return TrainingFinished(reason=reason, updates=updates, env_steps=env_steps, error=error)
