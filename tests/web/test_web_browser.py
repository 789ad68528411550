"""The dashboard in a real headless Chromium: the page loads, attaches to a live producer, numbers move."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.net import free_endpoint
from testkit.proc import RUN_TIMEOUT_S, Proc, real_producer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "web.png"
UPDATE_DOCS = os.environ.get("TAMIYO_UPDATE_DOCS") == "1"
"""Set to 1 to write the screenshot to docs/web.png (otherwise it goes to the test's tmp_path)."""
UPDATES = 60
SHOT_AT = 20
"""The screenshot waits for this update: past warming up, with some history in the sparklines."""
DEADLINE_S = RUN_TIMEOUT_S
WINDOW = (1600, 960)


def _why_not() -> str | None:
    try:
        import selenium  # noqa: F401
        import textual_serve  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev,web]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            return f"{path} not found (apt-get install {package})"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))

# xterm.js keeps the screen as text in its buffer, but textual-serve's page keeps its Terminal in a
# closure. This runs before the page's scripts and catches the object on its way into
# `this.terminal = new Terminal(...)`, so the test can read the rows the user sees.
CATCH_TERMINAL = """
Object.defineProperty(Object.prototype, 'terminal', {
  configurable: true,
  set(value) {
    Object.defineProperty(this, 'terminal', {value, writable: true, configurable: true, enumerable: true});
    if (value && value.buffer && typeof value.write === 'function') window.__terminal = value;
  },
});
"""
READ_SCREEN = """
const t = window.__terminal;
if (!t) return null;
const buffer = t.buffer.active, rows = [];
for (let i = 0; i < t.rows; i++) {
  const line = buffer.getLine(buffer.viewportY + i);
  rows.push(line ? line.translateToString(true) : '');
}
return rows.join('\\n');
"""
SHOWN_UPDATE = re.compile(rf"\bupdate (\d+)/{UPDATES}\b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, url: str) -> None:
    """Load ``url`` in the current tab, with the terminal catcher in place first (it is per tab)."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_TERMINAL})
    driver.get(url)


def screen(driver: Any) -> str:
    """The rows of the terminal in the current tab, as text ('' before the page has a terminal)."""
    return driver.execute_script(READ_SCREEN) or ""


def wait_for_screen(driver: Any, holds: Callable[[str], bool], what: str, *procs: Proc) -> str:
    """Poll the tab's screen until ``holds(text)``; fail with the screen and the children's output."""
    deadline = time.monotonic() + DEADLINE_S
    text = screen(driver)
    while not holds(text):
        if time.monotonic() > deadline:
            logs = "\n".join(p.describe() for p in procs)
            raise AssertionError(f"timed out waiting for {what}; screen:\n{text}\n{logs}")
        time.sleep(0.1)
        text = screen(driver)
    return text


def shown_update(text: str) -> int:
    match = SHOWN_UPDATE.search(text)
    return int(match.group(1)) if match else -1


def test_browser_tab_shows_the_live_dashboard(browser: Any, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    producer = real_producer(endpoint, UPDATES)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    web = Proc("consumers.web", "--endpoint", endpoint, "--address", f"127.0.0.1:{port}")
    try:
        _, run_id = producer.banner(DEADLINE_S)
        web.wait_for_line(r"tamiyo-web: serving .* \(Ctrl-C to stop\)", DEADLINE_S)
        started = time.monotonic()
        open_page(browser, url)

        # The producer waits for its first subscriber: this tab's own dashboard process.
        first = wait_for_screen(browser, lambda t: shown_update(t) >= 1, "the first update", producer, web)
        assert run_id in first, "the header names the live producer's run"
        attached_s = time.monotonic() - started
        later = wait_for_screen(
            browser,
            lambda t: shown_update(t) > shown_update(first) and shown_update(t) >= SHOT_AT,
            f"update {SHOT_AT}",
            producer,
            web,
        )
        for text in (first, later):
            assert "TAMIYO" in text and "Heads" in text and "PPO health" in text and "● LIVE" in text
        assert "Flow: CV:" in later and "Dead:" in later

        shot = DOCS_SHOT if UPDATE_DOCS else tmp_path / "web.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # A second tab is a second subscriber; the late-join replay fills it at once.
        browser.switch_to.new_window("tab")
        open_page(browser, url)
        joined = wait_for_screen(browser, lambda t: shown_update(t) >= 1, "the second tab's update", web)
        assert run_id in joined and "Flow: CV:" in joined
        assert shown_update(joined) >= shown_update(later)

        browser.quit()  # the tabs close; the server stops their dashboards
        assert web.stop() == 0, web.describe()
        assert "Traceback" not in web.stderr_text() + "\n".join(web.stdout)
        print(
            f"tab attached, showing update {shown_update(first)}, {attached_s:.1f} s after loading the page"
        )
    finally:
        web.kill()
        producer.kill()
