"""Sound for recordings, through a real (virtual) input device: a PulseAudio null sink's monitor,
read by PortAudio's ALSA "pulse" device; skipped where PulseAudio is not installed."""

from __future__ import annotations

import threading
import time
import wave

import av
import numpy as np
import pytest

from core.media.audio import AudioCapture, input_devices
from core.media.recorder import Recorder
from core.types import Frame
from livehelpers import SoundServer

RATE = 48_000


@pytest.fixture
def sound(tmp_path, monkeypatch):
    server = SoundServer(tmp_path).start()
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()
    input_devices(rescan=True)  # forget the virtual device for the tests that follow


def chirp_wav(path, seconds: float = 2.0):
    t = np.arange(int(RATE * seconds)) / RATE
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 1800 * t**2 / (2 * seconds)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((chirp * 32767).astype(np.int16).tobytes())
    return path, chirp


def test_a_virtual_input_device_is_listed_and_records_what_is_played(sound, tmp_path):
    devices, why = input_devices(rescan=True)
    assert why is None and "pulse" in [d.name for d in devices]
    wav, chirp = chirp_wav(tmp_path / "chirp.wav")
    blocks = []
    capture = AudioCapture(
        next(d.index for d in devices if d.name == "pulse"), lambda s, t: blocks.append((s, t))
    )
    capture.start()
    sound.play(wav)
    time.sleep(0.3)
    capture.close()
    heard = np.concatenate([b for b, _ in blocks])[:, 0]
    stamps = [t for _, t in blocks]
    assert stamps == sorted(stamps)  # blocks come in order, stamped on the monotonic clock
    assert np.sqrt((heard**2).mean()) > 0.1  # the chirp, not silence
    # It is the chirp: its best alignment with what was played is close to a perfect match.
    reference = chirp[RATE // 2 : RATE // 2 + 4800]
    windows = [heard[i : i + 4800] for i in range(0, len(heard) - 4800, 16)]
    best = max(np.corrcoef(w, reference)[0, 1] for w in windows if w.std() > 0.01)
    assert best > 0.95


def test_a_recording_carries_the_sound_of_the_device_in_step_with_the_pictures(sound, tmp_path):
    devices, _ = input_devices(rescan=True)
    wav, _ = chirp_wav(tmp_path / "chirp.wav", seconds=3.2)  # a null sink's monitor is silent between sounds
    path = tmp_path / "with_sound.mp4"
    recorder = Recorder(path, fps=10, audio_rate=RATE)
    start = time.monotonic()
    recorder.write(Frame(np.full((90, 160, 3), 90, np.uint8), 0.0))  # the stream clock starts here
    capture = AudioCapture(devices[0].index, lambda s, t: recorder.write_audio(s, t - start))
    capture.start()
    player = threading.Thread(target=sound.play, args=(wav,))
    player.start()
    k = 1
    while time.monotonic() - start < 3.0:  # pictures at 10 FPS on the same clock
        time.sleep(max(0.0, start + k / 10 - time.monotonic()))
        recorder.write(Frame(np.full((90, 160, 3), 90, np.uint8), k / 10))
        k += 1
    player.join()
    capture.close()
    recorder.close()
    with av.open(str(path)) as container:
        video_s = container.streams.video[0].frames / 10 if container.streams.video[0].frames else None
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    assert len(samples) / RATE == pytest.approx(3.0, abs=0.35)  # sound for the whole recording
    assert video_s is None or abs(video_s - 3.0) < 0.3
    assert np.sqrt((samples**2).mean()) > 0.05  # and it is the chirp, not silence
