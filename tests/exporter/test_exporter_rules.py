"""The shipped Prometheus alert rules: generated from the default rules, valid, alerting like the daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client", reason="pip install -e '.[prometheus]'")

from consumers.alerts.rules import default_rules, parse_rules
from consumers.exporter import __main__ as exporter_main
from consumers.exporter.promql import DEFAULT_UPDATE_SECONDS, expression, rules_yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "prometheus" / "alerts.rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus; .ci/run does)"
)


def test_the_shipped_rules_are_the_default_rules_generated() -> None:
    assert RULES.read_text(encoding="utf-8") == rules_yaml(default_rules()), (
        "regenerate: python -m consumers.exporter --alert-rules > docs/prometheus/alerts.rules.yml"
    )


def test_every_default_rule_has_a_promql_counterpart_by_name_with_its_threshold_and_severity() -> None:
    text = RULES.read_text(encoding="utf-8")
    blocks = dict(re.findall(r"- alert: (\S+)\n((?:        .*\n)+)", text))
    rules = default_rules()
    assert set(blocks) == {r.name for r in rules}
    for rule in rules:
        block = blocks[rule.name]
        assert f"severity: {rule.severity}\n" in block
        assert f"{rule.op} {rule.fire:g}" in block and "summary: " in block
        if rule.clear != rule.fire:
            assert f"{rule.op} {rule.clear:g} and on(run_id, rank) ALERTS" in block
        wait = rule.for_seconds or rule.for_updates * DEFAULT_UPDATE_SECONDS
        assert (f"for: {wait:g}s" in block) == bool(wait)


def test_thresholds_are_scaled_to_the_exposed_base_unit() -> None:
    slow, mem = parse_rules(
        '[[rule]]\nname = "slow"\nmetric = "update_time_ms"\nop = ">"\nfire = 500\nclear = 250\n'
        '[[rule]]\nname = "mem"\nmetric = "memory_usage_percent"\nop = ">"\nfire = 90\n'
    )
    assert expression(slow).startswith(
        "tamiyo_update_time_seconds > 0.5 or (tamiyo_update_time_seconds > 0.25"
    )
    assert expression(mem) == "tamiyo_memory_usage_ratio > 0.9"


def test_a_user_rule_file_converts_and_a_bad_one_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "mine.toml"
    good.write_text('[[rule]]\nname = "fps_low"\nmetric = "fps"\nop = "<"\nfire = 100\nfor_seconds = 30\n')
    assert exporter_main.main(["--alert-rules", str(good), "--update-seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "- alert: fps_low\n        expr: 'tamiyo_batch_fps < 100'\n        for: 30s\n" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nmetric = "nope"\nop = ">"\nfire = 1\n')
    assert exporter_main.main(["--alert-rules", str(bad)]) == 1
    assert "bad.toml:" in capsys.readouterr().err


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(default_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_gradient_cv_fires_after_its_for_holds_through_the_clear_band_then_resolves(
    tmp_path: Path,
) -> None:
    """Rank 0: 3.0 for 31 s, 1.8 for 20 s, 1.4 after. Rank 1: 1.8 throughout, never above fire."""

    def alert(value: str, rank: str) -> str:
        return (
            f"          - exp_labels: {{severity: warning, run_id: r, rank: '{rank}'}}\n"
            "            exp_annotations:\n"
            "              summary: 'the update''s gradient is mostly noise while the run still learns "
            f"(gradient_cv {value} > 2: cos to the true gradient < 0.45): the batch is below "
            "gradient_noise_scale / 4; raise --n-envs or --rollout-steps, or lower --lr "
            f"(run r, rank {rank})'\n"
            "              expression: 'gradient_cv_while_learning > 2 for 20 updates'\n"
        )

    def at(seconds: int, *alerts: str) -> str:
        head = f"      - eval_time: {seconds}s\n        alertname: gradient_cv\n"
        return head + ("        exp_alerts:\n" + "".join(alerts) if alerts else "        exp_alerts: []\n")

    tests = tmp_path / "tests.yml"
    tests.write_text(
        f"rule_files:\n  - {RULES}\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n"
        '      - series: \'tamiyo_gradient_cv_while_learning{run_id="r", rank="0"}\'\n'
        "        values: '3x30 1.8x20 1.4x10'\n"
        '      - series: \'tamiyo_gradient_cv_while_learning{run_id="r", rank="1"}\'\n'
        "        values: '1.8x60'\n"
        "    alert_rule_test:\n"
        + at(10)  # pending: the for (20 updates at 1 s) has not passed
        + at(25, alert("3.00", "0"))
        + at(45, alert("1.80", "0"))  # between clear and fire: still firing
        + at(55)  # at or below clear: resolved
    )
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cli_prints_the_shipped_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumers.exporter", "--alert-rules"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == RULES.read_text(encoding="utf-8")


@needs_promtool
def test_promtool_by_rank_rules_fire_per_rank_of_a_run_of_several_ranks_only(tmp_path: Path) -> None:
    """Run r (2 ranks): rank 1 scores 1.4 for 10 s, 1.2 (between clear 1.15 and fire 1.3) for 10 s,
    then 1.1; its stuck time is 45 s. Run s (1 rank) is stuck 40 s: trainer_stuck, not rank_stuck."""

    def alert(name: str, run: str, rank: str, summary: str, expression: str) -> str:
        return (
            f"          - exp_labels: {{severity: {'warning' if name == 'straggler' else 'critical'}, "
            f"run_id: {run}, rank: '{rank}'}}\n"
            "            exp_annotations:\n"
            f"              summary: '{summary} (run {run}, rank {rank})'\n"
            f"              expression: '{expression}'\n"
        )

    def at(seconds: int, name: str, *alerts: str) -> str:
        head = f"      - eval_time: {seconds}s\n        alertname: {name}\n"
        return head + ("        exp_alerts:\n" + "".join(alerts) if alerts else "        exp_alerts: []\n")

    def straggler(value: str) -> str:
        summary = f"rank 1 is a straggler: its compute time runs {value}x the other ranks'' median"
        return alert("straggler", "r", "1", summary, "straggler_score >= 1.3 by rank")

    stuck = "has not moved for {} s though its heartbeats arrive: a hung collective?"
    trainer = (
        "the training loop has not moved for {} s although the trainer still sends heartbeats: "
        "deadlock or hung collective?"
    )
    series = {
        'tamiyo_straggler_score{run_id="r", rank="0"}': "0.8x30",
        'tamiyo_straggler_score{run_id="r", rank="1"}': "1.4x10 1.2x10 1.1x10",
        'tamiyo_stuck_seconds{run_id="r", rank="0"}': "0x30",
        'tamiyo_stuck_seconds{run_id="r", rank="1"}': "45x30",
        'tamiyo_stuck_seconds{run_id="s", rank="0"}': "40x30",
        'tamiyo_events_total{run_id="r", rank="0"}': "1+1x30",
        'tamiyo_events_total{run_id="r", rank="1"}': "1+1x30",
        'tamiyo_events_total{run_id="s", rank="0"}': "1+1x30",
    }
    tests = tmp_path / "tests.yml"
    tests.write_text(
        f"rule_files:\n  - {RULES}\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n"
        + "".join(f"      - series: '{k}'\n        values: '{v}'\n" for k, v in series.items())
        + "    alert_rule_test:\n"
        + at(5, "straggler", straggler("1.40"))
        + at(15, "straggler", straggler("1.20"))  # between clear and fire: still firing
        + at(25, "straggler")  # below clear: resolved
        + at(
            5,
            "rank_stuck",
            alert("rank_stuck", "r", "1", "rank 1 " + stuck.format(45), "stuck_s > 0 by rank"),
        )
        + at(
            5,
            "trainer_stuck",
            alert("trainer_stuck", "r", "1", trainer.format(45), "stuck_s > 0"),
            alert("trainer_stuck", "s", "0", trainer.format(40), "stuck_s > 0"),
        )
    )
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
