"""Synthetic football clip: a test video the project draws and encodes itself.

The picture is a green pitch with a ball crossing it, two coloured "players" chasing it and a
scoreboard whose clock runs with stream time. Everything is drawn with PIL and encoded with
PyAV, so tests and demos need no downloaded footage and no OpenCV. The same seed always gives
the same pixels.

Regenerate the shipped demo clip with `python -m core.synthetic assets/demo_clip.mp4`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.cli_args import ArgumentParser, number

_PITCH = (34, 139, 34)
_LINES = (235, 235, 235)
_BALL = (250, 250, 250)
_TEAMS = ((220, 40, 40), (40, 80, 220))  # home red, away blue
_BOARD = (20, 20, 20)


def synthetic_frames(
    width: int, height: int, fps: float, seconds: float, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield `round(seconds * fps)` RGB uint8 frames [height, width, 3] of a small football scene."""
    if width < 32 or height < 32:
        raise ValueError(f"synthetic frames need at least 32x32 pixels (got {width}x{height})")
    if not fps > 0 or not seconds > 0:
        raise ValueError(f"fps and seconds must be positive (got fps={fps}, seconds={seconds})")
    rng = np.random.default_rng(seed)
    # Motion is a function of time, not of frame index, so any fps shows the same match.
    ball_speed = rng.uniform(0.6, 1.0) * width / 4.0  # px per second, crosses the pitch in ~5 s
    ball_phase = rng.uniform(0.0, 2.0 * math.pi)
    player_phase = rng.uniform(0.0, 2.0 * math.pi, size=2)
    score = rng.integers(0, 4, size=2)
    board_h = max(12, height // 10)
    for i in range(round(seconds * fps)):
        t = i / fps
        image = Image.new("RGB", (width, height), _PITCH)
        draw = ImageDraw.Draw(image)
        _draw_pitch(draw, width, height, board_h)
        # The ball bounces between the touchlines while it travels along the pitch.
        span = width - 16
        along = (8 + ball_speed * t) % (2 * span)
        bx = 8 + (along if along <= span else 2 * span - along)
        by = board_h + (height - board_h) * (0.5 + 0.3 * math.sin(ball_phase + 1.7 * t))
        for team, (colour, phase) in enumerate(zip(_TEAMS, player_phase, strict=True)):
            # Each player trails the ball from its own side, so the two stay apart.
            px = bx + (-1 if team == 0 else 1) * (20 + 10 * math.sin(phase + t))
            py = by + 15 * math.cos(phase + 0.8 * t)
            draw.rectangle((px - 5, py - 9, px + 5, py + 9), fill=colour)
        r = max(3, height // 45)
        draw.ellipse((bx - r, by - r, bx + r, by + r), fill=_BALL, outline=(0, 0, 0))
        _draw_scoreboard(draw, board_h, t, score)
        yield np.asarray(image)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames into a video file (container from the suffix) as yuv420p; returns the path.

    Every frame must have the same even width and height. `codec` falls back to mpeg4 when this
    FFmpeg build lacks it (libx264 is GPL and missing from some builds). `options` go to the
    encoder (e.g. {"crf": "18"}), `container_options` to the muxer (e.g. {"movflags": "faststart"}).
    """
    import av  # only encoding needs PyAV; drawing frames works without it (e.g. on a bare GPU box)

    path = Path(path)
    if codec not in av.codecs_available:
        codec = "mpeg4"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = None
        for i, rgb in enumerate(frames):
            if stream is None:
                height, width = rgb.shape[:2]
                stream = container.add_stream(codec, rate=rate, options=_codec_options(codec, options))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.time_base = 1 / rate
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError("write_video got no frames; pass at least one frame")
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def write_clip(
    path: str | Path,
    *,
    seconds: float = 8.0,
    width: int = 320,
    height: int = 180,
    fps: float = 10,
    seed: int = 0,
    codec: str = "libx264",
) -> Path:
    """Draw the synthetic football clip and encode it to `path` (H.264 yuv420p, mpeg4 fallback)."""
    return write_video(path, synthetic_frames(width, height, fps, seconds, seed), fps, codec)


def _codec_options(codec: str, extra: dict[str, str] | None) -> dict[str, str]:
    # Fixed quality settings keep the shipped clip small. The bytes are not guaranteed to repeat:
    # with PyAV 18 about 1 encode in 100 of the same frames differs by a few bytes.
    defaults = {"libx264": {"crf": "23", "preset": "medium"}, "mpeg4": {"qscale": "6"}}
    return {**defaults.get(codec, {}), **(extra or {})}


def _draw_pitch(draw: ImageDraw.ImageDraw, width: int, height: int, top: int) -> None:
    draw.rectangle((2, top + 2, width - 3, height - 3), outline=_LINES)
    draw.line((width // 2, top + 2, width // 2, height - 3), fill=_LINES)
    cx, cy, r = width // 2, (top + height) // 2, (height - top) // 6
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=_LINES)


def _draw_scoreboard(draw: ImageDraw.ImageDraw, board_h: int, t: float, score: np.ndarray) -> None:
    minutes, seconds = divmod(int(t), 60)
    text = f"RED {score[0]}-{score[1]} BLU  {minutes:02d}:{seconds:02d}"
    draw.rectangle((0, 0, 8 + 6 * len(text), board_h), fill=_BOARD)
    draw.text((4, max(0, (board_h - 11) // 2)), text, fill=(255, 255, 255))


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m core.synthetic", description="Write the synthetic football clip.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--seconds", type=number(0, 3600, low_open=True), default=8.0)
    parser.add_argument("--width", type=number(16, 4096, integer=True), default=320)
    parser.add_argument("--height", type=number(16, 4096, integer=True), default=180)
    parser.add_argument("--fps", type=number(0, 120, low_open=True), default=10)
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0)
    args = parser.parse_args(argv)
    out = write_clip(
        args.path, seconds=args.seconds, width=args.width, height=args.height, fps=args.fps, seed=args.seed
    )
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
