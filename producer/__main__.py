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
from typing import TYPE_CHECKING, TextIO

from bus.endpoint import EndpointError, check_endpoint
from bus.security import SecurityError, add_security_arguments
from producer import publisher as events
from producer.config import TrainConfig, add_config_arguments
from producer.faults import add_fault_arguments, check_fault_device, check_fault_ranks
from producer.world import FORWARDER_FRONTEND, World, world_from_env

if TYPE_CHECKING:
    from producer.distributed import ProcessGroup


class Interrupted(BaseException):
    """Raised from the signal handler when training cannot stop at its next check (a long compile).

    A BaseException, like KeyboardInterrupt, so torch.compile's error handling does not swallow it.
    """


class BadSetting(Exception):
    """A setting that can only be checked once torch is loaded (e.g. --device cuda without CUDA)."""


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop checks it every env step."""

    def __init__(self, *, collective: bool = False) -> None:
        self.signum: int | None = None
        self.hard = False
        """While True (imports, setup, a torch.compile), a signal raises Interrupted at once."""
        self.armed = True
        """While True, a second signal raises Interrupted even between checks; off while wrapping up."""
        self.collective = collective
        """Under torchrun: a signal only sets the flag, and the ranks stop together at an agreed check
        (a rank that left on its own would strand the others in a collective); torchrun itself kills
        a rank that has not ended 30 s after it forwarded the signal."""

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.armed and not self.collective and (self.hard or not first):
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
    add_fault_arguments(p)
    add_security_arguments(p, "publisher")
    return p


def config_from_args(argv: Sequence[str] | None, world: World | None = None) -> TrainConfig:
    """Parse and validate (for this ``world`` of ranks); bad flags exit 2 through argparse."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    ns["curve_keys"] = ns["curve_keys"] or ""
    ns["faults"] = tuple(ns["faults"])
    cfg = TrainConfig(**{f.name: ns[f.name] for f in fields(TrainConfig) if f.name in ns})
    problems = cfg.validate()
    if cfg.summary_json and not Path(cfg.summary_json).resolve().parent.is_dir():
        problems.append(f"--summary-json: directory of {cfg.summary_json!r} does not exist")
    world = world or World()
    if (cfg.connect or world.distributed) and (cfg.allow_remote or cfg.curve_keys):
        problems.append(
            "--allow-remote and --curve-keys secure a bound --endpoint; --connect (and torchrun's ranks, "
            "which connect to a forwarder) bind nothing"
        )
    problems += check_fault_ranks(cfg.faults, world.world_size)
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


def run(
    cfg: TrainConfig, tm: events.Telemetry, stop: StopFlag, err: TextIO, group: ProcessGroup | None = None
) -> int:
    """Train, publishing through ``tm``, and return the process exit code.

    With a ``group`` (torchrun), this is one rank: every stop the loop acts on is agreed by all ranks,
    and only rank 0 draws the progress line and writes the summary.
    """
    world = group.world if group else World()
    should_stop = group.agreed_stop(stop) if group else stop
    lead = world.rank == 0
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
        if should_stop():
            raise Interrupted("before training")
        import torch

        from producer.env import slot_ids
        from producer.trainer import Trainer, resolve_device

        torch.set_num_threads(cfg.threads)
        try:
            device = group.device if group else resolve_device(cfg.device)
        except ValueError as exc:
            raise BadSetting(str(exc)) from None
        if problems := check_fault_device(cfg.faults, device.type):
            raise BadSetting("; ".join(problems))
        trainer = Trainer(
            cfg, device, phase=on_phase, progress=tm.mark_progress, interrupted=stop, group=group
        )
        tm.publish(
            events.training_started(
                cfg,
                heads=trainer.heads,
                slot_ids=slot_ids(cfg.n_slots),
                policy_device=str(device),
                torch_version=torch.__version__,
                world_size=world.world_size,
                rank=world.rank,
            )
        )
        stop.hard = False
        started = time.monotonic()
        tm.mark_progress()  # the training loop starts: heartbeats report progress from here on
        for update in range(1, cfg.updates + 1):
            if should_stop():
                break
            tm.set_update(update)
            rollout = trainer.rollout(should_stop)
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
            metrics = trainer.update(should_stop)
            if metrics is None:
                break
            if metrics["gradient_cv_step"] == metrics["train_steps"]:
                gradient_cvs.append(metrics["gradient_cv"])
                noise_scales.append(metrics["gradient_noise_scale"])
            tm.publish(events.ppo_update(metrics))
            if lead:
                progress.show(
                    update,
                    rollout.fps,
                    recent[-1] if recent else None,
                    metrics["kl_divergence"],
                    time.monotonic() - started,
                )
        if should_stop():
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
    if lead:
        progress.end()
    if reason == "interrupted":
        code = stop.exit_code
    updates = trainer.train_steps if trainer else 0
    env_steps = trainer.env_steps if trainer else 0
    tm.set_phase("finished")
    tm.publish(events.training_finished(reason, updates=updates, env_steps=env_steps, error=error))
    if cfg.summary_json and lead:
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
    if reason == "interrupted" and lead:
        err.write(f"tamiyo: interrupted after {updates} updates\n")
    elif reason == "crashed":
        err.write(tb)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    world = world_from_env()
    cfg = config_from_args(argv, world)
    stop = StopFlag(collective=world.distributed)
    stop.install()
    run_id = new_run_id()
    err = sys.stderr
    group = None
    if world.distributed:
        try:
            group = start_group(world, cfg.device)
        except BadSetting as exc:
            err.write(f"tamiyo: {exc}\n")
            return 2
        run_id = group.shared_run_id(run_id)
    connect = cfg.connect or (FORWARDER_FRONTEND if world.distributed else "")
    try:
        if cfg.telemetry:
            check_endpoint(cfg.endpoint, bind=True)
        telemetry: events.Telemetry = (
            events.BusTelemetry(
                run_id,
                connect or cfg.endpoint,
                allow_remote=cfg.allow_remote,
                curve_keys=cfg.curve_keys,
                connect=bool(connect),
                rank=world.rank,
            )
            if cfg.telemetry
            else events.NullTelemetry(run_id)
        )
    except (EndpointError, SecurityError) as exc:
        err.write(f"tamiyo: {exc}\n")
        return end_group(group, 2)
    except Exception as exc:  # zmq.ZMQError and friends: a port in use, a bad address
        err.write(f"tamiyo: cannot {'connect to' if connect else 'bind'} {connect or cfg.endpoint}: {exc}\n")
        return end_group(group, 1)
    if world.rank > 0:
        pass  # rank 0 speaks for the ranks
    elif not telemetry.endpoint:
        err.write(f"tamiyo: telemetry off (run {run_id})\n")
    elif world.distributed:
        ranks = world.world_size
        err.write(f"tamiyo: {ranks} ranks publishing through {telemetry.endpoint} (run {run_id})\n")
    elif connect:
        err.write(f"tamiyo: publishing through {telemetry.endpoint} (run {run_id})\n")
    else:
        err.write(f"tamiyo: publishing on {telemetry.endpoint} (run {run_id})\n")
    err.flush()
    try:
        code = run(cfg, telemetry, stop, err, group)
    finally:
        telemetry.close()
        end_group(group, 0)
    if code in (130, 143):
        # Everything is sent, written and closed: skip the interpreter's teardown of torch
        # (about a second on a small machine) so that Ctrl-C ends the process promptly.
        sys.stdout.flush()
        err.flush()
        os._exit(code)
    return code


def start_group(world: World, device_name: str) -> ProcessGroup:
    """Join torchrun's process group on this rank's device; BadSetting when the device is missing."""
    from producer.distributed import ProcessGroup
    from producer.trainer import resolve_device

    try:
        device = resolve_device(device_name)
    except ValueError as exc:
        raise BadSetting(str(exc)) from None
    return ProcessGroup(world, device)


def end_group(group: ProcessGroup | None, code: int) -> int:
    if group is not None:
        group.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
