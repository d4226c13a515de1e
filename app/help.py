"""The Help menu's texts: the keyboard shortcuts (from the window's actions, so the list cannot drift
from the keys) and the About box with the versions of what runs."""

from __future__ import annotations

import platform
from importlib import metadata

from PySide6.QtGui import QAction, QKeySequence

# Keys that are no menu action.
EXTRA_KEYS = (
    ("Esc", "leave the full-screen picture"),
    ("Double-click the picture", "full screen and back"),
)


def shortcuts(actions: list[QAction]) -> list[tuple[str, str]]:
    """(key, what it does) for every action with a key, then the view's own keys."""
    keys = []
    for action in actions:
        key = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        if key:
            keys.append((key, action.text().replace("…", "")))
    return keys + list(EXTRA_KEYS)


def shortcuts_html(keys: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td><b>{key}</b></td><td>&nbsp;&nbsp;{what}</td></tr>" for key, what in keys)
    return f"<table>{rows}</table>"


def about_html() -> str:
    from PySide6 import __version__ as pyside
    from PySide6.QtCore import qVersion

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"<b>streamvlm {version('streamvlm')}</b><br>Live video commentary with a streaming "
        "vision-language model.<br><br>"
        f"Python {platform.python_version()}, Qt {qVersion()}, PySide6 {pyside}<br>"
        f"PyTorch {version('torch')}, Transformers {version('transformers')}, PyAV {version('av')}"
    )
