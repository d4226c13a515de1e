"""The run form: what to run (source, model, token, instruction, context), where to record it (a
folder, picked or the platform's Movies folder, with the file name shown before Start) and with
which sound, whether and how the commentary is spoken (Speak, the voice, the output device and its
volume), the overlay's style, and the Start / Stop / Export buttons. Every row is labelled.

The window owns the run; this form owns its rows' rules: sound only with a recording, the note
under the record row, the default folder made at Start, the voices and outputs offered (one that
cannot be used is greyed with the reason; no output at all switches Speak off with a note), and
what a Start speaks with (`speech_request`, checked first).
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, QTimer, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QWidget,
)

from app import speech
from app.run_state import recording_name
from app.state import is_server_url
from core.errors import StreamVLMError
from core.paths import check_outputs, folder_problem, recording_outputs, source_file


def default_record_folder() -> Path:
    """The platform's Movies/Videos folder (Qt's standard paths); created at Start if it is missing."""
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.MoviesLocation)
    return Path(location) if location else Path.home()


def display_path(path: Path) -> str:
    """A path as people write it: '~/Videos' for a folder under the home folder."""
    home = Path.home()
    return (
        "~" + os.sep + str(path.relative_to(home))
        if path.is_relative_to(home) and path != home
        else str(path)
    )


class RunForm(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.source_box = QComboBox(editable=True)
        self.source_box.setToolTip(
            "the demo clip, a video file, camera:N, screen:N or screen:N@x,y,w,h, or a stream URL"
        )
        self.browse_button = QPushButton("File…")
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
        self.record_check.toggled.connect(self.update_record_rows)
        self.output_edit.textChanged.connect(self.update_record_rows)
        self._name_timer = QTimer(
            self, interval=1000, timeout=self.update_record_rows
        )  # the name has seconds
        self.recording_to: str | None = None  # the file being recorded now, set by the window

        self.audio_check = QCheckBox("from")
        self.audio_box = QComboBox()
        self.audio_note = QLabel("")
        self.audio_note.setWordWrap(True)
        self.audio_note.setStyleSheet("color: gray;")
        self.why_no_sound: str | None = None
        audio_row = QHBoxLayout()
        audio_row.addWidget(self.audio_check)
        audio_row.addWidget(self.audio_box, 1)

        self.speak_check = QCheckBox("Speak")
        self.speak_check.setToolTip(
            "speak the commentary as it comes (a recording carries the speech as its sound); "
            "the voice and output are used from the next Start"
        )
        self.voice_box = QComboBox()
        self.speech_device_box = QComboBox()
        self.speech_device_box.setToolTip("the sound output the commentary is spoken on")
        self.volume_slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100)
        self.volume_slider.setToolTip("the volume of the speech on this output (changes at once)")
        self.volume_label = QLabel("")
        self.volume_label.setMinimumWidth(self.volume_label.fontMetrics().horizontalAdvance("100%"))
        self.volume_slider.valueChanged.connect(lambda v: self.volume_label.setText(f"{v}%"))
        self.speech_note = QLabel("")
        self.speech_note.setWordWrap(True)
        self.speech_note.setStyleSheet("color: gray;")
        self.why_no_speech: str | None = None
        self.running = False  # a run is going (set by the window): Speak, voice and output wait for Start
        self.speak_check.toggled.connect(self.update_speech_rows)
        speak_row = QHBoxLayout()
        speak_row.addWidget(self.speak_check)
        speak_row.addWidget(self.voice_box, 1)
        output_row = QHBoxLayout()  # the output's name gets most of the row: it is what must be read
        output_row.addWidget(self.speech_device_box, 3)
        output_row.addWidget(self.volume_slider, 2)
        output_row.addWidget(self.volume_label)

        self.position_box = QComboBox()
        self.position_box.addItems(["bottom", "top"])
        self.font_spin = QDoubleSpinBox(minimum=0.5, maximum=3.0, singleStep=0.1, decimals=1)
        style_row = QHBoxLayout()
        style_row.addWidget(self.position_box)
        style_row.addWidget(QLabel("text size"))
        style_row.addWidget(self.font_spin)
        style_row.addStretch(1)

        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("save the commentary as SRT, WebVTT or JSON lines")
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.export_button)

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Source", source_row)
        form.addRow("Model", self.model_edit)
        form.addRow("Token", self.token_edit)
        form.addRow("Instruction", self.instruction_edit)
        form.addRow("Previous text", self.previous_edit)
        form.addRow("Record", record_row)
        form.addRow("", self.record_note)
        form.addRow("Sound", audio_row)
        form.addRow("", self.audio_note)
        form.addRow("Speech", speak_row)
        form.addRow("Speech output", output_row)
        form.addRow("", self.speech_note)
        form.addRow("Overlay", style_row)
        form.addRow("Run", buttons)
        self._model_changed("")

    @Slot(str)
    def _model_changed(self, text: str) -> None:
        """The token matters only for a server; a local model has none."""
        self.token_edit.setEnabled(is_server_url(text.strip()))

    def set_sound_devices(self, devices, why_none: str | None) -> None:
        """The input devices (core.media.audio.input_devices), or why there are none."""
        for device in devices:
            self.audio_box.addItem(f"{device.name} ({device.channels} ch)", device.index)
        self.why_no_sound = why_none
        if why_none:
            for widget in (self.audio_check, self.audio_box):
                widget.setToolTip(why_none)
            self.audio_note.setText(f"Sound recording is off: {why_none}.")
        self.update_record_rows()

    # -- speech ----------------------------------------------------------------------------------------

    def set_speech_choices(
        self,
        voices: list[speech.VoiceChoice],
        devices: list[tuple[str, int | None]],
        why_no_device: str | None,
    ) -> None:
        """The voices (one that cannot speak here greyed, its reason as its tooltip) and the outputs
        (`speech.device_choices`), or why there is none: then Speak is off and the note says why."""
        model = self.voice_box.model()
        for row, voice in enumerate(voices):
            self.voice_box.addItem(
                voice.label + ("" if voice.problem is None else " (not installed)"), voice.name
            )
            self.voice_box.setItemData(row, voice.problem or voice.about, Qt.ItemDataRole.ToolTipRole)
            model.item(row).setEnabled(voice.problem is None)
        for label, index in devices:
            self.speech_device_box.addItem(label, index)
        self.why_no_speech = None if devices else (why_no_device or "no sound output device was found")
        if self.why_no_speech:
            self.speak_check.setChecked(False)
            self.speech_note.setText(f"Speech is off: {self.why_no_speech}.")
        self.update_speech_rows()

    @Slot()
    def update_speech_rows(self, *_) -> None:
        """Speak can be switched on only where an output exists; the voice and the output are chosen
        for a Start (fixed while a run goes), the volume at any time."""
        running = self.running
        self.speak_check.setEnabled(not self.why_no_speech and not running)
        on = self.speak_check.isChecked()
        for widget in (self.voice_box, self.speech_device_box):
            widget.setEnabled(on and not running)
        for widget in (self.volume_slider, self.volume_label):
            widget.setEnabled(on)
        self.speech_note.setVisible(bool(self.why_no_speech))

    def speech_request(self) -> tuple[speech.SpeechRequest | None, str | None]:
        """At Start: (what to speak with, None), (None, None) with Speak off, or (None, why it cannot)."""
        if not self.speak_check.isChecked():
            return None, None
        from core.speech.output import default_output

        voice, device = self.voice_box.currentData(), self.speech_device_box.currentData()
        problem = speech.speech_problem(voice, device, default_output())
        if problem:
            return None, problem
        request = speech.SpeechRequest(
            voice, device, self.speech_device_box.currentText(), self.volume_slider.value() / 100
        )
        return request, None

    # -- recording -------------------------------------------------------------------------------------

    def record_folder(self) -> Path | None:
        """The folder typed for recordings, or None when it names none (see `record_folder_problem`)."""
        text = self.output_edit.text().strip()
        try:
            folder = Path(text).expanduser()
        except RuntimeError:  # '~someone' with no such user
            return None
        return folder if text and folder.is_absolute() else None

    def record_folder_problem(self) -> str | None:
        """Why the typed folder cannot take recordings (a phrase), or None."""
        text = self.output_edit.text().strip()
        folder = self.record_folder()
        if not text:
            return "choose a folder to record into"
        if folder is None:
            # '~name' of no user, or a relative path: it would depend on where the app was started
            return (
                f"'{text}' is not a folder's full path; choose the folder with its button or type it in full"
            )
        if folder == default_record_folder() and not folder.exists():
            return None  # made at Start
        return folder_problem(folder)

    @Slot()
    def update_record_rows(self, *_) -> None:
        """Sound only with a recording (and a note on why there is none only then); under the record
        row, the file a Start would write, or the one being written."""
        on = self.record_check.isChecked()
        sound = on and not self.why_no_sound
        self.audio_check.setEnabled(sound)
        self.audio_box.setEnabled(sound)
        self.audio_note.setVisible(on and bool(self.why_no_sound))
        if self.recording_to:
            note = f"Recording to {display_path(Path(self.recording_to))}"
        elif on:
            folder = self.record_folder()
            name = recording_name()
            if problem := self.record_folder_problem():
                note = problem[0].upper() + problem[1:] + "."
            elif folder == default_record_folder() and not folder.exists():
                note = f"Saves {name} and its .srt here (the folder is created at Start)."
            else:
                note = f"Saves {name} and its .srt here."
        else:
            note = ""
        self.record_note.setText(note)
        self.record_note.setVisible(bool(note))
        if on and not self.recording_to:
            self._name_timer.start()
        else:
            self._name_timer.stop()

    def _choose_folder(self) -> None:
        start = self.record_folder() or default_record_folder()
        folder = QFileDialog.getExistingDirectory(self, "Record into", str(start))
        if folder:
            self.output_edit.setText(display_path(Path(folder)))
            self.record_check.setChecked(True)

    def recording_path(self, source: str) -> tuple[str | None, str | None]:
        """At Start: (the recording's path, None), or (None, why it cannot record). The default folder
        is made if it is missing; another missing folder is refused (a typo is not created)."""
        problem = self.record_folder_problem()
        if problem:
            return None, f"cannot record: {problem}"
        folder = self.record_folder()
        if folder == default_record_folder() and not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                return None, f"cannot create the folder '{folder}' ({exc.strerror}); choose another"
        path = str(folder / recording_name(folder))
        try:  # a recording never overwrites the video it records (e.g. replaying an earlier one)
            check_outputs(recording_outputs(path), {"the source": source_file(source)})
        except StreamVLMError as exc:
            return None, str(exc)
        return path, None
