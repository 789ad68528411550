"""``python -m producer`` as a subprocess: end to end over a real socket, signals, exit codes, bad flags."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from testkit.proc import ROOT, Proc

from bus.aggregator import Aggregator
from bus.contract import BatchCompleted, Envelope, PPOUpdate, TrainingFinished, TrainingStarted
from bus.feed import Gap
from bus.security import client_keys
from bus.subscribe import Subscriber, SubscriberConfig

START_TIMEOUT_S = 60.0
TINY = ["--n-envs", "4", "--rollout-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
TINY += ["--noise-warmup", "1"]  # gradient_cv from the first measurement

# What a client that knows only the documented contract (issue 2, docs/wire.md) expects to find.
DOCUMENTED_TRAINING_STARTED = [
    "n_envs",
    "max_epochs",
    "task",
    "host_params",
    "slot_ids",
    "seed",
    "n_episodes",
    "lr",
    "clip_ratio",
    "entropy_coef",
    "param_budget",
    "policy_device",
    "env_devices",
    "reward_mode",
    "compile_enabled",
    "compile_backend",
    "compile_mode",
    "action_heads",
    "world_size",
    "rank",
    "total_updates",
    "rollout_steps",
]
DOCUMENTED_PPO_UPDATE = [
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "kl_divergence",
    "clip_fraction",
    "clip_fraction_positive",
    "clip_fraction_negative",
    "gradient_cv",
    "gradient_cv_step",
    "gradient_noise_scale",
    "gradient_noise_batch",
    "cuda_memory_allocated_gb",
    "cuda_memory_reserved_gb",
    "cuda_memory_peak_gb",
    "cuda_memory_fragmentation",
    "cuda_memory_total_gb",
    "cuda_memory_free_gb",
    "cuda_memory_inactive_split_gb",
    "cuda_alloc_retries",
    "cuda_ooms",
    "cuda_memory_step",
    "explained_variance",
    "dead_layers",
    "exploding_layers",
    "total_layers",
    "nan_grad_count",
    "head_entropy",
    "head_grad_norm",
    "lr",
    "update_time_ms",
    "train_steps",
]
HEADS = {"op", "slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve"}


@pytest.fixture
def producer() -> Iterator[Callable[..., Proc]]:
    """Start ``python -m producer ARGS`` children; killed at teardown."""
    started: list[Proc] = []

    def start(*args: str) -> Proc:
        started.append(Proc("producer", *args))
        return started[-1]

    yield start
    for p in started:
        p.kill()


def receive_until_finished(
    sub: Subscriber, agg: Aggregator, proc: Proc, timeout: float = 120.0
) -> list[Envelope | Gap]:
    items: list[Envelope | Gap] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in sub.receive(0.2):
            items.append(item)
            agg.apply(item)
            if isinstance(item, Envelope) and isinstance(item.event, TrainingFinished):
                return items
    raise AssertionError(
        f"no training_finished in {timeout}s; got {items}; rc={proc.proc.poll()}\n{proc.describe()}"
    )


def test_end_to_end_producer_to_aggregator(producer: Callable[..., Proc]) -> None:
    proc = producer("--endpoint", "tcp://127.0.0.1:*", "--updates", "3", *TINY, "--wait-for-subscriber", "20")
    endpoint, run_id = proc.banner(START_TIMEOUT_S)
    agg = Aggregator()
    with Subscriber(SubscriberConfig(endpoint=endpoint)) as sub:
        items = receive_until_finished(sub, agg, proc)
    assert proc.wait(30) == 0, proc.stderr_text()
    assert not [i for i in items if isinstance(i, Gap)]
    envelopes = [i for i in items if isinstance(i, Envelope)]
    assert {e.run_id for e in envelopes} == {run_id}
    seqs = [e.seq for e in envelopes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # contiguous, in order
    evs = [e.event for e in envelopes]
    assert sum(isinstance(e, TrainingStarted) for e in evs) == 1
    updates = [e for e in evs if isinstance(e, PPOUpdate)]
    batches = [e for e in evs if isinstance(e, BatchCompleted)]
    assert [u.train_steps for u in updates] == [1, 2, 3] and len(batches) == 3
    assert evs[-1] == TrainingFinished(reason="done", updates=3, env_steps=3 * 4 * 16)
    for u in updates:
        assert 0 <= u.clip_fraction_positive <= 1 and 0 <= u.clip_fraction_negative <= 1
        assert u.gradient_cv > 0 and u.gradient_cv_step == 1  # measured at the first update, then carried
        assert u.cuda_memory_step == 1 and u.cuda_memory_allocated_gb == 0.0  # CPU: measured zeros
        assert u.total_layers > 0 and u.grad_norm > 0 and u.nan_grad_count == 0
        assert set(u.head_entropy) == set(u.head_grad_norm) == HEADS
    state = agg.state
    assert state.run.run_id == run_id and state.run.finished and state.run.finish_reason == "done"
    assert state.run.started is not None and state.run.started.action_heads["op"] == 6
    assert state.tamiyo.train_steps == 3 and state.rollout.env_steps == 3 * 4 * 16
    assert state.delivery.gaps == 0
    assert "Traceback" not in proc.stderr_text()


def test_an_untyped_msgpack_client_reads_the_documented_contract(producer: Callable[..., Proc]) -> None:
    proc = producer("--endpoint", "tcp://127.0.0.1:*", "--updates", "2", *TINY, "--wait-for-subscriber", "20")
    endpoint, run_id = proc.banner(START_TIMEOUT_S)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    # The documented topics, one per event type. (A subscribe-all b"" would work for receiving,
    # but bus.publish does not count it as a subscriber for --wait-for-subscriber.)
    for topic in ("training_started", "ppo_update", "batch_completed", "heartbeat", "training_finished"):
        sock.subscribe(topic.encode())
    sock.connect(endpoint)
    bodies: list[dict] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            bodies and bodies[-1]["event"]["type"] == "training_finished"
        ):
            if sock.poll(200):
                topic, body = sock.recv_multipart()
                envelope = msgspec.msgpack.decode(body)  # no schema: plain maps
                assert isinstance(envelope, dict) and topic.decode() == envelope["event"]["type"]
                bodies.append(envelope)
    finally:
        sock.close(0)
    assert proc.wait(30) == 0
    seqs = [b["seq"] for b in bodies]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(b["run_id"] == run_id and b["schema"] == 1 and b["ts"] > 0 for b in bodies)
    by_type: dict[str, list[dict]] = {}
    for b in bodies:
        by_type.setdefault(b["event"]["type"], []).append(b["event"])
    (started,) = by_type["training_started"]
    assert not [f for f in DOCUMENTED_TRAINING_STARTED if f not in started]
    assert started["world_size"] == 1 and started["rank"] == 0 and set(started["action_heads"]) == HEADS
    assert len(by_type["ppo_update"]) == 2
    for update in by_type["ppo_update"]:
        assert not [f for f in DOCUMENTED_PPO_UPDATE if f not in update]
        assert isinstance(update["head_entropy"], dict) and set(update["head_entropy"]) == HEADS
        assert 0 <= update["clip_fraction"] <= 1 and update["update_time_ms"] > 0
    assert by_type["training_finished"][0]["reason"] == "done"


def test_sigint_during_training_finishes_interrupted_and_exits_130(producer: Callable[..., Proc]) -> None:
    proc = producer(
        "--endpoint", "tcp://127.0.0.1:*", "--updates", "100000", *TINY, "--wait-for-subscriber", "20"
    )
    endpoint, _ = proc.banner(START_TIMEOUT_S)
    agg = Aggregator()
    items: list[Envelope | Gap] = []
    with Subscriber(SubscriberConfig(endpoint=endpoint)) as sub:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not agg.state.tamiyo.ppo_data_received:
            for item in sub.receive(0.2):
                agg.apply(item)
        assert agg.state.tamiyo.ppo_data_received, proc.stderr_text()
        proc.proc.send_signal(signal.SIGINT)
        items = receive_until_finished(sub, agg, proc, timeout=30)
    assert proc.wait(30) == 130
    finished = items[-1]
    assert isinstance(finished, Envelope) and isinstance(finished.event, TrainingFinished)
    assert finished.event.reason == "interrupted" and finished.event.updates >= 1
    stderr = proc.stderr_text()
    assert "Traceback" not in stderr and "tamiyo: interrupted after" in stderr


def test_sigterm_without_telemetry_exits_143(producer: Callable[..., Proc]) -> None:
    proc = producer("--no-telemetry", "--updates", "100000", *TINY)
    proc.wait_for_line(r"^tamiyo: telemetry off \(run ", START_TIMEOUT_S)
    assert proc.stderr[0].startswith("tamiyo: telemetry off")
    proc.wait_for_line(r"^update +1/100000 ", START_TIMEOUT_S)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    stderr = proc.stderr_text()
    assert "Traceback" not in stderr and "tamiyo: interrupted after" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-envs", "0"], "n_envs must be at least 1"),
        (["--device", "tpu"], "invalid choice"),
        (["--n-envs", "6", "--num-minibatches", "4"], "multiple of num_minibatches"),
        (["--updates", "many"], "invalid int value"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--endpoint", "tcp://0.0.0.0:5999"], "refusing to bind"),
        (["--endpoint", "tcp://0.0.0.0:5999", "--allow-remote"], "needs CURVE keys"),
        (["--curve-keys", "/nonexistent-keys"], "python -m bus.keys generate"),
        (["--summary-json", "/nonexistent-dir/summary.json"], "does not exist"),
        (["--connect", "tcp://127.0.0.1:5556", "--allow-remote"], "--connect (and torchrun's ranks"),
        (["--connect", "udp://somewhere"], "only tcp://, ipc:// and inproc://"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "producer", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cuda_without_cuda_exits_2_with_a_clear_message() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(
        [sys.executable, "-m", "producer", "--no-telemetry", "--device", "cuda", "--updates", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and "Traceback" not in result.stderr


def test_endpoint_in_use_exits_1_with_a_clear_message() -> None:
    ctx = zmq.Context.instance()
    holder = ctx.socket(zmq.PUB)
    holder.setsockopt(zmq.LINGER, 0)
    holder.bind("tcp://127.0.0.1:*")
    try:
        endpoint = holder.getsockopt_string(zmq.LAST_ENDPOINT)
        result = subprocess.run(
            [sys.executable, "-m", "producer", "--endpoint", endpoint, "--updates", "1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close(0)
    assert result.returncode == 1
    assert f"cannot bind {endpoint}" in result.stderr and "Traceback" not in result.stderr


def test_allow_remote_with_curve_keys_admits_only_authorized_consumers(
    producer: Callable[..., Proc], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    subprocess.run(
        [sys.executable, "-m", "bus.keys", "generate", str(keys)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    proc = producer(
        "--endpoint",
        "tcp://0.0.0.0:*",
        "--allow-remote",
        "--curve-keys",
        str(keys),
        "--updates",
        "3",
        *TINY,
        "--wait-for-subscriber",
        "20",
    )
    endpoint, run_id = proc.banner(START_TIMEOUT_S)
    local = "tcp://127.0.0.1:" + endpoint.rsplit(":", 1)[1]  # traffic stays on loopback
    client = client_keys(keys / "clients" / "client")
    with (
        Subscriber(SubscriberConfig(endpoint=local)) as stranger,
        Subscriber(SubscriberConfig(endpoint=local, **client)) as sub,
    ):
        items = receive_until_finished(sub, Aggregator(), proc)
        leaked = stranger.receive(0.2)
    assert proc.wait(30) == 0, proc.stderr_text()
    assert {i.run_id for i in items if isinstance(i, Envelope)} == {run_id}
    assert leaked == [] and stranger.stats.received == 0
