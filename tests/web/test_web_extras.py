"""The laptop install: the base package with the web and prometheus extras needs no torch."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirements(*extras: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found += project["optional-dependencies"][extra]
    return found


def closure(roots: list[str]) -> set[str]:
    """Every distribution ``pip install`` would bring for ``roots``, from the installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.skip(f"{req.name} is not installed (make install), so its requirements cannot be walked")
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return seen


def test_laptop_install_needs_no_torch() -> None:
    laptop = closure(requirements("web", "prometheus"))
    assert {"textual", "textual-serve", "aiohttp", "prometheus-client", "pyzmq", "msgspec"} <= laptop
    assert "torch" not in laptop, "the consumers' install must stay free of torch"


def test_the_trainer_extra_is_where_torch_comes_from() -> None:
    assert "torch" in closure(requirements("train"))
