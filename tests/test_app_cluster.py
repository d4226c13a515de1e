"""The desktop app against a cluster (core/remote/cluster.py): its URL in the Model field, the stream served by
a replica on a local Ray instance, as from a single server."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("PySide6")
pytest.importorskip("ray", reason="the cluster extra (pip install 'streamvlm[cluster]') is not installed")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.window import MainWindow  # noqa: E402
from clihelpers import CLIP  # noqa: E402


@pytest.fixture
def window(qtbot, tmp_path):
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def log_lines(win) -> list[str]:
    return [line for line in win.log.toPlainText().splitlines() if line.strip()]


def test_the_app_streams_from_a_clusters_url(qtbot, window, tiny_dir):
    from clusterhelpers import LocalCluster
    from livehelpers import free_port

    running = LocalCluster(tiny_dir, replicas=1, port=free_port(), token="t0ken", max_sessions=2, budget=30.0)
    try:
        url = running.cluster.url
        (replica,) = running.replica_pids()
        window.model_edit.setText(url)
        assert window.token_edit.isEnabled()  # a server's URL: its token is asked for
        window.token_edit.setText("t0ken")
        window.source_box.setCurrentText(str(CLIP))
        qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(log_lines(window)) >= 3, timeout=90_000)
        assert all(line.startswith("[00:0") for line in log_lines(window))
        assert window.worker._remote.replica == replica  # the commentary came from the cluster's replica
        qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)
        assert window.message.text() == "" and window.state_label.text() == "Stopped"  # not an error
    finally:
        running.stop()
