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

from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = 1
"""Bumped only on a breaking change; consumers refuse envelopes with a larger value."""

REPLAY_TOPIC_PREFIX = "~replay/"
"""Topic prefix of replayed history; no event type starts with '~', so SUB prefixes never collide."""

LIVE_TOPIC_PREFIXES: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz")
"""What a consumer subscribes to for the live stream: every event type name starts with a
lowercase ASCII letter, so this takes in event types added after the consumer was written
(their seqs then count as skipped, not as gaps) and never another consumer's replay."""


def _m(meaning: str, unit: str = "", *, measured_at: str = "", history: bool = False) -> msgspec.Meta:
    """A field's catalogue entry: its one-line meaning, its unit and whether it is throttled.

    ``measured_at`` names the field that says which update measured a throttled value;
    ``history`` asks consumers to keep a bounded history of it (a sparkline).
    """
    return msgspec.Meta(
        description=meaning,
        extra={"unit": unit, "throttled": bool(measured_at), "measured_at": measured_at, "history": history},
    )


Phase = Literal["starting", "compiling", "rollout", "update", "finished"]
"""What the trainer is doing. A new value is a breaking change (a Literal refuses others): bump the schema."""

FinishReason = Literal["done", "interrupted", "crashed"]
"""Why a run ended (``interrupted``: Ctrl-C or SIGTERM). A new value bumps the schema, as for ``Phase``."""


class TrainingStarted(msgspec.Struct, tag="training_started", kw_only=True, gc=False):
    """Static session metadata, sent once when the trainer starts (and replayed to late joiners)."""

    n_envs: Annotated[int, _m("parallel environments, stepped as one batch", "count")]
    max_epochs: Annotated[int, _m("env steps (host training epochs) per episode", "count")]
    task: Annotated[str, _m("what the environment simulates (`tamiyo-sim`)")]
    host_params: Annotated[int, _m("parameters of the simulated host network", "count")]
    slot_ids: Annotated[list[str], _m("the host's seed slots, in slot-head order")]
    seed: Annotated[int, _m("the run's random seed")]
    n_episodes: Annotated[int, _m("episodes the run is planned to complete", "count")]
    lr: Annotated[float, _m("initial learning rate")]
    clip_ratio: Annotated[float, _m("PPO clipping ε")]
    entropy_coef: Annotated[float, _m("entropy bonus weight")]
    param_budget: Annotated[
        int, _m("seed parameters the host can afford; rent is charged against it", "count")
    ]
    policy_device: Annotated[str, _m("torch device of the policy (`cpu`, `cuda:0`)")]
    env_devices: Annotated[list[str], _m("torch device of each environment")]
    reward_mode: Annotated[str, _m("how reward is computed (`accuracy_gain_minus_rent`)")]
    compile_enabled: Annotated[bool, _m("whether the policy runs under `torch.compile`")] = False
    compile_backend: Annotated[str, _m('`torch.compile` backend (`inductor`, …), "" when not compiled')] = ""
    compile_mode: Annotated[
        str, _m("`torch.compile` mode (`default`, `reduce-overhead`, `max-autotune`)")
    ] = ""
    action_heads: Annotated[
        dict[str, int],
        _m(
            "each action head's name and number of choices (`op` 6, `slot`, `blueprint` 13, `style` 4, "
            "`tempo` 3, `alpha_target` 3, `alpha_speed` 4, `alpha_curve` 5)",
            "count",
        ),
    ] = {}
    world_size: Annotated[int, _m("processes in the training job", "count")] = 1
    rank: Annotated[int, _m("this process's rank")] = 0
    total_updates: Annotated[int, _m("PPO updates the run will do (0: unknown)", "count")] = 0
    rollout_steps: Annotated[int, _m("env steps per environment per rollout", "count")] = 0
    num_minibatches: Annotated[int, _m("minibatches per update epoch", "count")] = 0
    update_epochs: Annotated[int, _m("passes over each rollout", "count")] = 0
    gamma: Annotated[float, _m("discount factor")] = 0.0
    gae_lambda: Annotated[float, _m("GAE λ")] = 0.0
    diagnostics_every: Annotated[
        int,
        _m("throttled diagnostics are measured when `train_steps % diagnostics_every == 0`", "updates"),
    ] = 10
    torch_version: Annotated[str, _m("`torch.__version__` of the trainer")] = ""
    hostname: Annotated[str, _m("host the trainer runs on")] = ""


_GRADIENT_CV = "gradient_cv_step"
_CUDA = "cuda_memory_step"


class PPOUpdate(msgspec.Struct, tag="ppo_update", kw_only=True, gc=False):
    """One PPO update: losses, policy-change statistics and gradient health."""

    update: Annotated[int, _m("1-based number of this update", "count")]
    train_steps: Annotated[int, _m("PPO updates completed, this one included", "count")]
    env_steps: Annotated[int, _m("environment steps (all envs) collected so far", "count")]
    policy_loss: Annotated[float, _m("clipped surrogate loss", history=True)]
    value_loss: Annotated[float, _m("(clipped) value loss, ½·MSE", "return²", history=True)]
    entropy: Annotated[float, _m("policy entropy summed over the action heads", "nats", history=True)]
    grad_norm: Annotated[float, _m("global gradient L2 norm before clipping", history=True)]
    kl_divergence: Annotated[
        float, _m("approximate KL(old‖new), the k3 estimator `(r − 1) − log r`", "nats", history=True)
    ]
    clip_fraction: Annotated[
        float, _m("share of ratios `r = π_new/π_old` with |r − 1| > ε", "fraction", history=True)
    ]
    clip_fraction_positive: Annotated[float, _m("share with r > 1 + ε (increases capped)", "fraction")]
    clip_fraction_negative: Annotated[float, _m("share with r < 1 − ε (decreases capped)", "fraction")]
    gradient_cv: Annotated[
        float,
        _m(
            "noise-to-signal ratio of the update's mean gradient, √(B_simple/B) at the update's starting "
            "weights, pooled; +inf: no detectable signal",
            measured_at=_GRADIENT_CV,
            history=True,
        ),
    ]
    gradient_cv_step: Annotated[
        int, _m("`train_steps` of the update that measured `gradient_cv`; −1 never", "update")
    ]
    cuda_memory_allocated_gb: Annotated[
        float, _m("allocated by tensors (0.0 without CUDA)", "GB", measured_at=_CUDA)
    ]
    cuda_memory_reserved_gb: Annotated[
        float, _m("reserved by the caching allocator", "GB", measured_at=_CUDA)
    ]
    cuda_memory_peak_gb: Annotated[
        float, _m("largest allocation since the trainer started", "GB", measured_at=_CUDA)
    ]
    cuda_memory_fragmentation: Annotated[
        float, _m("1 − allocated/reserved (0.0 when nothing is reserved)", "fraction", measured_at=_CUDA)
    ]
    cuda_memory_step: Annotated[
        int, _m("`train_steps` of the update that measured the four `cuda_memory_*`; −1 never", "update")
    ]
    explained_variance: Annotated[
        float, _m("1 − Var(returns − values)/Var(returns) over the rollout", history=True)
    ]
    dead_layers: Annotated[
        int, _m("parameter tensors whose gradient is dead (> 90% of elements below 1e-6)", "count")
    ]
    exploding_layers: Annotated[
        int, _m("parameter tensors whose gradient explodes (> 10% of elements above 10)", "count")
    ]
    total_layers: Annotated[int, _m("parameter tensors checked", "count")]
    nan_grad_count: Annotated[int, _m("non-finite gradient elements seen during the update", "count")]
    head_entropy: Annotated[dict[str, float], _m("entropy of each action head", "nats")]
    head_grad_norm: Annotated[dict[str, float], _m("gradient L2 norm of each head's parameters")]
    lr: Annotated[float, _m("learning rate used by this update")]
    update_time_ms: Annotated[float, _m("wall time the update took", "ms", history=True)]
    compute_time_ms: Annotated[
        float,
        _m("this rank's forward+backward time in the update, before the gradient all-reduce", "ms"),
    ] = 0.0
    collective_wait_ms: Annotated[
        float, _m("time this rank spent in the gradient all-reduce (mostly waiting); 0 single-process", "ms")
    ] = 0.0
    gradient_noise_scale: Annotated[
        float,
        _m(
            "gradient noise scale B_simple = tr Σ / |G|², at the update's starting weights; "
            "+inf: no detectable signal",
            "transitions",
            measured_at=_GRADIENT_CV,
        ),
    ] = 0.0
    gradient_noise_batch: Annotated[
        int, _m("the batch B that `gradient_cv` = √(B_simple/B) compares B_simple with", "transitions")
    ] = 0
    cuda_memory_total_gb: Annotated[
        float,
        _m("the device's capacity (`torch.cuda.mem_get_info`; 0.0 without CUDA)", "GB", measured_at=_CUDA),
    ] = 0.0
    cuda_memory_free_gb: Annotated[
        float,
        _m("free on the device, all processes counted (`torch.cuda.mem_get_info`)", "GB", measured_at=_CUDA),
    ] = 0.0
    cuda_memory_inactive_split_gb: Annotated[
        float,
        _m(
            "inactive split blocks held by the allocator (`inactive_split_bytes.all.current`)",
            "GB",
            measured_at=_CUDA,
        ),
    ] = 0.0
    cuda_alloc_retries: Annotated[
        int,
        _m("allocations that had to free cached blocks and retry, cumulative", "count", measured_at=_CUDA),
    ] = 0
    cuda_ooms: Annotated[
        int, _m("out-of-memory errors the allocator raised, cumulative", "count", measured_at=_CUDA)
    ] = 0


class BatchCompleted(msgspec.Struct, tag="batch_completed", kw_only=True, gc=False):
    """One rollout (batch of env steps) collected; returns of the episodes that ended in it."""

    update: Annotated[int, _m("the update this rollout feeds", "count")]
    env_steps: Annotated[int, _m("environment steps (all envs) collected so far", "count")]
    fps: Annotated[float, _m("env steps per second during this rollout", "1/s", history=True)]
    step_time_ms: Annotated[float, _m("wall time per vectorized env step (all envs at once)", "ms")]
    episodes_completed: Annotated[int, _m("episodes finished since the run started", "count")]
    episodes: Annotated[int, _m("episodes that finished during this rollout", "count")]
    return_mean: Annotated[
        float | None, _m("mean return of those episodes; nil when none finished", history=True)
    ] = None
    return_min: Annotated[float | None, _m("lowest of those returns")] = None
    return_max: Annotated[float | None, _m("highest of those returns")] = None


class Heartbeat(msgspec.Struct, tag="heartbeat", kw_only=True, gc=False):
    """Sent every ``period_s`` by the publisher's own thread, also while the trainer is busy."""

    period_s: Annotated[float, _m("time between heartbeats (1.0)", "s")]
    phase: Annotated[Phase, _m("what the trainer is doing")]
    update: Annotated[int, _m("the update the trainer is on", "count")]
    uptime_s: Annotated[float, _m("time since the publisher started", "s")]
    dropped: Annotated[
        int, _m("events the publisher dropped so far (queue full, socket refused, over 1 MiB)", "count")
    ]
    dropped_since_last: Annotated[int, _m("of those, since the previous heartbeat", "count")]
    sent: Annotated[int, _m("messages handed to the socket so far", "count")]
    progress_age_s: Annotated[
        float | None,
        _m("since the training loop last made progress (env step or minibatch); nil: not reported", "s"),
    ] = None
    replays_refused: Annotated[
        int, _m("replay requests the publisher refused so far (rate or concurrency limit)", "count")
    ] = 0


class TrainingFinished(msgspec.Struct, tag="training_finished", kw_only=True, gc=False):
    """The last event of a run: why it ended."""

    reason: Annotated[FinishReason, _m("why the run ended (`interrupted`: Ctrl-C, SIGTERM)")]
    updates: Annotated[int, _m("updates completed", "count")]
    env_steps: Annotated[int, _m("environment steps collected", "count")]
    error: Annotated[str, _m("for `crashed`: the exception, as text")] = ""


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


class Envelope(msgspec.Struct, kw_only=True, gc=False):
    """What every message body is: a MessagePack map with one event inside."""

    schema: int
    run_id: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    ts: Annotated[float, msgspec.Meta(ge=0)]
    event: Event
    rank: int = 0
    """The torch.distributed rank that published it (0 in a single process); seq counts per rank."""


class ReplayEnd(msgspec.Struct, kw_only=True, gc=False):
    """Body of the last frame of a replay burst: which run it was and the newest seq sent so far."""

    replay_end: bool
    run_id: str
    last_seq: int
    count: int
    rank: int = 0
    """The rank whose replay this ends (each rank's publisher replays its own history)."""
    ranks: int = 1
    """How many ReplayEnd frames make up this replay: one per (run, rank) replayed, each naming its
    ``rank`` and ``last_seq``. A forwarder replays every rank of a run; a direct publisher sends 1."""


def topic_of(event: Event) -> str:
    """The live topic an event is published on."""
    return event.__struct_config__.tag  # type: ignore[return-value]
