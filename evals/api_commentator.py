"""The offline API baseline: an OpenAI-compatible multimodal model comments one window at a time.

This is the GPT-4o-mini protocol of the comparative benchmarks: the model sees each window after
the fact as frames at 0.25 FPS (at most 60), each a 360-px-high JPEG sent as a base64 image_url
part, with a plain-text commentator persona and a request for 2-6 sentences. Its reply for a
window is one item spanning the whole window, so it lands in that window when scored by end time.
"""

from __future__ import annotations

from pathlib import Path

from evals.judge import ChatClient
from evals.video import frames_at, jpeg_base64, sample_times

FPS = 0.25
MAX_FRAMES = 60
FRAME_HEIGHT = 360
PERSONA = (
    "You are a professional live sports commentator. You watch the broadcast and speak to the "
    "audience in plain text: vivid, accurate and in the present tense, with no lists or markup."
)


def window_messages(path: Path, start: float, end: float, title: str = "") -> list[dict]:
    """The chat request for one window: persona, then the frames and the task."""
    times = sample_times(start, end, fps=FPS, max_frames=MAX_FRAMES)
    parts: list[dict] = [
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/jpeg;base64,{jpeg_base64(frame.rgb, FRAME_HEIGHT)}"},
        }
        for frame in frames_at(path, times)
    ]
    about = f" from {title}" if title else ""
    parts.append(
        {
            "type": "text",
            "text": f"These frames show {end - start:.0f} seconds of a broadcast{about} "
            f"({start:.0f}-{end:.0f} s). Commentate on what happens in 2-6 sentences.",
        }
    )
    return [{"role": "system", "content": PERSONA}, {"role": "user", "content": parts}]


def commentate_window(client: ChatClient, path: Path, start: float, end: float, title: str = "") -> dict:
    text = client.complete(window_messages(path, start, end, title), max_tokens=400)
    return {"response": " ".join(text.split()), "start_time": start, "end_time": end}
