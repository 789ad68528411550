"""TrainConfig and the flags built from it: one documented field per flag, every number range-checked."""

from __future__ import annotations

import math
from dataclasses import Field, fields
from typing import Any, get_type_hints

import pytest

from producer.__main__ import build_parser, config_from_args
from producer.config import TrainConfig, check_value, field_docs

FLAGGED = [f for f in fields(TrainConfig) if f.metadata["flag"]]
NUMERIC = [f for f in FLAGGED if get_type_hints(TrainConfig)[f.name] in (int, float)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_every_field_has_a_docstring_and_every_flag_shows_it() -> None:
    docs = field_docs()
    assert set(docs) == {f.name for f in fields(TrainConfig)}
    assert all(docs.values())
    assert docs["lr"] == "Adam learning rate at the start of the run."
    helps = {a.dest: a.help for a in build_parser()._actions}
    for f in FLAGGED:
        assert helps[f.name].replace("%%", "%").startswith(docs[f.name]), f.name


def test_flags_keep_their_names_and_the_config_defaults() -> None:
    options = {o for a in build_parser()._actions for o in a.option_strings}
    expected = {_flag(f.name) for f in FLAGGED} - {"--telemetry"} | {"--no-telemetry"}
    assert expected | {"-h", "--help", "--allow-remote", "--curve-keys", "--fault"} == options
    assert config_from_args([]) == TrainConfig(curve_keys=TrainConfig().curve_keys)


def test_flags_reach_the_config() -> None:
    argv = ["--lr", "3e-4", "--n-envs", "8", "--no-telemetry", "--compile", "--device", "cpu"]
    cfg = config_from_args(argv)
    assert (cfg.lr, cfg.n_envs, cfg.telemetry, cfg.compile, cfg.device) == (3e-4, 8, False, True, "cpu")


def _below(f: Field[Any]) -> str:
    """A value just below the field's lower bound."""
    meta = f.metadata
    if meta["ge"] is not None:
        return str(int(meta["ge"]) - 1) if get_type_hints(TrainConfig)[f.name] is int else "-0.5"
    return str(meta["gt"])


@pytest.mark.parametrize("f", NUMERIC, ids=lambda f: f.name)
def test_every_numeric_flag_is_range_checked(f: Field[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert f.metadata["ge"] is not None or f.metadata["gt"] is not None, "every numeric flag needs a bound"
    err = _error([_flag(f.name), _below(f)], capsys)
    assert f"argument {_flag(f.name)}: {f.name} must be" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e999"])
@pytest.mark.parametrize("flag", ["--lr", "--wait-for-subscriber"])
def test_non_finite_floats_are_refused(flag: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error([f"{flag}={text}"], capsys)
    assert "must be a finite number" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-1"], "seed must be at least 0 (got -1)"),
        (["--seed", str(2**32)], "seed must be at most 4294967295"),
        (["--num-minibatches", "1"], "num_minibatches must be at least 2 (got 1)"),
        (["--updates", "1.5"], "invalid int value: '1.5'"),
        (["--lr", "fast"], "invalid float value: 'fast'"),
        (["--n-envs", "6", "--num-minibatches", "4"], "must be a multiple of num_minibatches"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _error(argv, capsys)


def test_validate_checks_a_config_built_in_code() -> None:
    assert TrainConfig().validate() == []
    problems = TrainConfig(lr=math.nan, gamma=1.5, device="tpu", n_envs=6).validate()
    assert problems == [
        "device must be one of cpu, cuda, auto (got 'tpu')",
        "lr must be a finite number (got nan)",
        "gamma must be at most 1.0 (got 1.5)",
        "n_envs (6) must be a multiple of num_minibatches (4): minibatches split whole env sequences",
    ]
    assert check_value("gae_lambda", 0.0) is None and check_value("gamma", 0.0) is not None
