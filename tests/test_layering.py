"""Layers point one way: core imports none of app/trainer/evals, only app imports PySide6.

Checked on the source with `ast` (not by importing), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "app", "trainer", "evals")
FORBIDDEN = {
    "core": {"app", "trainer", "evals", "PySide6"},
    "trainer": {"app", "PySide6"},
    "evals": {"app", "PySide6"},
    "app": set(),
}


def imported_roots(source: str) -> set[str]:
    """Top-level names of every absolute import, including `importlib.import_module("x")` and `__import__`."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def source_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    "source, roots",
    [
        ("import app", {"app"}),
        ("import app.gui.window as w", {"app"}),
        ("from app.state import View", {"app"}),
        ("from PySide6.QtCore import Signal", {"PySide6"}),
        ("def f():\n    import PySide6.QtWidgets\n", {"PySide6"}),
        ("import importlib\nimportlib.import_module('trainer.recipe')", {"importlib", "trainer"}),
        ("__import__('evals')", {"evals"}),
        ("from . import cache\nfrom .model import StreamModel", set()),  # relative: same package
        ("import os, torch.nn", {"os", "torch"}),
        ("x = 'import app'", set()),
    ],
)
def test_imported_roots(source, roots):
    assert imported_roots(source) == roots


def test_the_packages_exist_and_are_scanned():
    assert source_files("core"), "core/ has no .py files: the scan looks in the wrong place"


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package):
    bad = []
    for path in source_files(package):
        wrong = imported_roots(path.read_text()) & FORBIDDEN[package]
        bad += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(wrong)]
    assert not bad, "; ".join(bad)


def test_pyside6_only_under_app():
    bad = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        if package != "app"
        for path in source_files(package)
        if "PySide6" in imported_roots(path.read_text())
    ]
    assert not bad, f"PySide6 imported outside app/: {bad}"


def test_importing_core_leaves_gui_and_server_modules_unloaded():
    optional = ["PySide6", "websockets", "app", "trainer", "evals", "cv2", "mss", "sounddevice", "matplotlib"]
    code = f"import sys, core; print(' '.join(m for m in {optional!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == ""


# core/ in three concerns: the engine, media I/O and remote serving. The engine imports neither of
# the other two, so it runs (and is tested) without sources, recorders or a network stack.
MEDIA = {"sources", "reconnect", "sampler", "realtime", "recorder", "overlay", "audio", "subtitles"}
REMOTE = {"protocol", "server", "client"}
ASSEMBLY = {"__main__", "__init__"}  # the CLI puts engine, media and remote together


def core_modules_imported(source: str) -> set[str]:
    """The `core.X` modules a source imports (first level below core)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("core."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("core."):
                names.add(node.module.split(".")[1])
            elif node.module == "core":
                names.update(a.name for a in node.names)
    return names


def test_core_module_scan_sees_submodules():
    assert core_modules_imported("from core.sources import open_source\nimport core.client") == {
        "sources",
        "client",
    }
    assert core_modules_imported("from core import server") == {"server"}


def test_the_engine_imports_neither_media_nor_remote():
    modules = {path.stem for path in (ROOT / "core").glob("*.py")}
    assert MEDIA | REMOTE <= modules, "a listed media or remote module no longer exists: update the lists"
    bad = []
    for path in sorted((ROOT / "core").glob("*.py")):
        imported = core_modules_imported(path.read_text())
        if path.stem in MEDIA:
            wrong = imported & REMOTE
        elif path.stem in REMOTE:
            wrong = imported & (MEDIA - {"reconnect"})  # a client reconnects like a live source
        elif path.stem in ASSEMBLY:
            wrong = set()
        else:
            wrong = imported & (MEDIA | REMOTE)
        bad += [f"core/{path.name} imports core.{name}" for name in sorted(wrong)]
    assert not bad, "; ".join(bad)
