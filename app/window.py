"""The main window: source and model choice, the live view with commentary overlays, the log.

Widgets are touched only here, in the GUI thread; the `StreamWorker` (app/worker.py) reports
through signals. What a run is doing, its log and its figures live in Qt-free objects
(app/run_state.py: `RunState`, `RunLog`); this module shows them: the state in the status bar's
first field, the figures beside it (greyed when they are not live; with speech on, its lag and its
waiting and dropped lines), errors in one panel inside the window, a model's download in a panel
above it (with Cancel). The speech choices (app/speech.py) are remembered like the other fields. The overlay is
`core.media.overlay.Overlay`, the same renderer the recorder burns in, drawn here at the view's
resolution in device pixels.

Under the log, a question box (a line, Ask or Enter) is open while a run streams, local or remote: the
question goes to the worker's pipeline at once (asked in the next chunk), shows in the log as asked
('Q: ...'), and its answer comes back marked ('A: ...', in the log in colour and over the video). A
question the session refuses (too long, empty) is said in one sentence under the box; the run goes on.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QThread, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
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

from app import collector, speech
from app import help as help_texts
from app.form import RunForm, default_record_folder, display_path
from app.icon import app_icon
from app.lingering import let_finish
from app.run_state import ErrorReport, Phase, RunLog, RunState
from app.state import DEMO_SOURCE, RunRequest, demo_clip, resolve_source
from app.widgets import DownloadPanel, ErrorPanel, VideoView, dropped_file, scaled_rgb
from app.worker import StreamWorker
from core.config import EngineConfig
from core.errors import StreamVLMError
from core.media.overlay import Overlay, OverlayStyle
from core.paths import check_outputs, recording_outputs, source_file
from core.types import Commentary, Frame

TITLE = "streamvlm"
SMOKE_MODEL = "tiny"
SMOKE_NOTE = (
    "Smoke mode: the tiny model with random weights runs offline to check the setup; its commentary "
    "is gibberish. The source is the demo clip."
)
VIDEO_HINT = "No video yet.\n\nPress Start (Ctrl+Return), or drop a video file here."
# Before the first picture of a run: what it waits for (a download, loading, preparing) is the state field's.
WAITING_HINT = "The video shows here once the model is ready.\n\n{state}"
FAILED_HINT = (
    "No video: the run failed (the reason is on the right).\n\nDrop a video file here to try another."
)
# The state field's colours by kind of phase: busy, live, trouble, over.
_STATE_COLOURS = {
    Phase.STREAMING: "#276749",
    Phase.RECONNECTING: "#975a16",
    Phase.FAILED: "#c53030",
}
# How the log shows a question asked and an answer (commentary is in the normal text colour): readable on
# the light and the dark palettes, and told apart without colour too ('Q: ' italic, 'A: ' bold).
_LOG_STYLES = {
    "question": "color: #3182ce; font-style: italic;",
    "answer": "color: #38a169; font-weight: bold;",
}
QUESTION_HINT = "Ask a question (Enter)"
QUESTION_TIP = (
    "Asked in the next second of the stream (one question a second; later ones wait their turn). "
    "The answer shows in the log and over the video marked 'A:', and is spoken with Speak on."
)
# The form's widgets, by the names the window (and its tests) use.
FORM_WIDGETS = (
    "source_box browse_button model_edit token_edit instruction_edit previous_edit record_check output_edit "
    "folder_button record_note audio_check audio_box audio_note speak_check voice_box speech_device_box "
    "volume_slider volume_label speech_note position_box font_spin start_button stop_button export_button"
).split()


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
        self.form = RunForm()
        for name in FORM_WIDGETS:  # the window's own names for the form's widgets
            setattr(self, name, getattr(self.form, name))
        self.browse_button.clicked.connect(self._browse)
        self.position_box.currentTextChanged.connect(self._style_changed)
        self.font_spin.valueChanged.connect(self._style_changed)
        self.export_button.clicked.connect(self._export_dialog)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)

        self.view = VideoView(VIDEO_HINT)
        self.view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.view.resized.connect(self._paint)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(5000)
        # Two lines at the least (Qt's default is about four): the question row below it then fits the
        # window's smallest height without making that larger.
        self.log.setMinimumHeight(2 * self.log.fontMetrics().lineSpacing() + 2 * self.log.frameWidth() + 8)
        self.question_edit = QLineEdit()
        self.question_edit.setPlaceholderText(QUESTION_HINT)
        self.question_edit.setToolTip(QUESTION_TIP)
        self.ask_button = QPushButton("Ask")
        self.ask_button.setToolTip(QUESTION_TIP)
        self.question_edit.returnPressed.connect(self.ask)
        self.ask_button.clicked.connect(self.ask)
        self.question_edit.textChanged.connect(self._show_question_row)
        self.question_note = QLabel("")  # why the last question was refused (one sentence), or nothing
        self.question_note.setWordWrap(True)
        self.question_note.setStyleSheet("color: #c53030;")
        self.question_note.setVisible(False)
        self.errors = ErrorPanel()
        self.message = self.errors.summary  # the error sentence shown now ("" when none)
        self.errors.close_button.clicked.connect(self.run.clear_error)  # dismissed for good
        self.download_panel = DownloadPanel()
        self.download_panel.cancel_button.clicked.connect(self.stop)  # Stop, while downloading

        controls = QWidget()
        side = QVBoxLayout(controls)
        side.addWidget(self.form)
        side.addWidget(self.download_panel)
        side.addWidget(self.errors)
        side.addWidget(QLabel("Commentary"))
        side.addWidget(self.log, 1)
        question_row = QHBoxLayout()
        question_row.addWidget(QLabel("Question"))
        question_row.addWidget(self.question_edit, 1)
        question_row.addWidget(self.ask_button)
        side.addLayout(question_row)
        side.addWidget(self.question_note)
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
        self.speech_label = QLabel("")
        self.device_label = QLabel("")
        for label in (
            self.state_label,
            self.rate_label,
            self.latency_label,
            self.speech_label,
            self.device_label,
        ):
            self.statusBar().addWidget(label, 1 if label is self.state_label else 0)
            if label is not self.state_label:
                label.setContentsMargins(14, 0, 0, 0)  # the figures read as separate fields
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
        # The full-screen picture is a window of its own: the same keys work there too.
        self.view.addActions(self._actions)
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
        self.output_edit.setText(saved("output_folder") or display_path(default_record_folder()))
        from core.media.audio import input_devices

        self.form.set_sound_devices(*input_devices(rescan=self.thread is None))
        self._restore_speech(saved)
        style = self.overlay.style
        self.position_box.setCurrentText(style.position)
        self.font_spin.setValue(style.font_scale)
        geometry, splitter = self.settings.value("window/geometry"), self.settings.value("window/splitter")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if splitter is not None:
            self.splitter.restoreState(splitter)

    def _restore_speech(self, saved) -> None:
        """The voices and outputs (PortAudio's list as just read for the sound inputs), and the choices
        of last time: the voice if still usable, the output by its name, the volume, Speak."""
        from core.speech.output import default_output, output_devices

        voices = speech.voice_choices()
        devices, why = output_devices()
        choices = speech.device_choices(devices, default_output())
        self.form.set_speech_choices(voices, choices, why)
        self.voice_box.setCurrentIndex(
            self.voice_box.findData(speech.initial_voice(saved("speech/voice"), voices))
        )
        self.speech_device_box.setCurrentIndex(speech.initial_device(saved("speech/device"), choices))
        volume = (
            speech.DEFAULT_VOLUME
            if self.smoke
            else self._saved_number("speech/volume", speech.DEFAULT_VOLUME, int, 0, 100)
        )
        self.volume_slider.setValue(volume)
        self.volume_label.setText(f"{self.volume_slider.value()}%")
        on = not self.smoke and self.settings.value("speech/on", False, bool)
        self.speak_check.setChecked(on and not self.form.why_no_speech)
        for signal in (
            self.speak_check.toggled,
            self.voice_box.currentIndexChanged,
            self.speech_device_box.currentIndexChanged,
            self.volume_slider.valueChanged,
        ):
            signal.connect(self._speech_changed)

    @Slot()
    def _speech_changed(self, *_) -> None:
        """Remembered at once (a smoke check leaves the user's choices alone); the volume heard now."""
        if self.worker is not None:
            self.worker.set_volume(self.volume_slider.value() / 100)
        if self.smoke:
            return
        self.settings.setValue("speech/on", self.speak_check.isChecked())
        self.settings.setValue("speech/voice", self.voice_box.currentData() or "")
        self.settings.setValue("speech/device", self.speech_device_box.currentText())
        self.settings.setValue("speech/volume", self.volume_slider.value())

    def _saved_number(self, key: str, default: float, kind: type, low: float, high: float) -> float:
        """A remembered number, or `default` when the settings file holds something else there (edited
        by hand, or written by another version): a bad value never keeps the app from starting, and a
        volume of 'loud' is not read as 0."""
        try:
            value = kind(self.settings.value(key, default))
        except (TypeError, ValueError):
            return default
        return value if low <= value <= high else default

    def _overlay_style(self) -> OverlayStyle:
        position = self.settings.value("overlay/position", "bottom", str)
        scale = self._saved_number("overlay/font_scale", 1.0, float, 0.0, float("inf"))
        try:
            return OverlayStyle(position=position, font_scale=scale)
        except ValueError:
            return OverlayStyle()

    def record_folder(self) -> Path:
        return self.form.record_folder()

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
            record_to, problem = self.form.recording_path(source)
            if problem:
                problems.append(problem)
        speech_request, problem = self.form.speech_request()
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
        self._question_refused("")
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
            speech=speech_request,
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
        self.worker.download.connect(self.on_download)
        self.worker.link.connect(self.on_link)
        self.worker.failed.connect(self.on_failed)
        self.worker.speech.connect(self.on_speech)
        self.worker.question_refused.connect(self._question_refused)
        self.worker.finished.connect(self.on_finished)
        self._show_state()
        collector.watch(self.thread)  # garbage collected in this thread only while the run goes on
        self.thread.start()

    @Slot()
    def ask(self) -> None:
        """Ask the typed question (Ask, or Enter in the box) of the run streaming now: logged as asked and
        the box emptied, or, refused, the reason under the box (the text kept to be shortened)."""
        text = self.question_edit.text()
        if self.worker is None or not self.run.live or not text.strip():
            return
        try:
            self.worker.ask(text)
        except (StreamVLMError, ValueError, RuntimeError) as exc:  # one line each (see StreamWorker.ask)
            self._question_refused(ErrorReport.from_text(str(exc)).summary)
            return
        self._question_refused("")
        self.question_edit.clear()
        self._log(self.runlog.asked(text, self.frame.t if self.frame is not None else None), "question")

    def _question_refused(self, sentence: str) -> None:
        self.question_note.setText(sentence)
        self.question_note.setVisible(bool(sentence))

    def _log(self, text: str, kind: str | None = None) -> None:
        """One line in the log: commentary as it is, a question or an answer in its style."""
        style = _LOG_STYLES.get(kind, "")
        self.log.appendHtml(f'<span style="{style}">{html.escape(text)}</span>')

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
            if writer.stopped:  # a live run's writer goes on without its file; an export has failed
                raise StreamVLMError(writer.stopped.replace("subtitles stopped: ", "export failed: "))
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

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if dropped_file(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802
        path = dropped_file(event.mimeData())
        if path:
            self.use_source(path)
            event.acceptProposedAction()

    # -- help ------------------------------------------------------------------------------------------

    def shortcuts(self) -> list[tuple[str, str]]:
        """(key, what it does) for every menu action with a key, and the view's own keys."""
        return help_texts.shortcuts(self._actions)

    def show_shortcuts(self) -> None:
        self._open_box("Keyboard shortcuts", help_texts.shortcuts_html(self.shortcuts()))

    def about_text(self) -> str:
        return help_texts.about_html()

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
        self._log(self.runlog.add(line), "answer" if line.is_answer else None)
        self._paint()

    @Slot(object)
    def on_report(self, report) -> None:
        frames = self.worker.frames_in if self.worker is not None else self.runlog.frames
        self.runlog.chunk(latency=report.latency, skipped=report.skipped, frames=frames, now=time.monotonic())
        self.device_label.setText(_device_line())
        self._show_figures()

    @Slot(object)
    def on_speech(self, stats) -> None:
        self.runlog.speech = stats
        self._show_figures()

    @Slot(object, str)
    def on_phase(self, phase: Phase, detail: str) -> None:
        if self.run.progress(phase, detail):
            self._show_state()

    @Slot(object)
    def on_download(self, event) -> None:
        if self.run.downloaded(event):
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
        thread, worker, self.thread, self.worker = self.thread, self.worker, None, None
        if thread is not None:
            let_finish(thread, worker)
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
        self.form.recording_to = self.request.record_to if run.running and self.request else None
        self.form.update_record_rows()
        self.form.running = run.running
        self.form.update_speech_rows()
        self.errors.show_error(run.error)
        self._show_question_row()
        self.download_panel.show_progress(run.download if run.phase is Phase.DOWNLOADING else None)
        if run.phase is Phase.FAILED:
            self.view.hint = FAILED_HINT
        elif run.running and not run.live:
            self.view.hint = WAITING_HINT.format(state=run.label())
        else:
            self.view.hint = VIDEO_HINT
        self.view.update()
        self._show_figures()

    @Slot()
    def _show_question_row(self, *_) -> None:
        """The question box is open while a run streams (local or remote); Ask once there is a question."""
        streaming = self.run.live and self.worker is not None
        self.question_edit.setEnabled(streaming)
        self.ask_button.setEnabled(streaming and bool(self.question_edit.text().strip()))

    def _show_figures(self) -> None:
        """Live figures in the normal colour; those of a run that is over (or not streaming) greyed."""
        figures = self.runlog.figures(self.run.live)
        self.rate_label.setText(figures.rates)
        self.latency_label.setText(figures.latency)
        self.speech_label.setText(figures.speech)
        self.speech_label.setVisible(bool(figures.speech))
        for label in (self.rate_label, self.latency_label, self.speech_label, self.device_label):
            label.setEnabled(figures.live)
            over = "" if figures.live else "the last figures of a run that is not streaming now"
            about = speech.SPEECH_TIP if label is self.speech_label else ""
            label.setToolTip("\n\n".join(filter(None, [about, over])))

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self.worker is not None:
            self.run.stop()
            self.worker.stop()
        if self.thread is not None:  # a model still loading ends by itself, held by app.lingering
            thread, worker, self.thread, self.worker = self.thread, self.worker, None, None
            let_finish(thread, worker)
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
            rgb = scaled_rgb(rgb, size)
        if self.overlay_visible:
            rgb = self.overlay.draw(rgb, self.paint_time())
        self.view.set_picture(rgb)


def _device_line() -> str:
    import psutil
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.memory_allocated() / 2**30:.1f} GiB"
    return f"CPU, {psutil.Process().memory_info().rss / 2**30:.1f} GiB"
