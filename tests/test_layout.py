"""Layout rules: bus/ loads no torch or textual, consumers/ never imports producer/, nothing unpickles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
UNPICKLING_CALLS = {"recv_pyobj", "recv_serialized", "read_pickle", "allow_pickle", "Unpickler"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str | None = None) -> set[str]:
    """Every module a file imports, relative imports resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.add(node.args[0].value)  # type: ignore[attr-defined]
    return found


def _dynamic_import(call: ast.Call) -> bool:
    name = getattr(call.func, "attr", getattr(call.func, "id", ""))
    return (
        name in ("import_module", "__import__")
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def unpickling_uses(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    uses = {m for m in imported_modules(path, path.stem) if m.split(".")[0] in UNPICKLING_MODULES}
    for node in ast.walk(tree):
        name = getattr(node, "attr", None) or getattr(node, "id", None) or getattr(node, "arg", None)
        if name in UNPICKLING_CALLS:
            uses.add(name)
    return uses


def _roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_scanners_catch_what_they_look_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch.nn\nfrom textual.app import App\nimport pickle\n"
        "import importlib\nimportlib.import_module('producer.env')\nsock.recv_pyobj()\n"
    )
    assert {"torch", "textual", "pickle", "producer"} <= _roots(imported_modules(sample, "bus.sample"))
    assert {"pickle", "recv_pyobj"} <= unpickling_uses(sample)
    relative = tmp_path / "app.py"
    relative.write_text("from ...producer import trainer\nfrom .. import producer\n")
    assert _roots(imported_modules(relative, "consumers.tui.app")) == {"producer", "consumers"}


def test_bus_imports_neither_torch_nor_textual_by_ast() -> None:
    files = _files("bus")
    assert len(files) >= 10
    for path in files:
        assert not _roots(imported_modules(path)) & {"torch", "textual"}, path


def test_importing_every_bus_module_loads_neither_torch_nor_textual() -> None:
    modules = [_module_name(p) for p in _files("bus") if p.name != "__main__.py"]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'textual'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_consumers_never_import_producer() -> None:
    for path in _files("consumers"):
        assert "producer" not in _roots(imported_modules(path)), path


@pytest.mark.parametrize("package", ["bus", "consumers"])
def test_nothing_is_ever_unpickled(package: str) -> None:
    for path in _files(package):
        assert not unpickling_uses(path), path
