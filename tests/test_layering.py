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


# core/ in four parts: the engine at the root, media I/O in core/media, remote serving in
# core/remote, speech in core/speech. The engine imports no wing, so it runs (and is tested) without
# sources, recorders, a network stack or voices; the wings import the engine, remote imports of
# media only reconnect (a client reconnects like a live source), media imports of speech only its
# samples (the recorder resamples spoken lines into its audio track), and speech imports no wing
# (the pipeline puts it together with a run).
WINGS = ("media", "remote", "speech")
ASSEMBLY = {"__main__", "pipeline"}  # put engine, media and remote together


def core_parts_imported(source: str) -> set[str]:
    """The first-level names below `core` that a source imports (`media`, `remote`, `engine`, ...),
    with the module below a wing: `media.reconnect`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] if node.module != "core" else [f"core.{a.name}" for a in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "core" and len(parts) > 1:
                names.add(".".join(parts[1:3]) if parts[1] in WINGS else parts[1])
    return names


def test_core_part_scan_sees_wings_and_modules():
    source = "from core.media.sources import open_source\nimport core.remote.client\nfrom core import engine"
    assert core_parts_imported(source) == {"media.sources", "remote.client", "engine"}
    assert core_parts_imported("from core.media import reconnect") == {"media"}
    assert core_parts_imported("from core.speech.samples import resample") == {"speech.samples"}


def test_the_engine_imports_no_wing_and_the_wings_only_what_they_may():
    assert all((ROOT / "core" / wing / "__init__.py").is_file() for wing in WINGS)
    bad = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        where = path.relative_to(ROOT / "core").parts
        imported = core_parts_imported(path.read_text())
        wings = {name for name in imported if name.split(".")[0] in WINGS}
        if len(where) == 1:  # the engine, or an assembly point
            wrong = set() if path.stem in ASSEMBLY else wings
        elif where[0] == "media":
            wrong = {name for name in wings if name.startswith("remote")}
            wrong |= {name for name in wings if name.startswith("speech") and name != "speech.samples"}
        elif where[0] == "remote":
            wrong = {name for name in wings if name.split(".")[0] in ("media", "speech")}
            wrong.discard("media.reconnect")
        elif where[0] == "speech":
            wrong = {name for name in wings if not name.startswith("speech")}
        else:  # a folder of core that is no wing: name it in WINGS with its rule
            wrong = {f"{where[0]} (a folder that is not a wing)"}
        bad += [f"core/{'/'.join(where)} imports core.{name}" for name in sorted(wrong)]
    assert not bad, "; ".join(bad)


# The app's state model (the run's state machine, its log and figures, the run request) is plain
# Python, tested without a display: it imports no Qt, and of the app only the other Qt-free modules.
QT_FREE_APP = ("app/__init__.py", "app/state.py", "app/run_state.py", "app/speech.py")


def app_modules_imported(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(f"{name.replace('.', '/')}.py" for name in names if name.startswith("app."))
    return found


@pytest.mark.parametrize("path", QT_FREE_APP)
def test_the_apps_state_model_imports_no_qt(path):
    source = (ROOT / path).read_text()
    assert "PySide6" not in imported_roots(source), f"{path} imports PySide6"
    assert app_modules_imported(source) <= set(QT_FREE_APP), f"{path} imports a Qt module of the app"


def test_the_apps_state_model_loads_without_qt():
    code = "import sys, app.run_state, app.state, app.speech; print('PySide6' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


def test_every_public_name_of_the_core_package_is_there():
    """`core.__all__` is the package's public face (`from core import GenerationConfig`): each name in it
    is defined (a mangled import line once turned three of them into a comment, and nothing else failed)."""
    import core

    assert [name for name in core.__all__ if not hasattr(core, name)] == []
