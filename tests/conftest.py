"""Shared by every test folder: the testkit helpers importable, the real packages still the ones imported."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# pytest's default "prepend" import mode already puts this folder on sys.path (so `import testkit` works
# from every test folder); the explicit entry keeps that true under other import modes. With tests/ on
# sys.path, tests/bus and tests/producer would be found as empty namespace packages named bus and producer
# (the editable install's finder only runs after the path finder): the repository root on sys.path makes
# the real, regular packages win.
for path in (TESTS, ROOT):
    if str(path) not in sys.path:
        sys.path.append(str(path))
