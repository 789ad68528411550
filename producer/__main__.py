"""``python -m producer``: train Tamiyo and publish its telemetry (what ``make train`` runs)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from types import FrameType
from typing import TextIO

from bus.endpoint import EndpointError
from bus.security import SecurityError, add_security_arguments
from producer import publisher as events
from producer.config import TrainConfig, add_config_arguments


class Interrupted(BaseException):
    """Raised from the signal handler when training cannot stop at its next check (a long compile).

    A BaseException, like KeyboardInterrupt, so torch.compile's error handling does not swallow it.
    """


class BadSetting(Exception):
    """A setting that can only be checked once torch is loaded (e.g. --device cuda without CUDA)."""


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop checks it every env step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hard = False
        """While True (imports, setup, a torch.compile), a signal raises Interrupted at once."""
        self.armed = True
        """While True, a second signal raises Interrupted even between checks; off while wrapping up."""

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.armed and (self.hard or not first):
            raise Interrupted(signal.Signals(signum).name)

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    @property
    def exit_code(self) -> int:
        return 143 if self.signum == signal.SIGTERM else 130


def build_parser() -> argparse.ArgumentParser:
    """The flags of TrainConfig (see ``add_config_arguments``) and of remote access."""
    p = argparse.ArgumentParser(
        prog="python -m producer",
        description="Train the Tamiyo recurrent PPO agent and publish live telemetry on a ZeroMQ socket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(p)
    add_security_arguments(p, "publisher")
    return p


def config_from_args(argv: Sequence[str] | None) -> TrainConfig:
    """Parse and validate; bad flags exit 2 through argparse."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    ns["curve_keys"] = ns["curve_keys"] or ""
    cfg = TrainConfig(**{f.name: ns[f.name] for f in fields(TrainConfig) if f.name in ns})
    problems = cfg.validate()
    if cfg.summary_json and not Path(cfg.summary_json).resolve().parent.is_dir():
        problems.append(f"--summary-json: directory of {cfg.summary_json!r} does not exist")
    if problems:
        parser.error("; ".join(problems))
    return cfg


class Progress:
    """The live progress line on stderr: redrawn in place on a terminal, else a line every few updates."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.every = max(1, min(25, total // 20))
        self.last_draw = 0.0

    def show(self, update: int, fps: float, ret: float | None, kl: float, elapsed: float) -> None:
        ret_text = "   n/a" if ret is None else f"{ret:+6.2f}"
        line = (
            f"update {update:>{len(str(self.total))}}/{self.total}  fps {fps:7.0f}  "
            f"return {ret_text}  kl {kl:.4f}  {elapsed:6.1f}s"
        )
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.1 or update == self.total:
                self.last_draw = now
                self.stream.write("\r" + line + "\x1b[K")  # clear what a longer line left
                self.stream.flush()
        elif update == 1 or update % self.every == 0 or update == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run(cfg: TrainConfig, tm: events.Telemetry, stop: StopFlag, err: TextIO) -> int:
    """Train, publishing through ``tm``, and return the process exit code."""
    trainer = None
    started = time.monotonic()
    first: list[float] = []
    recent: list[float] = []
    gradient_cvs: list[float] = []
    noise_scales: list[float] = []
    progress = Progress(err, cfg.updates)
    reason, error, tb, code = "done", "", "", 0

    def on_phase(phase: str) -> None:
        tm.set_phase(phase)
        stop.hard = phase == "compiling"  # a first compiled call cannot check the flag

    try:
        waited = cfg.wait_for_subscriber > 0
        if waited and not tm.wait_for_subscriber(cfg.wait_for_subscriber, stop) and not stop():
            err.write(f"tamiyo: no subscriber after {cfg.wait_for_subscriber:g}s, training anyway\n")
        stop.hard = True  # importing torch and building the trainer take a while: a signal ends them
        if stop():
            raise Interrupted("before training")
        import torch

        from producer.env import slot_ids
        from producer.trainer import Trainer, resolve_device

        torch.set_num_threads(cfg.threads)
        try:
            device = resolve_device(cfg.device)
        except ValueError as exc:
            raise BadSetting(str(exc)) from None
        trainer = Trainer(cfg, device, phase=on_phase)
        tm.publish(
            events.training_started(
                cfg,
                heads=trainer.heads,
                slot_ids=slot_ids(cfg.n_slots),
                policy_device=str(device),
                torch_version=torch.__version__,
            )
        )
        stop.hard = False
        started = time.monotonic()
        for update in range(1, cfg.updates + 1):
            if stop():
                break
            tm.set_update(update)
            rollout = trainer.rollout(stop)
            if rollout is None:
                break
            tm.publish(
                events.batch_completed(
                    update=update,
                    env_steps=rollout.env_steps,
                    fps=rollout.fps,
                    step_time_ms=rollout.step_time_ms,
                    episodes_completed=rollout.episodes_completed,
                    returns=rollout.returns,
                )
            )
            if rollout.returns:
                mean = sum(rollout.returns) / len(rollout.returns)
                recent = [*recent, mean][-cfg.return_window :]
                if len(first) < cfg.return_window:
                    first.append(mean)
            metrics = trainer.update(stop)
            if metrics is None:
                break
            if metrics["gradient_cv_step"] == metrics["train_steps"]:
                gradient_cvs.append(metrics["gradient_cv"])
                noise_scales.append(metrics["gradient_noise_scale"])
            tm.publish(events.ppo_update(metrics))
            progress.show(
                update,
                rollout.fps,
                recent[-1] if recent else None,
                metrics["kl_divergence"],
                time.monotonic() - started,
            )
        if stop():
            reason = "interrupted"
    except Interrupted:
        reason = "interrupted"
    except BadSetting as exc:
        reason, error, code = "crashed", str(exc), 2
        err.write(f"tamiyo: {exc}\n")
    except Exception as exc:
        reason, error, tb, code = "crashed", f"{type(exc).__name__}: {exc}", traceback.format_exc(), 1
    stop.armed = False
    stop.hard = False
    progress.end()
    if reason == "interrupted":
        code = stop.exit_code
    updates = trainer.train_steps if trainer else 0
    env_steps = trainer.env_steps if trainer else 0
    tm.set_phase("finished")
    tm.publish(events.training_finished(reason, updates=updates, env_steps=env_steps, error=error))
    if cfg.summary_json:
        elapsed = time.monotonic() - started
        summary = {
            "run_id": tm.run_id,
            "reason": reason,
            "updates": updates,
            "env_steps": env_steps,
            "elapsed_s": elapsed,
            "env_steps_per_s": env_steps / elapsed if elapsed > 0 else 0.0,
            "return_mean_first": sum(first) / len(first) if first else None,
            "return_mean_last": sum(recent) / len(recent) if recent else None,
            "return_window": cfg.return_window,
            "diagnostics_ms": trainer.diagnostics_ms if trainer else 0.0,
            "update_time_ms_total": trainer.update_ms if trainer else 0.0,
            "gradient_cv": gradient_cvs,
            "gradient_noise_scale": noise_scales,
            "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        }
        try:
            with open(cfg.summary_json, "w") as fh:
                json.dump(summary, fh, indent=2)
        except OSError as exc:
            err.write(f"tamiyo: could not write the summary: {exc}\n")
    if reason == "interrupted":
        err.write(f"tamiyo: interrupted after {updates} updates\n")
    elif reason == "crashed":
        err.write(tb)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(argv)
    stop = StopFlag()
    stop.install()
    run_id = new_run_id()
    err = sys.stderr
    try:
        telemetry: events.Telemetry = (
            events.BusTelemetry(
                run_id, cfg.endpoint, allow_remote=cfg.allow_remote, curve_keys=cfg.curve_keys
            )
            if cfg.telemetry
            else events.NullTelemetry(run_id)
        )
    except (EndpointError, SecurityError) as exc:
        err.write(f"tamiyo: {exc}\n")
        return 2
    except Exception as exc:  # zmq.ZMQError and friends: a port in use, a bad address
        err.write(f"tamiyo: cannot bind {cfg.endpoint}: {exc}\n")
        return 1
    if telemetry.endpoint:
        err.write(f"tamiyo: publishing on {telemetry.endpoint} (run {run_id})\n")
    else:
        err.write(f"tamiyo: telemetry off (run {run_id})\n")
    err.flush()
    try:
        code = run(cfg, telemetry, stop, err)
    finally:
        telemetry.close()
    if code in (130, 143):
        # Everything is sent, written and closed: skip the interpreter's teardown of torch
        # (about a second on a small machine) so that Ctrl-C ends the process promptly.
        sys.stdout.flush()
        err.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
