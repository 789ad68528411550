"""A real Prometheus scrapes the exporter during a real training run; the values come back through its API."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client", reason="pip install -e '.[prometheus]'")

from prometheus_client.parser import text_string_to_metric_families
from testkit.net import free_endpoint, free_port
from testkit.proc import RUN_TIMEOUT_S, Proc

from consumers.alerts.rules import default_rules

PROMETHEUS = shutil.which("prometheus")
RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "alerts.rules.yml"
UPDATES = 40
DEADLINE_S = RUN_TIMEOUT_S

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus; .ci/run does)"
)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def poll(what: str, fn: Callable[[], Any], *procs: Proc, log: Path | None = None) -> Any:
    """``fn()`` until it returns something truthy; fail naming ``what`` with the logs after the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            result = fn()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            logs = "\n".join(p.describe() for p in procs)
            prom = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{logs}\n--- prometheus ---\n{prom}")
        time.sleep(0.2)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A Prometheus on a free loopback port, scraping the exporter's port each second: (url, port, log)."""
    exporter_port, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: tamiyo\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
    )
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", exporter_port, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def query(base: str, promql: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


def exporter_values(port: int, name: str) -> dict[tuple[str, str], float]:
    text = get(f"http://127.0.0.1:{port}/metrics").decode()
    return {
        (s.labels["run_id"], s.labels["rank"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_prometheus_scrapes_a_real_run_and_returns_gradient_cv_and_kl_per_rank(
    prometheus: tuple[str, int, Path],
) -> None:
    base, exporter_port, log = prometheus
    endpoint = free_endpoint()
    exporter = Proc("consumers.exporter", "--endpoint", endpoint, "--address", f"127.0.0.1:{exporter_port}")
    producer = Proc(
        "producer",
        *("--endpoint", endpoint, "--updates", str(UPDATES), "--n-envs", "4", "--rollout-steps", "8"),
        *("--diagnostics-every", "2", "--wait-for-subscriber", "20"),
    )
    try:
        exporter.wait_for_line(r"tamiyo-export: serving .*/metrics .* \(Ctrl-C to stop\)", DEADLINE_S)
        _, run_id = producer.banner(DEADLINE_S)
        poll("Prometheus to be ready", lambda: get(f"{base}/-/ready"), exporter, producer, log=log)

        def scraped(name: str) -> list[dict[str, Any]]:
            return [r for r in query(base, name) if r["metric"].get("run_id") == run_id]

        # During the run: Prometheus has both series of this run's rank 0, labelled as promised.
        for name in ("tamiyo_gradient_cv", "tamiyo_kl_divergence"):
            (series,) = poll(f"{name} in Prometheus", lambda n=name: scraped(n), exporter, producer, log=log)
            assert series["metric"]["rank"] == "0" and series["metric"]["job"] == "tamiyo"
            assert math.isfinite(float(series["value"][1]))
        assert producer.proc.poll() is None, "the values were read back while the run was still training"

        # After it: Prometheus holds exactly what the exporter serves (the last update's values).
        assert producer.wait(DEADLINE_S) == 0
        for name in ("tamiyo_gradient_cv", "tamiyo_kl_divergence"):
            final = poll(f"{name} final", lambda n=name: exporter_values(exporter_port, n).get((run_id, "0")))
            poll(
                f"Prometheus to read back the final {name} = {final!r}",
                lambda n=name, v=final: [s for s in scraped(n) if float(s["value"][1]) == v],
                exporter,
                producer,
                log=log,
            )
        finished = scraped('tamiyo_liveness{state="FINISHED"}')
        assert [s["value"][1] for s in finished] == ["1"]

        # The shipped alert rules loaded into the real server, one per default rule.
        groups = json.loads(get(f"{base}/api/v1/rules"))["data"]["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert loaded == {r.name for r in default_rules()}
    finally:
        producer.kill()
        assert exporter.stop() == 0, exporter.describe()
