"""The app picks a hub model (`org/name` in the model field) that is not in the cache: the window shows
the download's progress with a Cancel that leaves the app idle and the bytes on disk, a Start that
resumes it, and the download's errors in the one error panel. The hub is `FakeHub`
(tests/hubhelpers.py) on loopback, stopping in the middle of the weights until the test lets go.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.run_state import Phase  # noqa: E402
from app.window import MainWindow  # noqa: E402
from app.worker import StreamWorker  # noqa: E402
from clihelpers import CLIP  # noqa: E402
from hubhelpers import BIG, CHUNK, COMMIT, NOT_FETCHED, REPO, FakeHub, point_hub_at, repository_files  # noqa: E402


@pytest.fixture(scope="module")
def repo_files(tiny_dir) -> dict[str, bytes]:
    return repository_files(tiny_dir)


@pytest.fixture
def hub(repo_files, tmp_path, monkeypatch):
    """The local hub, and huggingface_hub pointed at it with an empty cache of this test's own."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest.py sets it for every test
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(StreamWorker, "_models", {})  # no model kept from another test's run
    with FakeHub(REPO, repo_files) as server:
        point_hub_at(monkeypatch, server.url)
        yield server


@pytest.fixture
def window(qtbot, tmp_path):
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def start(qtbot, win, model: str) -> None:
    win.source_box.setCurrentText(str(CLIP))
    win.model_edit.setText(model)
    qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)


def watch(win) -> list[tuple]:
    """What the window shows at each change of state: the state field, the download panel (shown, its
    figures, its bar), and the download's progress behind them."""
    seen = []
    show = win._show_state

    def record() -> None:
        show()
        panel = win.download_panel
        seen.append(
            (
                win.state_label.text(),
                panel.isVisible(),
                panel.figures.text(),
                panel.bar.value(),
                win.run.download,
            )
        )

    win._show_state = record
    return seen


def blobs(tmp_path: Path) -> Path:
    return tmp_path / "hub" / "models--org--name" / "blobs"


def partial_files(tmp_path: Path) -> list[Path]:
    return list(blobs(tmp_path).glob("*.incomplete"))


def download_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "model-download"]


def log_lines(win) -> list[str]:
    return [line for line in win.log.toPlainText().splitlines() if line.strip()]


def test_a_hub_model_downloads_with_progress_a_cancel_keeps_the_bytes_and_start_resumes(
    qtbot, window, hub, repo_files, tmp_path
):
    total = hub.total()
    hub.stall_after[BIG] = CHUNK + CHUNK // 2  # the weights' first 10 MB block arrives, then the line stalls
    seen = watch(window)
    start(qtbot, window, REPO)
    qtbot.waitUntil(
        lambda: window.run.download is not None and window.run.download.done >= CHUNK, timeout=30_000
    )
    shown = [s for s in seen if s[0].startswith("Downloading weights")]
    assert shown[0][0] == "Downloading weights 0%" and all(s[1] for s in shown)  # the panel is up
    percent = window.run.download.done * 100 // total
    assert 0 < percent < 100 and window.state_label.text() == f"Downloading weights {percent}%"
    panel = window.download_panel
    assert panel.bar.value() == percent and REPO in panel.title.text()
    figures = panel.figures.text()
    assert figures.startswith(f"{window.run.download.done / 1e6:.1f} MB of {total / 1e6:.1f} MB, ")
    assert "B/s" in figures and figures.endswith(" left")
    assert window.stop_button.isEnabled() and not window.start_button.isEnabled()
    assert window.view.hint.startswith("The video shows here once the model is ready")  # not 'press Start'
    assert window.view.hint.endswith(window.state_label.text())

    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    # Idle at once, though the download thread waits for the stalled server: it ends at its next block.
    qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)
    assert window.run.phase is Phase.CANCELLED and window.thread is None
    assert window.state_label.text() == "Download cancelled: the bytes so far are kept, and Start resumes it"
    assert not panel.isVisible() and not window.errors.isVisible()
    assert not StreamWorker._models  # nothing was loaded
    partial = blobs(tmp_path) / (FakeHub.etag(BIG, repo_files[BIG]) + ".incomplete")
    qtbot.waitUntil(lambda: partial.stat().st_size == CHUNK, timeout=10_000)

    # The server goes on; the cancelled download stops at the block it gets, without writing it.
    hub.stall_after.clear()
    hub.release.set()
    qtbot.waitUntil(lambda: not download_threads(), timeout=30_000)
    assert partial.stat().st_size == CHUNK and not window.run.running
    on_disk = sum(p.stat().st_size for p in blobs(tmp_path).iterdir())  # the weights' block, small files

    hub.served.clear()
    seen.clear()
    start(qtbot, window, REPO)
    qtbot.waitUntil(lambda: len(log_lines(window)) >= 1, timeout=60_000)
    assert hub.served[BIG] == len(repo_files[BIG]) - CHUNK  # only the rest
    assert sum(hub.served.values()) == total - on_disk
    downloading = [s for s in seen if s[0].startswith("Downloading weights")]
    first = downloading[0][4]  # of the files still missing (the small ones the Cancel cut off, the weights)
    assert first.done == CHUNK and downloading[0][0] == f"Downloading weights {CHUNK * 100 // first.total}%"
    assert downloading[-1][0] == "Downloading weights 100%"
    downloading = [s[0] for s in downloading]
    states = [s[0] for s in seen]
    assert states.index("Loading weights: org/name", states.index(downloading[-1])) > 0
    assert window.state_label.text().startswith("Streaming") and not panel.isVisible()
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / COMMIT
    assert (snapshot / BIG).read_bytes() == repo_files[BIG] and not partial_files(tmp_path)
    window.stop()
    qtbot.waitUntil(lambda: window.thread is None, timeout=10_000)
    assert window.state_label.text() == "Stopped"


def test_start_right_after_a_cancel_waits_for_the_cancelled_download_and_then_streams(
    qtbot, window, hub, repo_files, tmp_path
):
    """The cancelled download's thread still waits on a stalled line when Start is pressed again: the
    new run's download takes the file over once that thread lets it go, and the weights come out whole."""
    hub.stall_after[BIG] = CHUNK + CHUNK // 2
    start(qtbot, window, REPO)
    qtbot.waitUntil(
        lambda: window.run.download is not None and window.run.download.done >= CHUNK, timeout=30_000
    )
    window.stop()  # the Stop button does what Cancel does while downloading
    qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)
    assert window.run.phase is Phase.CANCELLED and download_threads()

    start(qtbot, window, REPO)
    assert window.run.running
    hub.stall_after.clear()
    hub.release.set()
    qtbot.waitUntil(lambda: len(log_lines(window)) >= 1, timeout=60_000)
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / COMMIT
    assert (snapshot / BIG).read_bytes() == repo_files[BIG] and not partial_files(tmp_path)
    assert window.errors.isVisible() is False


def test_closing_the_window_during_a_download_returns_promptly_and_leaves_no_running_thread(
    qtbot, hub, tmp_path
):
    """The line stalls; closing the window stops the run at once (the download thread ends at its next
    block, later), rather than waiting on the download or destroying a thread that still runs."""
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    hub.stall_after[BIG] = CHUNK + CHUNK // 2
    start(qtbot, win, REPO)
    qtbot.waitUntil(lambda: win.run.download is not None and win.run.download.done >= CHUNK, timeout=30_000)
    thread = win.thread
    win.close()  # waits up to 2 s for the run's thread, as the window does
    assert thread.isFinished()


FAILURES = {
    "offline": (REPO, "http://127.0.0.1:9", None, "the hub at http://127.0.0.1:9 cannot be reached"),
    "unknown id": ("org/other", None, None, "has no such model, or it is private or gated"),
    "no room": (REPO, None, 10**18, "'org/name' needs 1000"),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_a_download_that_cannot_be_done_says_why_in_the_error_panel_and_the_app_stays_usable(
    qtbot, window, hub, monkeypatch, case
):
    model, endpoint, claimed, words = case
    if endpoint:
        point_hub_at(monkeypatch, endpoint)
    if claimed:
        hub.claimed[BIG] = claimed  # a size no disk has free
    start(qtbot, window, model)
    qtbot.waitUntil(lambda: window.run.phase is Phase.FAILED and window.thread is None, timeout=30_000)
    assert window.errors.isVisible() and not window.download_panel.isVisible()
    error = window.errors.summary.text()
    assert words in error and error.count(". ") == 0 and "--model /path/to/folder" in error  # one sentence
    assert window.state_label.text() == "Failed" and window.start_button.isEnabled()
    assert not hub.served and not set(hub.served) & set(NOT_FETCHED)  # not a byte fetched
