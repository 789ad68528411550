"""``python -m consumers.web`` without a browser: addresses, page URLs, cross-site refusal, clean stops."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("textual_serve", reason="textual-serve is not installed: pip install -e '.[web]'")

import aiohttp
from testkit.proc import Proc

from consumers.address import AddressError, parse_address
from consumers.web import __main__ as web_main

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8000", "127.0.0.1", 8000, True),
        ("localhost:1", "localhost", 1, True),
        ("[::1]:65535", "::1", 65535, True),
        ("0.0.0.0:8000", "0.0.0.0", 8000, False),
    ],
)
def test_addresses_that_parse(text: str, host: str, port: int, loopback: bool) -> None:
    address = parse_address(text, web_main.DEFAULT_ADDRESS)
    assert (address.host, address.port, address.loopback) == (host, port, loopback)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("8000", "is not HOST:PORT"),
        (":8000", "is not HOST:PORT"),
        ("127.0.0.1:0", "port 1-65535"),
        ("127.0.0.1:65536", "port 1-65535"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        ("no-such-host.invalid:8000", "cannot resolve host 'no-such-host.invalid'"),
    ],
)
def test_addresses_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(AddressError, match=re.escape(says)):
        parse_address(text, web_main.DEFAULT_ADDRESS)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--address", "127.0.0.1:99999"],
            "tamiyo-web: '127.0.0.1:99999' is not HOST:PORT with a port 1-65535",
        ),
        (
            ["--address", "0.0.0.0:8000"],
            "tamiyo-web: refusing to serve on http://0.0.0.0:8000: it is not loopback",
        ),
        (["--endpoint", "127.0.0.1:5555"], "tamiyo-web: '127.0.0.1:5555' is not an endpoint"),
        (["--refresh-hz", "0"], "tamiyo-web: --refresh-hz must be in (0, 30]"),
    ],
    ids=["bad-port", "not-loopback", "bad-endpoint", "bad-refresh"],
)
def test_bad_arguments_exit_2_with_the_reason(args: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumers.web", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_exits_2_with_the_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "consumers.web", "--address", f"127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
    assert result.returncode == 2
    assert f"tamiyo-web: cannot serve on http://127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_beyond_loopback_only_when_asked_and_with_a_warning(monkeypatch, capsys) -> None:
    served: list[tuple[str, int, bool]] = []
    from consumers.web.server import DashboardServer

    monkeypatch.setattr(
        DashboardServer, "serve", lambda self: served.append((self.host, self.port, self.loopback_only))
    )
    assert web_main.main(["--address", "0.0.0.0:8123", "--allow-remote"]) == 0
    assert served == [("0.0.0.0", 8123, False)]
    err = capsys.readouterr().err
    assert "WARNING: serving on http://0.0.0.0:8123, beyond loopback. The page has no authentication" in err
    assert "ssh -L 8000:127.0.0.1:8000" in err

    assert web_main.main(["--address", "127.0.0.1:8124"]) == 0
    assert served[-1] == ("127.0.0.1", 8124, True)
    assert "WARNING" not in capsys.readouterr().err


def test_each_tab_runs_this_interpreters_dashboard_with_the_flags() -> None:
    args = web_main.parse_args(["--endpoint", "tcp://127.0.0.1:6000", "--light", "--refresh-hz", "2"])
    command = web_main.dashboard_command(args)
    assert command == (
        f"exec {sys.executable} -m consumers.web.tab {os.getpid()} "
        "--endpoint tcp://127.0.0.1:6000 --refresh-hz 2 --light"
    )


class Server:
    """``python -m consumers.web`` on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The bus endpoint has no producer: each tab shows the waiting screen, which is enough here.
        self.proc = Proc(
            "consumers.web",
            "--endpoint",
            f"tcp://127.0.0.1:{free_port()}",
            "--address",
            f"127.0.0.1:{self.port}",
        )
        self.proc.wait_for_line(
            rf"tamiyo-web: serving .* on {re.escape(self.url)} \(Ctrl-C to stop\)", DEADLINE_S
        )

    def close(self) -> None:
        self.proc.kill()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


async def get(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.text()


async def open_tab(
    url: str, origin: str | None = None
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """What the page's script does: a websocket to /ws, whose first bytes are the dashboard's first frame."""
    session = aiohttp.ClientSession()
    headers = {"Origin": origin} if origin else {}
    try:
        ws = await session.ws_connect(
            f"{url.replace('http', 'ws', 1)}/ws?width=100&height=30", headers=headers
        )
    except BaseException:
        await session.close()
        raise
    return session, ws


def test_page_urls_follow_the_address_the_browser_used(server: Server) -> None:
    status, page = asyncio.run(get(f"{server.url}/"))
    assert status == 200
    assert f'data-session-websocket-url="ws://127.0.0.1:{server.port}/ws"' in page
    # Through `ssh -L 9000:127.0.0.1:PORT` the browser is at localhost:9000 and says so in Host.
    status, page = asyncio.run(get(f"{server.url}/", Host="localhost:9000"))
    assert status == 200
    assert 'data-session-websocket-url="ws://localhost:9000/ws"' in page
    assert 'src="http://localhost:9000/static/js/textual.js"' in page
    assert f"127.0.0.1:{server.port}" not in page


@LINUX
def test_other_sites_are_refused(server: Server) -> None:
    status, text = asyncio.run(get(f"{server.url}/", Host=f"attacker.example:{server.port}"))
    assert status == 403 and "loopback names only" in text

    async def cross_site_tab() -> int:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await open_tab(server.url, origin="http://attacker.example")
        return refused.value.status

    assert asyncio.run(cross_site_tab()) == 403
    assert children(server.proc.proc.pid) == set(), "a refused tab starts no dashboard"


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes) -> None:
    """Read what the tab's dashboard draws (terminal output) until ``needle`` is in it."""
    seen = b""
    deadline = time.monotonic() + DEADLINE_S
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never drawn; got {seen[-500:]!r}"
        message = await asyncio.wait_for(ws.receive(), left)
        assert message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), message
        if message.type == aiohttp.WSMsgType.BINARY:
            seen += message.data


async def read_to_end(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def ctrl_c(proc: subprocess.Popen) -> None:
    """What a terminal does on Ctrl-C: SIGINT to the foreground group, the server and its dashboards."""
    for pid in {proc.pid, *children(proc.pid)}:
        os.kill(pid, signal.SIGINT)


@LINUX
@pytest.mark.parametrize(
    ("stop", "code"),
    [
        (lambda proc: proc.send_signal(signal.SIGTERM), 0),
        (ctrl_c, 0),
    ],
    ids=["sigterm", "ctrl-c"],
)
def test_stops_cleanly_and_takes_the_tabs_dashboards_with_it(server: Server, stop, code: int) -> None:
    pid = server.proc.proc.pid

    async def with_two_tabs() -> set[int]:
        tabs = [await open_tab(server.url, origin=server.url) for _ in range(2)]
        try:
            for _, ws in tabs:
                await read_until(ws, b"Waiting for training on")
            dashboards = children(pid)
            assert len(dashboards) == 2, "one dashboard process per tab"
            # Like a browser, keep reading: the server's close handshake gets its answer.
            ended = [asyncio.create_task(read_to_end(ws)) for _, ws in tabs]
            stop(server.proc.proc)
            rc = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, DEADLINE_S)
            assert rc == code, server.proc.describe()
            await asyncio.wait_for(asyncio.gather(*ended), DEADLINE_S)  # each tab was told it ended
            return dashboards
        finally:
            for session, ws in tabs:
                await ws.close()
                await session.close()

    dashboards = asyncio.run(with_two_tabs())
    wait_until(lambda: not any(alive(p) for p in dashboards), DEADLINE_S, "the dashboards to exit")
    assert "Traceback" not in server.proc.stderr_text() + "\n".join(server.proc.stdout)


@LINUX
def test_a_killed_server_takes_its_dashboards_too(server: Server) -> None:
    async def kill_with_a_tab() -> set[int]:
        session, ws = await open_tab(server.url, origin=server.url)
        try:
            await read_until(ws, b"Waiting for training on")
            dashboards = children(server.proc.proc.pid)
            assert len(dashboards) == 1
            server.proc.proc.kill()
            return dashboards
        finally:
            await ws.close()
            await session.close()

    dashboards = asyncio.run(kill_with_a_tab())
    wait_until(lambda: not any(alive(p) for p in dashboards), DEADLINE_S, "the orphaned dashboard to exit")
