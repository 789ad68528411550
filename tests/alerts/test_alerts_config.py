"""Rule files: the built-in set, --check-config exit codes, and errors that name the line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from consumers.alerts.rules import ConfigError, default_rules, default_rules_text, parse_rules

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
# a user's rules
[[rule]]
name = "kl"
metric = "kl_divergence"
op = ">"
fire = 0.1
clear = 0.05
for_updates = 2

[[rule]]
name = "drops"
metric = "producer_dropped"
op = ">"
fire = 0
increase_over_s = 30
severity = "critical"
summary = "{value:.0f} dropped"
"""


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumers.alerts", "--check-config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, "r.toml")
    return info.value.errors


def test_the_built_in_rules_parse_and_include_the_product_cards_two() -> None:
    rules = {r.name: r for r in default_rules()}
    assert (rules["cuda_memory_fragmentation"].op, rules["cuda_memory_fragmentation"].fire) == (">", 0.3)
    assert (rules["gradient_cv"].op, rules["gradient_cv"].fire) == (">", 2.0)
    assert "[[rule]]" in default_rules_text()


def test_a_good_file_parses_with_defaults_filled_in() -> None:
    kl, drops = parse_rules(GOOD)
    assert (kl.fire, kl.clear, kl.for_updates, kl.severity) == (0.1, 0.05, 2, "warning")
    assert (drops.clear, drops.increase_over_s, drops.severity) == (0.0, 30.0, "critical")


@pytest.mark.parametrize(
    ("replace", "by", "line", "words"),
    [
        ('metric = "kl_divergence"', 'metric = "kl_divergense"', 5, "unknown metric 'kl_divergense'"),
        ('op = ">"', 'op = "=>"', 6, "'op' must be one of"),
        ("fire = 0.1", 'fire = "high"', 7, "'fire' must be a finite number"),
        ("clear = 0.05", "clear = 0.2", 8, "'clear' (0.2) must not be above 'fire' (0.1)"),
        ("for_updates = 2", "for_updates = -1", 9, "'for_updates' must be a whole number"),
        ("for_updates = 2", "treshold = 2", 9, "unknown field 'treshold'"),
        ('severity = "critical"', 'severity = "urgent"', 17, "'severity' must be one of"),
        ('summary = "{value:.0f} dropped"', 'summary = "{valeu} dropped"', 18, "bad placeholder"),
        ("increase_over_s = 30", "for_updates = 3", 16, "not measured per update"),
        ('name = "drops"', 'name = "kl"', 12, "already used by rule 1"),
    ],
)
def test_a_bad_field_is_named_with_its_line(replace: str, by: str, line: int, words: str) -> None:
    assert replace in GOOD
    errors = errors_of(GOOD.replace(replace, by, 1))
    assert any(e.startswith(f"r.toml:{line}: ") and words in e for e in errors), errors


def test_a_missing_field_names_the_rule_header_line() -> None:
    errors = errors_of(GOOD.replace("fire = 0.1\n", "", 1))
    assert errors == ["r.toml:3: rule 1 ('kl'): missing field 'fire'"]


def test_toml_syntax_errors_and_empty_files_are_refused() -> None:
    (syntax,) = errors_of(GOOD.replace('op = ">"', "op = >", 1))
    assert "not valid TOML" in syntax and "line 6" in syntax
    assert "no [[rule]] tables" in errors_of("# nothing\n")[0]
    assert "unknown top-level key 'rules'" in errors_of('[[rules]]\nname = "x"\n')[0]


def test_check_config_exits_0_on_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    proc = check_config(path)
    assert proc.returncode == 0, proc.stderr
    assert "ok, 2 rules: kl, drops" in proc.stdout


def test_check_config_exits_1_naming_the_line_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("fire = 0.1", 'fire = "high"'))
    proc = check_config(path)
    assert proc.returncode == 1
    assert f"{path}:7: rule 1 ('kl'): 'fire' must be a finite number, got 'high'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_exits_2_on_an_unreadable_file(tmp_path: Path) -> None:
    proc = check_config(tmp_path / "missing.toml")
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_the_daemon_refuses_to_start_with_a_bad_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('op = ">"', 'op = "~"', 1))
    proc = subprocess.run(
        [sys.executable, "-m", "consumers.alerts", "--rules", str(path), "--endpoint", "tcp://127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert ":6: rule 1 ('kl'): 'op' must be one of" in proc.stderr


def test_docs_list_every_built_in_rule_as_it_is() -> None:
    text = (ROOT / "docs" / "alerts.md").read_text()
    lines = text[text.index("### The built-in rules") :].splitlines()
    for rule in default_rules():
        row = next((line for line in lines if line.startswith(f"| `{rule.name}` |")), None)
        assert row is not None, f"docs/alerts.md has no row for {rule.name}"
        _, condition, duration, resolves, severity = (cell.strip() for cell in row.split("|")[1:-1])
        assert rule.metric in condition and f" {rule.op} " in condition
        assert float(condition.rstrip("`").split()[-1]) == rule.fire
        if rule.increase_over_s:
            assert f"[{rule.increase_over_s:g}s]" in condition
        else:
            assert float(resolves.strip("`").split()[-1]) == rule.clear
        assert duration.startswith(f"{rule.for_updates} updates" if rule.for_updates else "at once")
        assert severity == rule.severity
