"""The Tamiyo wire contract: every event as a msgspec Struct in one tagged union.

Evolution rules (see docs/wire.md): a new field is added only with a default;
renaming, removing or retyping a field bumps ``SCHEMA_VERSION``. Decoders skip
fields they do not know, and consumers skip event types they do not know.

Every Struct here is ``gc=False``: it holds only numbers, strings and lists or dicts of
them, so it can never be part of a reference cycle, and the garbage collector need not
track the tens of thousands a consumer decodes each second (tracked, they set off
collections that walk the whole heap of a Textual app several times a second).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

SCHEMA_VERSION = 1
"""Bumped only on a breaking change; consumers refuse envelopes with a larger value."""

REPLAY_TOPIC_PREFIX = "~replay/"
"""Topic prefix of replayed history; no event type starts with '~', so SUB prefixes never collide."""

LIVE_TOPIC_PREFIXES: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz")
"""What a consumer subscribes to for the live stream: every event type name starts with a
lowercase ASCII letter, so this takes in event types added after the consumer was written
(their seqs then count as skipped, not as gaps) and never another consumer's replay."""


class TrainingStarted(msgspec.Struct, tag="training_started", kw_only=True, gc=False):
    """Static session metadata, sent once when the trainer starts (and replayed to late joiners)."""

    n_envs: int
    max_epochs: int
    task: str
    host_params: int
    slot_ids: list[str]
    seed: int
    n_episodes: int
    lr: float
    clip_ratio: float
    entropy_coef: float
    param_budget: int
    policy_device: str
    env_devices: list[str]
    reward_mode: str
    compile_enabled: bool = False
    compile_backend: str = ""
    compile_mode: str = ""
    action_heads: dict[str, int] = {}
    world_size: int = 1
    rank: int = 0
    total_updates: int = 0
    rollout_steps: int = 0
    num_minibatches: int = 0
    update_epochs: int = 0
    gamma: float = 0.0
    gae_lambda: float = 0.0
    diagnostics_every: int = 10
    torch_version: str = ""
    hostname: str = ""


class PPOUpdate(msgspec.Struct, tag="ppo_update", kw_only=True, gc=False):
    """One PPO update: losses, policy-change statistics and gradient health."""

    update: int
    train_steps: int
    env_steps: int
    policy_loss: float
    value_loss: float
    entropy: float
    grad_norm: float
    kl_divergence: float
    clip_fraction: float
    clip_fraction_positive: float
    clip_fraction_negative: float
    gradient_cv: float
    gradient_cv_step: int
    cuda_memory_allocated_gb: float
    cuda_memory_reserved_gb: float
    cuda_memory_peak_gb: float
    cuda_memory_fragmentation: float
    cuda_memory_step: int
    explained_variance: float
    dead_layers: int
    exploding_layers: int
    total_layers: int
    nan_grad_count: int
    head_entropy: dict[str, float]
    head_grad_norm: dict[str, float]
    lr: float
    update_time_ms: float
    # Issue 10 (docs/metrics.md): gradient_cv = sqrt(gradient_noise_scale / gradient_noise_batch), B_simple
    # in transitions (+inf: no detectable signal); device memory and allocator counters, throttled like
    # cuda_memory_*, all 0 without CUDA.
    gradient_noise_scale: float = 0.0
    gradient_noise_batch: int = 0
    cuda_memory_total_gb: float = 0.0
    cuda_memory_free_gb: float = 0.0
    cuda_memory_inactive_split_gb: float = 0.0
    cuda_alloc_retries: int = 0
    cuda_ooms: int = 0


class BatchCompleted(msgspec.Struct, tag="batch_completed", kw_only=True, gc=False):
    """One rollout (batch of env steps) collected; returns of the episodes that ended in it."""

    update: int
    env_steps: int
    fps: float
    step_time_ms: float
    episodes_completed: int
    episodes: int
    return_mean: float | None = None
    return_min: float | None = None
    return_max: float | None = None


class Heartbeat(msgspec.Struct, tag="heartbeat", kw_only=True, gc=False):
    """Sent every ``period_s`` by the publisher's own thread, also while the trainer is busy."""

    period_s: float
    phase: str
    update: int
    uptime_s: float
    dropped: int
    dropped_since_last: int
    sent: int


class TrainingFinished(msgspec.Struct, tag="training_finished", kw_only=True, gc=False):
    """The last event of a run: why it ended."""

    reason: str
    updates: int
    env_steps: int
    error: str = ""


Event = TrainingStarted | PPOUpdate | BatchCompleted | Heartbeat | TrainingFinished
"""The tagged union carried in ``Envelope.event``; the tag field is ``type``."""

EVENT_TYPES: tuple[type[msgspec.Struct], ...] = (
    TrainingStarted,
    PPOUpdate,
    BatchCompleted,
    Heartbeat,
    TrainingFinished,
)

TOPICS: tuple[str, ...] = tuple(t.__struct_config__.tag for t in EVENT_TYPES)
"""Every live topic; a topic is the event's ``type`` tag."""

FINISH_REASONS = ("done", "interrupted", "crashed")

PHASES = ("starting", "compiling", "rollout", "update", "finished")


class Envelope(msgspec.Struct, kw_only=True, gc=False):
    """What every message body is: a MessagePack map with one event inside."""

    schema: int
    run_id: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    ts: Annotated[float, msgspec.Meta(ge=0)]
    event: Event


class ReplayEnd(msgspec.Struct, kw_only=True, gc=False):
    """Body of the last frame of a replay burst: which run it was and the newest seq sent so far."""

    replay_end: bool
    run_id: str
    last_seq: int
    count: int


def topic_of(event: Event) -> str:
    """The live topic an event is published on."""
    return event.__struct_config__.tag  # type: ignore[return-value]
