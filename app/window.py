"""The main window: source and model choice, the live view with commentary overlays, the log.

Widgets are touched only here, in the GUI thread; the `StreamWorker` (app/worker.py) reports
through signals. The overlay is `core.media.overlay.Overlay`, the same renderer the recorder burns in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings, Qt, QThread, Slot
from PySide6.QtGui import QImage, QKeySequence, QPixmap, QShortcut
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

from app.state import RunRequest, is_server_url
from app.worker import StreamWorker
from core.config import EngineConfig
from core.errors import StreamVLMError
from core.media.overlay import Overlay, OverlayStyle
from core.paths import check_outputs, folder_problem, recording_outputs, source_file
from core.types import Commentary, Frame

TITLE = "streamvlm: live commentary"
SMOKE_TITLE = " [SMOKE MODE: tiny random model, the commentary is gibberish]"


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
        """`config`: the engine settings of every run (the app's --config file), defaults otherwise."""
        super().__init__()
        self.config = config or EngineConfig()
        self.settings = settings or QSettings("streamvlm", "streamvlm")
        self.smoke = smoke or model == "tiny"
        self.setWindowTitle(TITLE + (SMOKE_TITLE if self.smoke else ""))
        self.overlay = Overlay(self._overlay_style())
        self.overlay_visible = True
        self.worker: StreamWorker | None = None
        self.thread: QThread | None = None
        self.error_box: QMessageBox | None = None
        self.frame: Frame | None = None
        self.chunks_done = 0
        self.started_at = 0.0
        self.frames_at_start = 0
        self.lines: list[Commentary] = []  # this session's commentary, for export
        self.request: RunRequest | None = None  # what the session of `lines` read and wrote
        self._build()
        self._restore(model=model, source=source)

    # -- layout --------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.source_box = QComboBox(editable=True)
        self.source_box.setToolTip("a file, camera:N, screen:N or screen:N@x,y,w,h, or a stream URL")
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
        self.record_check = QCheckBox("Record to")
        self.output_edit = QLineEdit()
        record_row = QHBoxLayout()
        record_row.addWidget(self.record_check)
        record_row.addWidget(self.output_edit, 1)
        self.audio_check = QCheckBox("with sound from")
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
        style_row.addWidget(QLabel("Overlay"))
        style_row.addWidget(self.position_box)
        style_row.addWidget(QLabel("size"))
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
        form.addRow("", record_row)
        form.addRow("", audio_row)
        form.addRow("", self.audio_note)
        form.addRow("", style_row)
        form.addRow("", buttons)

        self.view = QLabel("no video")
        self.view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.view.setMinimumSize(480, 270)
        self.view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.view.setStyleSheet("background: black; color: gray;")
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(5000)
        self.message = QLabel("")
        self.message.setStyleSheet("color: #c00000;")
        self.message.setWordWrap(True)

        controls = QWidget()
        side = QVBoxLayout(controls)
        side.addLayout(form)
        side.addWidget(self.message)
        side.addWidget(QLabel("Commentary"))
        side.addWidget(self.log, 1)
        splitter = QSplitter()
        splitter.addWidget(self.view)
        splitter.addWidget(controls)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.setCentralWidget(splitter)

        self.state_label = QLabel("idle")
        self.rate_label = QLabel("")
        self.latency_label = QLabel("")
        self.device_label = QLabel("")
        for label in (self.state_label, self.rate_label, self.latency_label, self.device_label):
            self.statusBar().addWidget(label, 1 if label is self.state_label else 0)

        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.toggle_run)
        QShortcut(QKeySequence("Ctrl+R"), self, activated=self.record_check.toggle)
        QShortcut(QKeySequence("Ctrl+O"), self, activated=self.toggle_overlay)
        self.resize(1200, 620)

    def _restore(self, *, model: str | None, source: str | None) -> None:
        from core.media.sources import list_cameras, list_monitors

        choices = [f"screen:{m.index}" for m in list_monitors()] + [
            f"camera:{c.index}" for c in list_cameras()
        ]
        last = self.settings.value("source", "", str)
        self.source_box.addItems([c for c in choices if c != last])
        self.source_box.setCurrentText(source or last or (choices[0] if choices else ""))
        self.model_edit.setText(model or self.settings.value("model", "", str))
        self._model_changed(self.model_edit.text())
        self.output_edit.setText(self.settings.value("output_folder", str(Path.home() / "Videos"), str))
        from core.media.audio import input_devices

        devices, why_none = input_devices(rescan=self.thread is None)
        for device in devices:
            self.audio_box.addItem(f"{device.name} ({device.channels} ch)", device.index)
        if why_none:
            # No sound input: recording works without sound, and the option says why it is off.
            for widget in (self.audio_check, self.audio_box):
                widget.setEnabled(False)
                widget.setToolTip(why_none)
            self.audio_note.setText(f"Sound recording is off: {why_none}.")
        style = self.overlay.style
        self.position_box.setCurrentText(style.position)
        self.font_spin.setValue(style.font_scale)

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

    # -- actions ---------------------------------------------------------------------------------------

    @Slot()
    def start(self) -> None:
        if self.thread is not None:
            return
        source = self.source_box.currentText().strip()
        model = self.model_edit.text().strip()
        problems = []
        if not source:
            problems.append("choose a source: a file, a camera, a screen or a stream URL")
        if not model:
            problems.append("choose a model: a checkpoint folder, a hub id, tiny, or a server's ws:// URL")
        record_to = None
        if self.record_check.isChecked():
            folder = Path(self.output_edit.text().strip()).expanduser()
            problem = folder_problem(folder)
            if problem:
                problems.append(f"cannot record: {problem}")
            else:
                record_to = str(folder / time.strftime("streamvlm-%Y%m%d-%H%M%S.mp4"))
                try:  # a recording never overwrites the video it records (e.g. replaying an earlier one)
                    check_outputs(recording_outputs(record_to), {"the source": source_file(source)})
                except StreamVLMError as exc:
                    problems.append(str(exc))
        if problems:
            self.show_message("; ".join(problems))
            return
        self.settings.setValue("source", source)
        self.settings.setValue("model", model)
        self.settings.setValue("output_folder", self.output_edit.text().strip())
        self.show_message("")
        self.log.clear()
        self.lines.clear()
        self.overlay = Overlay(self._overlay_style())
        self.chunks_done, self.started_at = 0, time.monotonic()
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
        self.worker = StreamWorker(request)
        self.thread = QThread(self)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.frame.connect(self.on_frame)
        self.worker.commentary.connect(self.on_commentary)
        self.worker.report.connect(self.on_report)
        self.worker.status.connect(self.state_label.setText)
        self.worker.failed.connect(self.on_failed)
        self.worker.finished.connect(self.on_finished)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.state_label.setText("starting")
        self.thread.start()

    @Slot()
    def stop(self) -> None:
        if self.worker is not None:
            self.state_label.setText("stopping")
            self.worker.stop()

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
                self.show_message(f"exported {self.export(path)} lines to {path}")
            except (ValueError, StreamVLMError) as exc:
                self.show_message(str(exc))

    @Slot()
    def toggle_overlay(self) -> None:
        self.overlay_visible = not self.overlay_visible
        self._paint()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a video", "", "Videos (*.mp4 *.mkv *.mov *.ts *.avi);;All files (*)"
        )
        if path:
            self.source_box.setCurrentText(path)

    def show_message(self, text: str) -> None:
        self.message.setText(text)

    # -- worker signals (GUI thread) -------------------------------------------------------------------

    @Slot(object)
    def on_frame(self, frame: Frame) -> None:
        self.frame = frame
        self._paint()

    @Slot(object)
    def on_commentary(self, line: Commentary) -> None:
        self.lines.append(line)
        self.overlay.add(line)
        self.log.appendPlainText(f"[{_clock(line.start)} - {_clock(line.end)}] {line.text}")
        self._paint()

    @Slot(object)
    def on_report(self, report) -> None:
        self.chunks_done += 1
        frames = self.worker.frames_in if self.worker is not None else 0
        if self.chunks_done == 1:  # rates count from the first chunk, not from model loading
            self.started_at, self.frames_at_start = time.monotonic(), frames
        elapsed = time.monotonic() - self.started_at
        rates = "measuring"
        if elapsed >= 1.0:
            rates = (
                f"in {(frames - self.frames_at_start) / elapsed:.1f} FPS, "
                f"{(self.chunks_done - 1) / elapsed:.2f} chunks/s"
            )
        self.rate_label.setText(f"{rates}, {report.skipped} skipped")
        self.latency_label.setText(f"latency {report.latency:.2f} s")
        self.device_label.setText(_device_line())

    @Slot(str)
    def on_failed(self, reason: str) -> None:
        self.show_message(reason)
        self.error_box = QMessageBox(QMessageBox.Icon.Critical, "streamvlm", reason, parent=self)
        self.error_box.setModal(False)
        self.error_box.show()

    @Slot()
    def on_finished(self) -> None:
        thread, self.thread, self.worker = self.thread, None, None
        if thread is not None:
            thread.quit()
            thread.wait(2000)
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.state_label.text() not in ("idle",):
            self.state_label.setText("stopped")

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self.worker is not None:
            self.worker.stop()
        if self.thread is not None:
            self.thread.quit()
            self.thread.wait(2000)
        super().closeEvent(event)

    # -- painting --------------------------------------------------------------------------------------

    def _paint(self) -> None:
        if self.frame is None:
            return
        rgb = self.overlay.draw(self.frame.rgb, self.frame.t) if self.overlay_visible else self.frame.rgb
        rgb = np.ascontiguousarray(rgb)
        image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.strides[0], QImage.Format.Format_RGB888)
        pixmap = QPixmap.fromImage(image.copy())  # copy: the array may go away
        self.view.setPixmap(
            pixmap.scaled(
                self.view.size(),
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        )


def _device_line() -> str:
    import psutil
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.memory_allocated() / 2**30:.1f} GiB"
    return f"CPU, {psutil.Process().memory_info().rss / 2**30:.1f} GiB"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:04.1f}"
