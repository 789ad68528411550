"""textual-serve's Server, with page URLs from the browser's own address and cross-site requests refused."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

from bus.endpoint import is_loopback

SHUTDOWN_WAIT_S = 10.0
"""On Ctrl-C or SIGTERM, how long the tabs' dashboards get to quit before the server exits anyway."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def origin_of(request: web.Request) -> str:
    """``scheme://host:port`` as the browser reached us: through an SSH tunnel that is the local end."""
    return f"{request.scheme}://{request.host}"


class DashboardServer(Server):
    """One dashboard process per browser tab (textual-serve), safe behind a forwarded port.

    textual-serve writes absolute URLs (``public_url``, by default the bind address) into the page
    for its scripts and websocket. Behind ``ssh -L 9000:127.0.0.1:8000`` the browser is at
    ``localhost:9000`` and those URLs would point at a port that is not forwarded, so unless
    ``public_url`` is given the page uses the address the request came to.
    """

    def __init__(
        self,
        command: str,
        host: str,
        port: int,
        *,
        title: str,
        url: str,
        public_url: str | None,
        loopback_only: bool,
    ) -> None:
        """``url`` is where the server listens (for the banner); ``public_url`` fixes the page's URLs."""
        super().__init__(command, host=host, port=port, title=title, public_url=public_url or url)
        self.fixed_public_url = public_url
        self.loopback_only = loopback_only
        self._sessions: set[asyncio.Task[object]] = set()
        self._stopping = False

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._refuse_cross_site)
        return app

    @web.middleware
    async def _refuse_cross_site(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse other sites' pages: they could otherwise start dashboards and read the run from here.

        On loopback only loopback names are answered (a DNS-rebound name is not), and the websocket
        that starts a dashboard must come from a page of this server (its Origin).
        """
        host = request.url.host or ""
        if self.loopback_only and not is_loopback(f"tcp://{host}:1"):
            raise web.HTTPForbidden(text=f"this dashboard answers to loopback names only, not {host!r}\n")
        origin = request.headers.get("Origin")
        if request.path == "/ws" and origin is not None:
            allowed = {request.host.lower()}
            if self.fixed_public_url:
                allowed.add(urlsplit(self.fixed_public_url).netloc.lower())
            if urlsplit(origin).netloc.lower() not in allowed:
                raise web.HTTPForbidden(text=f"websocket from another site ({origin}) refused\n")
        return await handler(request)

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        """The page, its static and websocket URLs on the origin the browser used (or ``public_url``)."""
        base = self.fixed_public_url or origin_of(request)
        router = request.app.router
        static = f"{base}{router['static'].url_for(filename='/')}".rstrip("/") + "/"
        scheme, rest = f"{base}{router['websocket'].url_for()}".split(":", 1)
        return {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": ("wss:" if scheme == "https" else "ws:") + rest,
            "config": {"static": {"url": static}},
            "application": {"name": self.title},
        }

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One tab: its own dashboard process for as long as the websocket lives (textual-serve)."""
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            return await super().handle_websocket(request)
        finally:
            self._sessions.discard(task)

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every tab: textual-serve then tells its dashboard to quit and waits for it to end.

        Without this aiohttp would wait for the open websockets to end on their own (a minute).
        """
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            await asyncio.wait(sessions, timeout=SHUTDOWN_WAIT_S)

    def request_exit(self) -> None:
        """First Ctrl-C or SIGTERM: stop cleanly; a second one: exit 130 at once."""
        if self._stopping:
            raise SystemExit(130)
        self._stopping = True
        super().request_exit()

    async def on_startup(self, app: web.Application) -> None:
        """Nothing: textual-serve prints its banner here, before the port is open; ours comes in serve()."""

    def serve(self, debug: bool = False) -> None:
        """textual-serve's serve(), but the banner is printed once the port accepts connections."""
        self.debug = debug
        self.initialize_logging()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.add_signal_handler(signal.SIGINT, self.request_exit)
        loop.add_signal_handler(signal.SIGTERM, self.request_exit)
        web.run_app(
            self._make_app(),
            host=self.host,
            port=self.port,
            handle_signals=False,
            loop=loop,
            print=lambda _: print(
                f"tamiyo-web: serving {self.title} on {self.public_url} (Ctrl-C to stop)", file=sys.stderr
            ),
        )
