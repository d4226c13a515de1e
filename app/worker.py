"""The stream worker: model, source, pipeline and recorder, in a thread of their own.

`StreamWorker` lives in a `QThread`. Its `run` loads the model (once per model settings; kept for
the next run, until a run loads another), builds the engine from the request's config
(`core.loading.open_engine`), opens the source, and runs `core.pipeline.Pipeline` paced like a live
feed; everything it learns goes to the window through signals, never by touching widgets: its
progress as `app.run_state.Phase`s, a download's progress, a live source's or server's drops and
returns (`link`), a failure's sentence and details. `stop` may be
called from the GUI thread at any time: it stops the pipeline, which closes the source and returns
after the chunk in progress.

A hub model not complete in the Hugging Face cache is downloaded first (`core.loading.model_folder`),
its progress sent as `download` events. The download runs in a thread of its own that Stop does not
wait for: huggingface_hub reads 10 MB at a time and a cancel takes effect between two reads, which
on a slow or stalled line may be many seconds away, so Stop ends the run at once and that thread
ends at its next read, keeping the bytes on disk (a later Start resumes from them, after it).

With speech on (`RunRequest.speech`) the voice is opened first (the neural voice's weights are
downloaded the same way, with the same progress events), then its sound device: a voice or a device
that cannot speak fails the run before the model loads. The speaker is one more sink of the pipeline
on the pipeline's clock, and writes the recording's audio track; its counters and lag go to the
window after every chunk (`speech`). Stop cuts the line being spoken; a source that ends lets it finish.

A question typed in the window is handed to the pipeline at once (`ask`, from the GUI thread: the
pipeline's `ask` is thread-safe and only queues it); the next chunk asks it, and the answer comes back
as a line of commentary marked as an answer.
"""

from __future__ import annotations

import threading
import time
import traceback

from PySide6.QtCore import QObject, Signal

from app import collector
from app.run_state import Phase
from app.state import RunRequest
from core.errors import StreamVLMError
from core.types import Frame


class RunFailure(StreamVLMError):
    """A failure the worker words for the window itself: its sentence, and what core said as details."""

    def __init__(self, sentence: str, details: str) -> None:
        super().__init__(sentence)
        self.details = details


FRAME_INTERVAL = 1 / 15  # the view is refreshed at most 15 times a second; it shows the newest frame
# While the model compiles in the background (core/warmup.py) the status says the engine runs eagerly.
WARMING = ", eager until the GPU code is compiled"


class StreamWorker(QObject):
    frame = Signal(object)  # core.types.Frame, the newest captured picture
    commentary = Signal(object)  # core.types.Commentary
    report = Signal(object)  # core.media.realtime.ChunkReport
    phase = Signal(object, str)  # app.run_state.Phase the run moved to, and what it is about
    download = Signal(object)  # core.download.DownloadProgress of the model's download
    link = Signal(bool, str)  # a live source or the server: connected again (True) or reconnecting
    failed = Signal(str, str)  # a user-facing reason, and details; the run is over
    speech = Signal(object)  # core.speech.speaker.SpeechStats: how speech keeps up (with speech on)
    question_refused = Signal(str)  # one sentence: a remote server refused a question (the run goes on)
    finished = Signal()

    # core.config.ModelConfig -> StreamModel: the last model loaded, kept for the next run of the same
    # model settings; one only, as a GPU may not hold two.
    _models: dict[object, object] = {}

    def __init__(self, request: RunRequest) -> None:
        super().__init__()
        self.request = request
        self._pipeline = None  # core.pipeline.Pipeline, once built
        self.engine = None  # the local engine of this run, once built (core.engine.StreamingEngine)
        self._remote = None  # a RemoteSession, closed by `stop` so a reconnection does not hold it up
        self._stopped = threading.Event()
        self._last_frame = 0.0
        self.frames_in = 0  # frames captured (the status bar's input rate)
        self.recorder = None
        self.audio = None
        self.speaker = None  # core.speech.speaker.Speaker, with speech on
        self._sound = None  # its core.speech.output.DeviceOutput (the volume is set on it)
        self._clock_offset: float | None = None  # monotonic time - stream time, from the first frame

    def run(self) -> None:
        try:
            self._run()
        except StreamVLMError as exc:
            if not self._stopped.is_set():  # a remote session closed by Stop ends with an error too
                details = getattr(exc, "details", "")
                self.failed.emit(str(exc), "\n\n".join(filter(None, [details, self._context()])))
        except Exception as exc:  # anything else is a bug, but the window must stay usable
            self.failed.emit(
                f"Unexpected error ({type(exc).__name__}: {exc}); please report it with the details.",
                f"{self._context()}\n\n{traceback.format_exc()}",
            )
        finally:
            self._close_speaker(finish=False)  # a failure or a Stop: cut the line being spoken
            if self.audio is not None:
                self.audio.close()
            if self.recorder is not None:
                self.recorder.close()
            self.finished.emit()

    def stop(self) -> None:
        self._stopped.set()
        sound = self._sound
        if sound is not None:
            sound.clear()  # silent at once; the speaker closes once the chunk in progress is done
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.stop()
        if self._remote is not None:
            self._remote.close()

    def ask(self, text: str) -> None:
        """Ask the stream's session a question now (GUI thread): `Pipeline.ask` is safe from any thread,
        and queues the question for the next chunk, so the window never waits for the model. Its answer
        comes back through `commentary` like any line, marked as an answer. Raises (one line) for a
        question the session refuses (core's QuestionError: empty, too long; a remote session's
        ValueError), a session already closed (RuntimeError), or a run not streaming yet."""
        pipeline = self._pipeline
        if pipeline is None or self._stopped.is_set():
            raise StreamVLMError("the stream is not running; ask once it streams")
        pipeline.ask(text)

    def set_volume(self, volume: float) -> None:
        """The sound device's level, 0..1, now (GUI thread; the device reads it at every block)."""
        sound = self._sound
        if sound is not None:
            sound.volume = volume

    def _run(self) -> None:
        from core.loading import open_engine
        from core.media.sources import FileSource, open_source
        from core.pipeline import Pipeline, open_recording
        from core.speech.clock import StreamClock

        request = self.request
        stream = request.config.stream
        source = open_source(request.source, stream.fps, realtime=True, on_state=self._on_state)
        try:
            voice = None
            if request.speech:
                voice = self._voice()
                if self._stopped.is_set():
                    return
                self._device_opens()  # before the model: a wrong output is said in a moment, not after it
            model = None if request.remote else self._model()
            if self._stopped.is_set():
                return
            if request.record_to:
                with_audio = request.audio_device is not None
                self.recorder = open_recording(
                    request.record_to,
                    source,
                    stream,
                    audio_rate=48_000 if with_audio else None,
                    speech=voice is not None,  # the speech is the audio track, or mixed into the sound
                )
                if with_audio:
                    from core.media.audio import AudioCapture

                    self.audio = AudioCapture(request.audio_device, self._on_audio)
                    self.audio.start()
            if model is None:
                session = self._remote_session()
                where = f"on {request.model}"
            else:
                self.phase.emit(Phase.PREPARING, str(model.device))
                self.engine = open_engine(request.engine_config, model)
                session = self.engine.start(
                    instruction=request.instruction or None, previous_text=request.previous_text
                )
                where = f"on {model.device}"
            clock = StreamClock()  # the pipeline's: the speaker places each line on it
            if voice is not None:
                self._open_speaker(voice, clock)
            self._pipeline = Pipeline(
                source,
                session,
                stream,
                live=True,  # the app always paces a file like a live feed
                budget=request.latency_budget,
                recorder=self.recorder,
                sinks=(self.commentary.emit, *([self.speaker.say] if self.speaker else [])),
                on_frame=self._on_frame,
                clock=clock,
            )
            if self._stopped.is_set():
                return
            kind = "a file" if isinstance(source, FileSource) else "live"
            warming = model is not None and model.warming
            self.phase.emit(Phase.STREAMING, f"({kind}) {where}" + (WARMING if warming else ""))
            with session, self._pipeline:
                refused = getattr(session, "refused", None)  # a remote session's refused questions
                for report in self._pipeline.run():
                    self.report.emit(report)
                    if warming and not model.warming:  # switched to the compiled modules
                        warming = False
                        self.phase.emit(Phase.STREAMING, f"({kind}) {where}")
                    while refused:
                        question, reason = refused.pop(0)
                        self.question_refused.emit(f"The server refused the question: {reason}")
                    if self.speaker is not None:
                        self.speech.emit(self.speaker.stats())
            if not self._stopped.is_set():
                self._close_speaker(finish=True)  # the source ended: the last line is heard to its end
        finally:
            source.close()

    def _voice(self):
        """The request's voice, ready to speak: the neural one's weights are read (downloaded first
        where the cache lacks them, with progress) in a thread Stop does not wait for. None if stopped."""
        from core.speech.voices import open_voice

        name = self.request.speech.voice
        if name != "espeak":  # a voice with weights: the status says they are being read
            self.phase.emit(Phase.LOADING_MODEL, f"the {name} voice")
        return self._unless_stopped(
            lambda: open_voice(name, progress=self._on_download, cancel=self._stopped), "voice-download"
        )

    def _device_opens(self) -> None:
        """The chosen output opens (closed again at once: the speaker opens it when the stream is
        ready), or the run fails naming it."""
        from core.speech.output import DeviceOutput

        self._on_device(lambda: DeviceOutput(self.request.speech.device).close())

    def _open_speaker(self, voice, clock) -> None:
        """The speaker on the chosen output at the chosen volume, writing the recording's audio."""
        from core.pipeline import open_speaker
        from core.speech.output import DeviceOutput

        speech = self.request.speech
        self.speaker = self._on_device(
            lambda: open_speaker(voice, clock, device=speech.device, recorder=self.recorder)
        )
        self._sound = next(o for o in self.speaker.outputs if isinstance(o, DeviceOutput))
        self._sound.volume = speech.volume
        self.speech.emit(self.speaker.stats())

    def _on_device(self, open_output):
        """`open_output()`; an output that does not open fails the run with its name from the list (the
        person chose a name, not PortAudio's index), and core's reason in the details."""
        from app.speech import device_failure

        try:
            return open_output()
        except StreamVLMError as exc:
            raise RunFailure(device_failure(self.request.speech.device_name), str(exc)) from None

    def _close_speaker(self, *, finish: bool) -> None:
        """Close the speaker (once) and send its last counters. `finish`: let the lines to speak end."""
        speaker, self.speaker = self.speaker, None
        if speaker is None:
            return
        try:
            speaker.close(finish=finish)  # raises, with `finish`, what stopped the voice
        finally:
            self._sound = None
            self.speech.emit(speaker.stats())

    def _model(self):
        """The request's model: the one kept from the last run if its settings are the same, else
        downloaded if need be and loaded (the kept one let go first). None if stopped meanwhile."""
        from core.loading import loaded_model_key, model_from_config

        config = self.request.engine_config
        key = loaded_model_key(config)  # the same model is kept across runs
        if key not in self._models:
            self.phase.emit(Phase.LOADING_MODEL, self.request.model)
            if not self._find_model(self.request.model):
                return None
            self.phase.emit(Phase.LOADING_MODEL, self.request.model)  # after a download: reading it
            self._release_models()
            # The folder is complete now (a hub id's snapshot is found in the cache without the hub).
            self._models[key] = model_from_config(config)
        return self._models[key]

    def _find_model(self, name: str) -> bool:
        """Make `name`'s checkpoint folder exist: a hub id not complete in the cache is downloaded, in a
        thread Stop does not wait for (see the module's docstring); a folder or 'tiny' is there at
        once. False if stopped first."""
        from core.loading import model_folder

        found = self._unless_stopped(
            lambda: model_folder(name, progress=self._on_download, cancel=self._stopped), "model-download"
        )
        return found is not None

    def _unless_stopped(self, work, name: str):
        """`work()`'s result, run in a thread Stop does not wait for (a download ends at its next
        read); None if stopped first. What it raises is raised here, unless stopped."""
        done = threading.Event()
        outcome: list = []

        def fetch() -> None:
            try:
                outcome.append(work())
            except BaseException as exc:  # handed to the worker's thread, raised there
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=fetch, name=name, daemon=True).start()
        while not done.wait(0.05):
            if self._stopped.is_set():
                return None
        if self._stopped.is_set():
            return None
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _on_download(self, event) -> None:
        """The download's threads: progress, until the run is stopped."""
        if not self._stopped.is_set():
            self.download.emit(event)

    @classmethod
    def _release_models(cls) -> None:
        """Let the kept model go before another is loaded, so both are never in memory at once."""
        if not cls._models:
            return
        cls._models.clear()
        collector.collect()  # by the GUI thread: a collection here could free Qt objects (app/collector.py)
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _remote_session(self):
        from core.remote.client import RemoteSession

        self.phase.emit(Phase.CONNECTING, self.request.model)
        self._remote = RemoteSession(
            self.request.model,
            token=self.request.token,
            instruction=self.request.instruction or None,
            previous_text=self.request.previous_text,
            on_state=self._on_state,
        )
        return self._remote

    def _on_frame(self, frame: Frame) -> None:
        """Capture thread (after the pipeline's recorder has the frame): hand the view the newest, at most
        15 a second."""
        self.frames_in += 1
        if self._clock_offset is None:
            self._clock_offset = time.monotonic() - frame.t
        now = time.monotonic()
        if now - self._last_frame >= FRAME_INTERVAL:
            self._last_frame = now
            self.frame.emit(frame)

    def _on_audio(self, samples, started: float) -> None:
        """PortAudio's thread: place the block on the stream clock of the pictures."""
        if self._clock_offset is not None and self.recorder is not None:
            self.recorder.write_audio(samples, started - self._clock_offset)

    def _on_state(self, state, message: str) -> None:
        """A live source's or the server's reconnector (core.media.reconnect): a failure that ends the
        run comes as its exception, so only the drops and returns are passed on."""
        from core.media.reconnect import SourceState

        if state is not SourceState.FAILED:
            self.link.emit(state is SourceState.CONNECTED, message)

    def _context(self) -> str:
        request = self.request
        return f"source: {request.source}\nmodel: {request.model}" + (
            f"\nrecording: {request.record_to}" if request.record_to else ""
        )
