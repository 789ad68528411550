"""docs/wire.md stays true: it documents every field, and its plain-MessagePack client really works."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

from bus_factories import ppo_update, training_started
from testkit.wait import wait_until

from bus import catalogue
from bus.contract import EVENT_TYPES, Envelope, PPOUpdate, ReplayEnd

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire.md"
METRICS_DOC = DOC.with_name("metrics.md")


def _section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of its level or above."""
    start = text.index(heading)
    level = heading.split(" ", 1)[0]
    ends = [text.find(f"\n{'#' * n} ", start + len(heading)) for n in range(1, len(level) + 1)]
    end = min((e for e in ends if e != -1), default=-1)
    return text[start : end if end != -1 else None]


def _table_fields(section: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


def _table_section(event_type: type) -> str:
    tag = event_type.__struct_config__.tag
    path = DOC.with_name(catalogue.doc_of(event_type))
    return _section(path.read_text(), f"{'##' if path == METRICS_DOC else '###'} `{tag}`")


def test_every_event_field_is_documented_in_its_section() -> None:
    for event_type in EVENT_TYPES:
        documented = _table_fields(_table_section(event_type))
        assert documented == set(event_type.__struct_fields__), event_type.__struct_config__.tag


def test_the_field_tables_are_the_catalogue_s() -> None:
    """Each event's table is exactly what ``python -m bus.catalogue --markdown`` prints for it."""
    for event_type in EVENT_TYPES:
        section = _table_section(event_type)
        assert catalogue.table(event_type) in section, "regenerate with python -m bus.catalogue --update-docs"


def test_wire_md_has_a_section_for_every_event_type() -> None:
    text = DOC.read_text()
    for event_type in EVENT_TYPES:
        assert f"### `{event_type.__struct_config__.tag}`" in text


def test_every_field_has_a_meaning_in_the_contract() -> None:
    for event_type in EVENT_TYPES:
        for f in catalogue.fields(event_type):
            assert f.description, f"{f.event}.{f.name} has no description"
            if f.throttled:
                assert f.measured_at in event_type.__struct_fields__, f.name


def test_envelope_and_replay_end_are_documented() -> None:
    text = DOC.read_text()
    assert _table_fields(_section(text, "## The envelope")) == set(Envelope.__struct_fields__)
    for name in ReplayEnd.__struct_fields__:
        assert f"{name}:" in text


def test_the_plain_messagepack_client_in_the_docs_reads_history_and_live_updates(make_publisher) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert code is not None
    pub = make_publisher("run-doc")
    pub.publish(training_started())
    for i in range(1, 4):
        pub.publish(ppo_update(update=i))
    env = dict(os.environ, TAMIYO_ENDPOINT=pub.bound_endpoint, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code.group(1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    seen: list[str] = []

    def drain() -> None:
        while not lines.empty():
            seen.append(lines.get().strip())

    try:
        assert wait_until(lambda: any("replayed" in line for line in seen), 20.0, drain), seen
        pub.publish(ppo_update(update=4))
        assert wait_until(lambda: any("update 4 " in line for line in seen), 20.0, drain), seen
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    updates = [line for line in seen if line.startswith("seq")]
    assert [int(re.search(r"update (\d+)", line).group(1)) for line in updates] == [1, 2, 3, 4]  # type: ignore[union-attr]


def test_the_markdown_command_prints_every_table(capsys) -> None:  # type: ignore[no-untyped-def]
    assert catalogue.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert all(catalogue.table(event_type) in out for event_type in EVENT_TYPES)


def test_update_docs_rewrites_a_stale_table(tmp_path: Path) -> None:
    """``--update-docs`` puts the catalogue's table in place of an outdated one, and is idempotent."""
    for name in ("wire.md", "metrics.md"):
        (tmp_path / name).write_text((DOC.parent / name).read_text())
    stale = (tmp_path / "metrics.md").read_text().replace("| `lr` |", "| `lr_old` |", 1)
    (tmp_path / "metrics.md").write_text(stale)
    assert catalogue.update_docs(tmp_path) == ["metrics.md"]
    assert catalogue.table(PPOUpdate) in (tmp_path / "metrics.md").read_text()
    assert catalogue.update_docs(tmp_path) == []
