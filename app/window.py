"""The main window: source and model choice, the live view with commentary overlays, the log.

Widgets are touched only here, in the GUI thread; the `StreamWorker` (app/worker.py) reports
through signals. What a run is doing, its log and its figures live in Qt-free objects
(app/run_state.py: `RunState`, `RunLog`); this module shows them: the state in the status bar's
first field, the figures beside it (greyed when they are not live), errors in one panel inside the
window. The overlay is `core.media.overlay.Overlay`, the same renderer the recorder burns in, drawn
here at the view's resolution in device pixels.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings, QStandardPaths, Qt, QThread, QTimer, Slot
from PySide6.QtGui import QAction, QImage, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.icon import app_icon
from app.run_state import ErrorReport, Phase, RunLog, RunState, recording_name
from app.state import DEMO_SOURCE, RunRequest, demo_clip, is_server_url, resolve_source
from app.widgets import ErrorPanel, VideoView
from app.worker import StreamWorker
from core.config import EngineConfig
from core.errors import StreamVLMError
from core.media.overlay import Overlay, OverlayStyle
from core.paths import check_outputs, folder_problem, recording_outputs, source_file
from core.types import Commentary, Frame

TITLE = "streamvlm"
SMOKE_MODEL = "tiny"
SMOKE_NOTE = (
    "Smoke mode: the tiny model with random weights runs offline to check the setup; its commentary "
    "is gibberish. The source is the demo clip."
)
VIDEO_HINT = "No video yet.\n\nPress Start (Ctrl+Return), or drop a video file here."
FAILED_HINT = (
    "No video: the run failed (the reason is on the right).\n\nDrop a video file here to try another."
)
# The state field's colours by kind of phase: busy, live, trouble, over.
_STATE_COLOURS = {
    Phase.STREAMING: "#276749",
    Phase.RECONNECTING: "#975a16",
    Phase.FAILED: "#c53030",
}
_EXTRA_KEYS = (  # keys that are no menu action, for the shortcuts list
    ("Esc", "leave the full-screen picture"),
    ("Double-click the picture", "full screen and back"),
)


def default_record_folder() -> Path:
    """The platform's Movies/Videos folder (Qt's standard paths); created at Start if it is missing."""
    return Path(
        QStandardPaths.writableLocation(QStandardPaths.StandardLocation.MoviesLocation) or Path.home()
    )


def display_path(path: Path) -> str:
    """A path as people write it: '~/Videos' for a folder under the home folder."""
    home = Path.home()
    return (
        "~" + os.sep + str(path.relative_to(home))
        if path.is_relative_to(home) and path != home
        else str(path)
    )


class MainWindow(QMainWindow):
    def __init__(
        self,
        *,
        model: str | None = None,
        source: str | None = None,
        smoke: bool = False,
        settings: QSettings | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        """`config`: the engine settings of every run (the app's --config file), defaults otherwise.
        `smoke`: the tiny random model on the demo clip; the user's saved choices are left as they are."""
        super().__init__()
        self.config = config or EngineConfig()
        self.settings = settings or QSettings("streamvlm", "streamvlm")
        self.smoke = smoke
        self.setWindowTitle(TITLE + (" (smoke mode)" if smoke else ""))
        self.setAcceptDrops(True)
        self.setWindowIcon(app_icon())
        self.overlay = Overlay(self._overlay_style())
        self.overlay_visible = True
        self.worker: StreamWorker | None = None
        self.thread: QThread | None = None
        self.frame: Frame | None = None
        self.run = RunState()
        self.runlog = RunLog()
        self.request: RunRequest | None = None  # what the session of `lines` read and wrote
        self._build()
        self._restore(model=model, source=source)
        self._show_state()

    @property
    def lines(self) -> list[Commentary]:
        """This session's commentary, for export."""
        return self.runlog.lines

    @lines.setter
    def lines(self, lines: list[Commentary]) -> None:
        self.runlog.lines = list(lines)

    # -- layout --------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.source_box = QComboBox(editable=True)
        self.source_box.setToolTip(
            "the demo clip, a video file, camera:N, screen:N or screen:N@x,y,w,h, or a stream URL"
        )
        self.browse_button = QPushButton("File…")
        self.browse_button.clicked.connect(self._browse)
        source_row = QHBoxLayout()
        source_row.addWidget(self.source_box, 1)
        source_row.addWidget(self.browse_button)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("checkpoint folder, hub id, tiny, or ws://host:8765 (a server)")
        self.model_edit.setToolTip(
            "a local model, or the URL of a 'python -m core serve' on another machine (ws:// or wss://)"
        )
        self.token_edit = QLineEdit(os.environ.get("STREAMVLM_TOKEN", ""))
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("the server's token (not saved)")
        self.model_edit.textChanged.connect(self._model_changed)
        self.instruction_edit = QLineEdit()
        self.instruction_edit.setPlaceholderText("Commentate on this match")
        self.previous_edit = QPlainTextEdit()
        self.previous_edit.setPlaceholderText("context: a title or earlier commentary")
        self.previous_edit.setMaximumHeight(60)

        self.record_check = QCheckBox("into")
        self.record_check.setToolTip("record the video with the commentary burned in, and an .srt beside it")
        self.output_edit = QLineEdit()
        self.output_edit.setToolTip("the folder recordings go to")
        self.folder_button = QPushButton("Choose…")
        self.folder_button.clicked.connect(self._choose_folder)
        record_row = QHBoxLayout()
        record_row.addWidget(self.record_check)
        record_row.addWidget(self.output_edit, 1)
        record_row.addWidget(self.folder_button)
        self.record_note = QLabel("")
        self.record_note.setWordWrap(True)
        self.record_note.setStyleSheet("color: gray;")
        self.record_check.toggled.connect(self._record_changed)
        self.output_edit.textChanged.connect(self._record_changed)
        self._name_timer = QTimer(self, interval=1000, timeout=self._record_changed)  # the name has seconds

        self.audio_check = QCheckBox("from")
        self.audio_box = QComboBox()
        self.audio_note = QLabel("")
        self.audio_note.setWordWrap(True)
        self.audio_note.setStyleSheet("color: gray;")
        audio_row = QHBoxLayout()
        audio_row.addWidget(self.audio_check)
        audio_row.addWidget(self.audio_box, 1)
        self.position_box = QComboBox()
        self.position_box.addItems(["bottom", "top"])
        self.font_spin = QDoubleSpinBox(minimum=0.5, maximum=3.0, singleStep=0.1, decimals=1)
        self.position_box.currentTextChanged.connect(self._style_changed)
        self.font_spin.valueChanged.connect(self._style_changed)
        style_row = QHBoxLayout()
        style_row.addWidget(self.position_box)
        style_row.addWidget(QLabel("text size"))
        style_row.addWidget(self.font_spin)
        style_row.addStretch(1)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("save the commentary as SRT, WebVTT or JSON lines")
        self.export_button.clicked.connect(self._export_dialog)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.export_button)

        form = QFormLayout()
        form.addRow("Source", source_row)
        form.addRow("Model", self.model_edit)
        form.addRow("Token", self.token_edit)
        form.addRow("Instruction", self.instruction_edit)
        form.addRow("Previous text", self.previous_edit)
        form.addRow("Record", record_row)
        form.addRow("", self.record_note)
        form.addRow("Sound", audio_row)
        form.addRow("", self.audio_note)
        form.addRow("Overlay", style_row)
        form.addRow("Run", buttons)

        self.view = VideoView(VIDEO_HINT)
        self.view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.view.resized.connect(self._paint)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(5000)
        self.errors = ErrorPanel()
        self.message = self.errors.summary  # the error sentence shown now ("" when none)
        self.errors.close_button.clicked.connect(self.run.clear_error)  # dismissed for good

        controls = QWidget()
        side = QVBoxLayout(controls)
        side.addLayout(form)
        side.addWidget(self.errors)
        side.addWidget(QLabel("Commentary"))
        side.addWidget(self.log, 1)
        self.splitter = QSplitter()
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(controls)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.smoke_banner = QLabel(SMOKE_NOTE)
        self.smoke_banner.setWordWrap(True)
        self.smoke_banner.setStyleSheet(
            "background: #fefcbf; color: #744210; border: 1px solid #d69e2e; padding: 6px; font-weight: bold;"
        )
        self.smoke_banner.setVisible(self.smoke)
        central = QWidget()
        main = QVBoxLayout(central)
        main.setContentsMargins(0, 0, 0, 0)
        main.addWidget(self.smoke_banner)
        main.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

        self.state_label = QLabel("")
        self.rate_label = QLabel("")
        self.latency_label = QLabel("")
        self.device_label = QLabel("")
        for label in (self.state_label, self.rate_label, self.latency_label, self.device_label):
            self.statusBar().addWidget(label, 1 if label is self.state_label else 0)
        self._build_menus()
        self.resize(1200, 680)

    def _build_menus(self) -> None:
        """Every command with a key is a menu action; the shortcuts list is made from them."""

        def action(menu, text: str, slot, key: str | None = None, checkable: bool = False) -> QAction:
            act = QAction(text, self, checkable=checkable)
            if key:
                act.setShortcut(QKeySequence(key))
            act.triggered.connect(slot)
            menu.addAction(act)
            self._actions.append(act)
            return act

        self._actions: list[QAction] = []
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        action(file_menu, "Open video…", self._browse, "Ctrl+Shift+O")
        action(file_menu, "Export commentary…", self._export_dialog, "Ctrl+E")
        file_menu.addSeparator()
        action(file_menu, "Quit", self.close, "Ctrl+Q")
        run_menu = bar.addMenu("&Run")
        self.run_action = action(run_menu, "Start / Stop", self.toggle_run, "Ctrl+Return")
        self.record_action = action(run_menu, "Record", self.record_check.setChecked, "Ctrl+R", True)
        self.record_check.toggled.connect(self.record_action.setChecked)
        view_menu = bar.addMenu("&View")
        self.overlay_action = action(view_menu, "Commentary overlay", self._set_overlay, "Ctrl+O", True)
        self.overlay_action.setChecked(True)
        action(view_menu, "Full-screen picture", self.view.toggle_full_screen, "F11")
        help_menu = bar.addMenu("&Help")
        action(help_menu, "Keyboard shortcuts", self.show_shortcuts, "F1")
        action(help_menu, "About streamvlm", self.show_about)
        self.dialog: QMessageBox | None = None  # the help or about box open now

    def _restore(self, *, model: str | None, source: str | None) -> None:
        from core.media.sources import list_cameras, list_monitors

        choices = [DEMO_SOURCE]
        choices += [f"screen:{m.index}" for m in list_monitors()] + [
            f"camera:{c.index}" for c in list_cameras()
        ]
        self.source_box.addItems(choices)
        self.source_box.setItemData(0, str(demo_clip()), Qt.ItemDataRole.ToolTipRole)
        saved = lambda key, default="": "" if self.smoke else self.settings.value(key, default, str)  # noqa: E731
        # A first start opens on the demo clip, never on a screen (which would film the app itself).
        self.source_box.setCurrentText(source or saved("source") or DEMO_SOURCE)
        self.model_edit.setText(model or (SMOKE_MODEL if self.smoke else saved("model")))
        self._model_changed(self.model_edit.text())
        folder = saved("output_folder") or display_path(default_record_folder())
        self.output_edit.setText(folder)
        from core.media.audio import input_devices

        devices, self._why_no_sound = input_devices(rescan=self.thread is None)
        for device in devices:
            self.audio_box.addItem(f"{device.name} ({device.channels} ch)", device.index)
        if self._why_no_sound:
            for widget in (self.audio_check, self.audio_box):
                widget.setToolTip(self._why_no_sound)
            self.audio_note.setText(f"Sound recording is off: {self._why_no_sound}.")
        self._record_changed()
        style = self.overlay.style
        self.position_box.setCurrentText(style.position)
        self.font_spin.setValue(style.font_scale)
        geometry, splitter = self.settings.value("window/geometry"), self.settings.value("window/splitter")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if splitter is not None:
            self.splitter.restoreState(splitter)

    @Slot(str)
    def _model_changed(self, text: str) -> None:
        """The token matters only for a server; a local model has none."""
        self.token_edit.setEnabled(is_server_url(text.strip()))

    def _overlay_style(self) -> OverlayStyle:
        position = self.settings.value("overlay/position", "bottom", str)
        scale = float(self.settings.value("overlay/font_scale", 1.0))
        try:
            return OverlayStyle(position=position, font_scale=scale)
        except ValueError:
            return OverlayStyle()

    # -- recording -------------------------------------------------------------------------------------

    def record_folder(self) -> Path:
        return Path(self.output_edit.text().strip()).expanduser()

    @Slot()
    def _record_changed(self, *_) -> None:
        """The recording's rows: sound only with a recording, the file name before Start."""
        on = self.record_check.isChecked()
        sound = on and not self._why_no_sound
        self.audio_check.setEnabled(sound)
        self.audio_box.setEnabled(sound)
        self.audio_note.setVisible(on and bool(self._why_no_sound))
        if self.run.running and self.request is not None:
            note = (
                f"Recording to {display_path(Path(self.request.record_to))}" if self.request.record_to else ""
            )
        elif on:
            folder = self.record_folder()
            name = recording_name()
            if folder == default_record_folder() and not folder.exists():
                note = f"Saves {name} and its .srt here (the folder is created at Start)."
            elif problem := folder_problem(folder):
                note = problem[0].upper() + problem[1:] + "."
            else:
                note = f"Saves {name} and its .srt here."
        else:
            note = ""
        self.record_note.setText(note)
        self.record_note.setVisible(bool(note))
        if on and not self.run.running:
            self._name_timer.start()
        else:
            self._name_timer.stop()

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Record into", str(self.record_folder()))
        if folder:
            self.output_edit.setText(display_path(Path(folder)))
            self.record_check.setChecked(True)

    def _recording_path(self, source: str) -> tuple[str | None, str | None]:
        """(the recording's path, None) or (None, why it cannot record)."""
        folder = self.record_folder()
        if folder == default_record_folder() and not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                return None, f"cannot create the folder '{folder}' ({exc.strerror}); choose another"
        problem = folder_problem(folder)
        if problem:
            return None, f"cannot record: {problem}"
        path = str(folder / recording_name())
        try:  # a recording never overwrites the video it records (e.g. replaying an earlier one)
            check_outputs(recording_outputs(path), {"the source": source_file(source)})
        except StreamVLMError as exc:
            return None, str(exc)
        return path, None

    # -- actions ---------------------------------------------------------------------------------------

    @Slot()
    def start(self) -> None:
        if self.thread is not None:
            return
        spec = self.source_box.currentText().strip()
        model = self.model_edit.text().strip()
        problems = []
        if not spec:
            problems.append("choose a source: the demo clip, a file, a camera, a screen or a stream URL")
        if not model:
            problems.append("choose a model: a checkpoint folder, a hub id, tiny, or a server's ws:// URL")
        source = resolve_source(spec) if spec else ""
        record_to = None
        if not problems and self.record_check.isChecked():
            record_to, problem = self._recording_path(source)
            if problem:
                problems.append(problem)
        if problems:
            self.run.refuse(ErrorReport.from_text("; ".join(problems)))
            self._show_state()
            return
        if not self.smoke:  # a smoke check leaves the user's own choices as they were
            self.settings.setValue("source", spec)
            self.settings.setValue("model", model)
            self.settings.setValue("output_folder", self.output_edit.text().strip())
        self.log.clear()
        self.runlog.clear()
        self.overlay = Overlay(self._overlay_style())
        self.frame = None
        self._paint()
        request = RunRequest(
            source=source,
            model=model,
            instruction=self.instruction_edit.text().strip(),
            previous_text=self.previous_edit.toPlainText().strip(),
            record_to=record_to,
            audio_device=self.audio_box.currentData() if record_to and self.audio_check.isChecked() else None,
            token=self.token_edit.text().strip() or None,
            config=self.config,
        )
        self.request = request
        self.run.begin(remote=request.remote)
        self.worker = StreamWorker(request)
        self.thread = QThread(self)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.frame.connect(self.on_frame)
        self.worker.commentary.connect(self.on_commentary)
        self.worker.report.connect(self.on_report)
        self.worker.phase.connect(self.on_phase)
        self.worker.link.connect(self.on_link)
        self.worker.failed.connect(self.on_failed)
        self.worker.finished.connect(self.on_finished)
        self._show_state()
        self.thread.start()

    @Slot()
    def stop(self) -> None:
        if self.worker is not None and self.run.stop():
            self.worker.stop()
            self._show_state()

    @Slot()
    def toggle_run(self) -> None:
        self.stop() if self.thread is not None else self.start()

    @Slot()
    def _style_changed(self, *_) -> None:
        style = OverlayStyle(
            position=self.position_box.currentText(), font_scale=round(self.font_spin.value(), 1)
        )
        self.settings.setValue("overlay/position", style.position)
        self.settings.setValue("overlay/font_scale", style.font_scale)
        self.overlay.style = style
        self._paint()

    def export(self, path: str | Path) -> int:
        """Write the session's commentary so far to `path` (.srt, .vtt or .jsonl); returns the cue count."""
        from core.media.subtitles import JsonlWriter, SrtWriter, VttWriter

        kinds = {".srt": SrtWriter, ".vtt": VttWriter, ".jsonl": JsonlWriter}
        path = Path(path)
        kind = kinds.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"export to .srt, .vtt or .jsonl (got '{path.name}')")
        # The session's source and recording (its .srt above all, a natural export name) stay intact.
        request = self.request
        recording = recording_outputs(request.record_to) if request and request.record_to else {}
        source = source_file(request.source) if request else None
        check_outputs({**recording, "the export": path}, {"the source": source})
        with kind(path) as writer:
            for line in self.lines:
                writer.write(line)
        return len(self.lines)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export commentary",
            "commentary.srt",
            "SubRip (*.srt);;WebVTT (*.vtt);;JSON lines (*.jsonl)",
        )
        if path:
            try:
                self.statusBar().showMessage(f"exported {self.export(path)} lines to {path}", 8000)
            except (ValueError, StreamVLMError) as exc:
                self.show_error(str(exc))

    @Slot()
    def toggle_overlay(self) -> None:
        self._set_overlay(not self.overlay_visible)

    def _set_overlay(self, visible: bool) -> None:
        self.overlay_visible = bool(visible)
        self.overlay_action.setChecked(self.overlay_visible)
        self._paint()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a video", "", "Videos (*.mp4 *.mkv *.mov *.ts *.avi *.webm);;All files (*)"
        )
        if path:
            self.use_source(path)

    def use_source(self, spec: str) -> None:
        """Make `spec` the source; a run in progress keeps its own until the next Start."""
        self.source_box.setCurrentText(spec)
        if self.run.running:
            self.statusBar().showMessage("the new source is used from the next Start", 8000)

    def show_error(self, text: str, details: str = "") -> None:
        """An error outside a run (an export that failed): the same panel as a run's failure."""
        self.run.refuse(ErrorReport.from_text(text, details))
        self._show_state()

    # -- drag and drop ---------------------------------------------------------------------------------

    @staticmethod
    def _dropped_file(event) -> str | None:
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        if len(urls) == 1 and urls[0].isLocalFile() and Path(urls[0].toLocalFile()).is_file():
            return urls[0].toLocalFile()
        return None

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self._dropped_file(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802
        path = self._dropped_file(event)
        if path:
            self.use_source(path)
            event.acceptProposedAction()

    # -- help ------------------------------------------------------------------------------------------

    def shortcuts(self) -> list[tuple[str, str]]:
        """(key, what it does) for every menu action with a key, and the view's own keys."""
        keys = []
        for act in self._actions:
            key = act.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            if key:
                keys.append((key, act.text().replace("…", "")))
        return keys + list(_EXTRA_KEYS)

    def show_shortcuts(self) -> None:
        rows = "".join(
            f"<tr><td><b>{key}</b></td><td>&nbsp;&nbsp;{what}</td></tr>" for key, what in self.shortcuts()
        )
        self._open_box("Keyboard shortcuts", f"<table>{rows}</table>")

    def about_text(self) -> str:
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

    def show_about(self) -> None:
        self._open_box("About streamvlm", self.about_text())

    def _open_box(self, title: str, html: str) -> None:
        if self.dialog is not None:
            self.dialog.close()
        self.dialog = QMessageBox(
            QMessageBox.Icon.NoIcon, title, html, QMessageBox.StandardButton.Close, self
        )
        self.dialog.setTextFormat(Qt.TextFormat.RichText)
        self.dialog.setIconPixmap(self.windowIcon().pixmap(64, 64))
        self.dialog.open()  # not modal to the application: the stream goes on

    # -- worker signals (GUI thread) -------------------------------------------------------------------

    @Slot(object)
    def on_frame(self, frame: Frame) -> None:
        self.frame = frame
        self._paint()

    @Slot(object)
    def on_commentary(self, line: Commentary) -> None:
        self.overlay.add(line)
        self.log.appendPlainText(self.runlog.add(line))
        self._paint()

    @Slot(object)
    def on_report(self, report) -> None:
        frames = self.worker.frames_in if self.worker is not None else self.runlog.frames
        self.runlog.chunk(latency=report.latency, skipped=report.skipped, frames=frames, now=time.monotonic())
        self.device_label.setText(_device_line())
        self._show_figures()

    @Slot(object, str)
    def on_phase(self, phase: Phase, detail: str) -> None:
        if self.run.progress(phase, detail):
            self._show_state()

    @Slot(bool, str)
    def on_link(self, connected: bool, message: str) -> None:
        if self.run.link(connected, message):
            self._show_state()

    @Slot(str, str)
    def on_failed(self, reason: str, details: str) -> None:
        if self.run.fail(ErrorReport.from_text(reason, details)):
            self._show_state()

    @Slot()
    def on_finished(self) -> None:
        thread, self.thread, self.worker = self.thread, None, None
        if thread is not None:
            thread.quit()
            thread.wait(2000)
        self.run.finish()
        self._show_state()
        self._paint()  # the last frame holds, with the commentary that came after it

    def _show_state(self) -> None:
        """The state field, the buttons, the figures and the error panel, from `self.run`."""
        run = self.run
        recording = run.running and self.request is not None and self.request.record_to
        self.state_label.setText(run.label() + (", recording" if recording else ""))
        colour = _STATE_COLOURS.get(run.phase, "#2c5282" if run.running else "#4a5568")
        self.state_label.setStyleSheet(f"color: {colour}; font-weight: bold;")
        self.start_button.setEnabled(not run.running)
        self.stop_button.setEnabled(run.running and run.phase is not Phase.STOPPING)
        self.errors.show_error(run.error)
        self.view.hint = FAILED_HINT if run.phase is Phase.FAILED else VIDEO_HINT
        self.view.update()
        self._record_changed()
        self._show_figures()

    def _show_figures(self) -> None:
        """Live figures in the normal colour; those of a run that is over (or not streaming) greyed."""
        figures = self.runlog.figures(self.run.live)
        self.rate_label.setText(figures.rates)
        self.latency_label.setText(figures.latency)
        for label in (self.rate_label, self.latency_label, self.device_label):
            label.setEnabled(figures.live)
            label.setToolTip("" if figures.live else "the last figures of a run that is not streaming now")

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self.worker is not None:
            self.run.stop()
            self.worker.stop()
        if self.thread is not None:
            self.thread.quit()
            self.thread.wait(2000)
        self.view.leave_full_screen()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        if self.dialog is not None:
            self.dialog.close()
        super().closeEvent(event)

    # -- painting --------------------------------------------------------------------------------------

    def paint_time(self) -> float | None:
        """The stream time the shown picture is drawn at: the frame's while streaming; once the run is
        over, the held last frame's or the newest line's, whichever is later."""
        if self.frame is None:
            return None
        return self.frame.t if self.run.live else self.overlay.hold_time(self.frame.t)

    @Slot()
    def _paint(self) -> None:
        """The frame scaled to the view (device pixels), then the overlay drawn at that resolution."""
        if self.frame is None:
            self.view.set_picture(None)
            return
        rgb = self.frame.rgb
        size = self.view.target_size(rgb.shape[1], rgb.shape[0])
        if size != (rgb.shape[1], rgb.shape[0]):
            rgb = _scaled(rgb, size)
        if self.overlay_visible:
            rgb = self.overlay.draw(rgb, self.paint_time())
        self.view.set_picture(rgb)


def _scaled(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rgb = np.ascontiguousarray(rgb)
    image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.strides[0], QImage.Format.Format_RGB888)
    scaled = image.scaled(
        *size, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    scaled = scaled.convertToFormat(QImage.Format.Format_RGB888)
    view = np.frombuffer(scaled.constBits(), np.uint8, scaled.sizeInBytes()).reshape(
        scaled.height(), scaled.bytesPerLine()
    )
    return view[:, : size[0] * 3].reshape(size[1], size[0], 3).copy()


def _device_line() -> str:
    import psutil
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.memory_allocated() / 2**30:.1f} GiB"
    return f"CPU, {psutil.Process().memory_info().rss / 2**30:.1f} GiB"
