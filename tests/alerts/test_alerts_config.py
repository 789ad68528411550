"""Rule files: the built-in set, --check-config exit codes, and errors that name the line and field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from consumers.alerts.rules import (
    MAX_FOR_UPDATES,
    TEMPLATE_FIELDS,
    ConfigError,
    Rule,
    default_rules,
    default_rules_text,
    load_rules,
    parse_rules,
)

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
        ('metric = "kl_divergence"', 'metric = "kl_divergense"', 5, "'metric' must be a known metric"),
        ('op = ">"', 'op = "=>"', 6, "'op' must be one of"),
        ("fire = 0.1", 'fire = "high"', 7, "'fire' must be a finite number"),
        ("clear = 0.05", "clear = 0.2", 8, "'clear' (0.2) must not be above 'fire' (0.1)"),
        ("for_updates = 2", "for_updates = -1", 9, "'for_updates' must be a whole number"),
        ("for_updates = 2", "treshold = 2", 9, "unknown field 'treshold'"),
        ('severity = "critical"', 'severity = "urgent"', 17, "'severity' must be one of"),
        ('summary = "{value:.0f} dropped"', 'summary = "{valeu} dropped"', 18, "unknown placeholder {valeu}"),
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
    assert errors_of(GOOD + "\n[settings]\nquiet = true\n") == [
        "r.toml:20: unknown top-level key 'settings'; rules go in [[rule]] tables"
    ]


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


CLOCK_RULE = """
[[rule]]
name = "quiet"
metric = "silence_s"
op = ">"
fire = 10
clear = 3
summary = "SUMMARY"
"""


@pytest.mark.parametrize(
    ("summary", "words"),
    [
        ("{step.real}", "no attribute or index access"),
        ("{value[0]}", "no attribute or index access"),
        ("{step:d}", "cannot format None (this metric has no step)"),
        ("{step:>5}", "cannot format None (this metric has no step)"),
        ("{value:d}", "cannot format a float"),
        ("{value!r}", "no conversions"),
        ("{}", "unknown placeholder {}"),
        ("{0}", "unknown placeholder {0}"),
        ("{value:{fire}}", "nested placeholders"),
        ("{value:99999999999}", "at most 200"),
        ("{value", "literal braces"),
    ],
)
def test_a_template_is_only_documented_fields_with_a_format_that_works(summary: str, words: str) -> None:
    errors = errors_of(CLOCK_RULE.replace("SUMMARY", summary))
    assert len(errors) == 1 and errors[0].startswith("r.toml:8: rule 1 ('quiet'): 'summary': "), errors
    assert words in errors[0], errors


def test_the_documented_placeholders_are_the_template_fields() -> None:
    every = " ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
    (rule,) = parse_rules(CLOCK_RULE.replace("SUMMARY", every + " {value:.2f} {update:d} {step}"))
    docs = (ROOT / "docs" / "alerts.md").read_text()
    block = docs[docs.index("placeholders:") : docs.index("# increase_over_s")]
    assert set(re.findall(r"\{(\w+)\}", block)) == set(TEMPLATE_FIELDS)
    assert rule.summary.startswith("{rule}")


@pytest.mark.parametrize(
    ("replace", "by", "line", "words"),
    [
        ("fire = 10", "fire = " + "9" * 400, 6, "'fire' must be a finite number, got 99999"),
        ("fire = 10", "fire = nan", 6, "'fire' must be a finite number, got nan"),
        ("fire = 10", "fire = -inf", 6, "'fire' must be a finite number, got -inf"),
        ("fire = 10", "fire = 1e400", 6, "'fire' must be a finite number, got inf"),
        ("fire = 10", "fire = true", 6, "'fire' must be a finite number, got True"),
        ("clear = 3", "clear = nan", 7, "'clear' must be a finite number, got nan"),
        ("clear = 3", "for_seconds = -1", 7, "'for_seconds' must be a number of seconds from 0 to 604800"),
        ("clear = 3", "for_seconds = " + "9" * 400, 7, "'for_seconds' must be a number of seconds"),
        ("clear = 3", "for_seconds = nan", 7, "'for_seconds' must be a number of seconds"),
        ("clear = 3", "increase_over_s = 1e9", 7, "'increase_over_s' must be a number of seconds"),
        ('name = "quiet"', 'name = "' + "q" * 65 + '"', 3, "'name' must be 1-64 letters"),
        ('summary = "SUMMARY"', 'summary = "' + "s" * 2001 + '"', 8, "at most 2000 characters"),
    ],
)
def test_every_value_is_range_checked(replace: str, by: str, line: int, words: str) -> None:
    assert replace in CLOCK_RULE
    errors = errors_of(CLOCK_RULE.replace(replace, by, 1))
    assert any(e.startswith(f"r.toml:{line}: rule 1") and words in e for e in errors), errors
    assert all(len(e) < 400 for e in errors), "a huge value is shortened in the message"


def test_a_huge_for_updates_is_refused() -> None:
    (error,) = errors_of(GOOD.replace("for_updates = 2", "for_updates = " + "9" * 400, 1))
    must_be = f"'for_updates' must be a whole number from 0 to {MAX_FOR_UPDATES}, got 999"
    assert error.startswith(f"r.toml:9: rule 1 ('kl'): {must_be}") and error.endswith("...")


def test_problems_in_several_rules_are_all_reported() -> None:
    errors = errors_of(
        GOOD.replace("fire = 0.1", "fire = nan").replace('severity = "critical"', 'severity = "x"')
    )
    assert [e.split(":")[1] for e in errors] == ["7", "17"], errors


def test_inline_rule_tables_point_at_the_rules_name() -> None:
    text = (
        "rule = [\n"
        '  {name = "a", metric = "kl_divergence", op = ">", fire = 1},\n'
        '  {name = "b", metric = "kl_divergence", op = "~", fire = 1},\n'
        "]\n"
    )
    assert errors_of(text) == ["r.toml:3: rule 2 ('b'): 'op' must be one of '>', '>=', '<', '<=', got '~'"]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert [r.name for r in load_rules(path)] == ["kl", "drops"]
    proc = check_config(path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("summary", "fire", "words"),
    [
        ("{value[0]}", "10", "no attribute or index access"),
        ("{step.real}", "10", "no attribute or index access"),
        ("up", "9" * 400, "'fire' must be a finite number"),
    ],
)
def test_check_config_names_the_line_of_a_bad_template_or_number_without_a_traceback(
    tmp_path: Path, summary: str, fire: str, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CLOCK_RULE.replace("SUMMARY", summary).replace("fire = 10", f"fire = {fire}"))
    proc = check_config(path)
    assert proc.returncode == 1, proc.stdout
    assert f"{path}:{8 if fire == '10' else 6}: rule 1 ('quiet'): " in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_rule_file_in_the_docs_parses() -> None:
    docs = (ROOT / "docs" / "alerts.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert blocks
    for block in blocks:
        assert parse_rules(block, "docs/alerts.md")


def test_a_rule_is_a_struct_whose_schema_is_the_documented_one() -> None:
    rule = msgspec.convert({"name": "a", "metric": "kl_divergence", "op": "<", "fire": 1}, Rule)
    assert rule.clear == 1.0 and rule.severity == "warning"
    with pytest.raises(msgspec.ValidationError, match="unknown field `threshold`"):
        msgspec.convert({"name": "a", "metric": "kl_divergence", "op": "<", "fire": 1, "threshold": 2}, Rule)
    assert set(Rule.__struct_fields__) == {
        "name",
        "metric",
        "op",
        "fire",
        "clear",
        "for_updates",
        "for_seconds",
        "increase_over_s",
        "severity",
        "summary",
        "by_rank",
    }
