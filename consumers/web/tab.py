"""One browser tab's dashboard: ``python -m consumers.tui`` that also ends when the web server dies."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from consumers.tui.__main__ import main as tui_main

PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal this process gets when its parent exits."""


def end_with_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when ``parent_pid`` exits (Linux); False when it is already gone.

    textual-serve stops its dashboards itself when it exits cleanly; this covers a server that
    is killed outright, whose dashboards would otherwise run on, subscribed, with no page to draw.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == parent_pid


def main(argv: list[str]) -> int:
    """``python -m consumers.web.tab PARENT_PID [consumers.tui flags...]``."""
    if not end_with_parent(int(argv[0])):
        return 0
    return tui_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
