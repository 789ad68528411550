"""The waiting screen: shown until the first message of a run arrives, naming the endpoint it listens on."""

from __future__ import annotations

from textual.content import Content

from consumers.tui.view import View
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import shown, styled


class WaitingPanel(Panel):
    """Says where the dashboard is listening, for how long, and how to start or reach a producer."""

    def draw(self, view: View, width: int, height: int) -> Lines:
        p = view.palette
        port = _port(view.endpoint)
        lines = [
            Content.assemble(
                ("Waiting for training on ", "bold"), (shown(view.endpoint), f"bold {p.accent}")
            ),
            _link_line(view),
            Content(""),
            Content.assemble(("Start a run:      ", p.dim), "make train"),
            Content.assemble(("Remote run:       ", p.dim), f"ssh -N -L {port}:127.0.0.1:{port} trainhost"),
            Content.assemble(("                  ", p.dim), f"make tui ENDPOINT=tcp://127.0.0.1:{port}"),
            Content(""),
            styled(
                "The dashboard attaches by itself when the producer starts; ? for help, q to quit.", p.dim
            ),
        ]
        return lines


def _link_line(view: View) -> Content:
    """What the subscriber knows about the other end, so a broken tunnel reads differently from no run."""
    p = view.palette
    link = view.link
    waited = f"{view.waited_s:.0f}s"
    if link.auth_failures:
        return styled(
            f"the publisher refused this consumer's CURVE key ({link.auth_failures}x): check --curve-keys",
            p.fail,
        )
    if link.connected:
        return styled(f"connected to a publisher; no message for {waited}", p.dim)
    return styled(f"no publisher reachable there yet ({waited}); ZeroMQ keeps trying", p.dim)


def _port(endpoint: str) -> str:
    tail = endpoint.rpartition(":")[2]
    return tail if endpoint.startswith("tcp://") and tail.isdigit() else "5555"
