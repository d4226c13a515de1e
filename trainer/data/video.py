"""A training window's frames: decoded with PyAV, sampled at 2 FPS, resized once for the whole clip.

The published recipe (LiveCC's strict-FPS reader as StreamingVLM trains with it) takes the
frames whose timestamp lies in [video_start, video_end], lays a 2 FPS grid from the first of
them, keeps for each grid time the first frame at or after it, stops at 480 grid times, and
repeats the last frame to make the count even (two frames per one-second chunk). The reader
uses decord's frame timestamps `_frame_pts[:, 1]`, which are frame END times (pts + duration);
we do the same. The clip is then resized once with qwen-vl-utils' `fetch_video` arithmetic: a
per-frame pixel bound of min(602,112, total_budget / frames * 2), never below 1.05 x 78,400,
fed to `smart_resize` (sides multiples of 28, area >= 78,400). Frames are decoded upright, as
players show them (core.media.orientation.displayed_rgb honours a phone clip's rotation), so sizes are the
displayed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from qwen_vl_utils import smart_resize

TIME_EPS = 1e-6  # the published reader's np.arange(first, last + 1e-6, 1 / FPS)


@dataclass(frozen=True)
class FrameBudget:
    """How a window's frames are sampled and sized. Defaults are the published stage-1/2 settings."""

    fps: float = 2.0
    frames_per_chunk: int = 2  # one temporal patch: a one-second chunk at 2 FPS
    max_frames: int = 480  # FPS_MAX_FRAMES: later grid times are dropped (4 minutes at 2 FPS)
    min_pixels: int = 100 * 28 * 28  # 78,400 per frame (VIDEO_MIN_PIXELS)
    max_pixels: int = 768 * 28 * 28  # 602,112 per frame
    total_pixels: int = 24576 * 28 * 28  # 19,267,584 over the clip (the scripts' VIDEO_MAX_PIXELS)

    def __post_init__(self) -> None:
        problems = []
        if not self.fps > 0:
            problems.append(f"fps must be positive (got {self.fps})")
        if self.frames_per_chunk < 1 or abs(self.frames_per_chunk / self.fps - 1.0) > 1e-9:
            problems.append(f"frames_per_chunk must be one second of frames (got {self.frames_per_chunk})")
        if self.max_frames < self.frames_per_chunk:
            problems.append(f"max_frames must be >= frames_per_chunk (got {self.max_frames})")
        if not 0 < self.min_pixels <= self.max_pixels:
            problems.append(f"need 0 < min_pixels <= max_pixels (got {self.min_pixels}, {self.max_pixels})")
        if self.total_pixels <= 0:
            problems.append(f"total_pixels must be positive (got {self.total_pixels})")
        if problems:
            raise ValueError("frame budget: " + "; ".join(problems))

    def frame_max_pixels(self, nframes: int) -> float:
        """The per-frame area bound for a clip of `nframes` frames (qwen-vl-utils' fetch_video)."""
        share = self.total_pixels / nframes * self.frames_per_chunk
        return max(min(self.max_pixels, share), int(self.min_pixels * 1.05))

    def frame_size(self, height: int, width: int, nframes: int, factor: int = 28) -> tuple[int, int]:
        """(height, width) every frame of an `nframes` clip is resized to."""
        return smart_resize(
            height, width, factor, min_pixels=self.min_pixels, max_pixels=self.frame_max_pixels(nframes)
        )


def sample_indices(ends: list[float], start: float, end: float, budget: FrameBudget) -> list[int]:
    """Indices into frames with END times `ends` (rising) that the published reader samples.

    Pure arithmetic, so tests can check it on hand-computed numbers.
    """
    inside = [i for i, e in enumerate(ends) if start <= e <= end]
    if not inside:
        return []
    first, last = ends[inside[0]], ends[inside[-1]]
    count = min(len(np.arange(first, last + TIME_EPS, 1.0 / budget.fps)), budget.max_frames)
    picked, k = [], 0
    for j in range(count):
        t = first + j / budget.fps
        while k < len(inside) - 1 and ends[inside[k]] < t:
            k += 1
        # A grid time within 1e-6 s past the last frame takes the last frame (the published argmax
        # would take the first one there, an artefact of float noise).
        picked.append(inside[k])
    while len(picked) % budget.frames_per_chunk:
        picked.append(picked[-1])
    return picked


@dataclass
class Clip:
    """A window's sampled frames, resized."""

    frames: torch.Tensor  # [T, 3, H, W] uint8, T a multiple of frames_per_chunk
    ends: list[float]  # end time (seconds) of each sampled frame
    duration: float | None  # of the whole video, from its container (None when unknown)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[3])


class VideoError(Exception):
    """A video that cannot be read or a window it does not contain (the builder adds file:line)."""


def read_clip(path: Path, start: float, end: float, budget: FrameBudget, factor: int = 28) -> Clip:
    """Decode the frames of [start, end] seconds of `path`, sample and resize them (see the module doc)."""
    import av  # decoding needs PyAV; the arithmetic above does not

    from core.media.orientation import displayed_rgb  # upright, as players show it (rotated phone clips)

    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise VideoError(f"the window {start}-{end} s is not a time range")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open video {path} ({exc})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = container.duration / av.time_base if container.duration else None
        if duration is not None and (start >= duration or end > duration + 1.0):
            raise VideoError(
                f"the window {start:.2f}-{end:.2f} s is outside the video ({duration:.2f} s long)"
            )
        time_base = stream.time_base
        default_step = 1 / Fraction(stream.average_rate) if stream.average_rate else Fraction(1, 25)
        if start > 1.0:  # jump to the keyframe before the window instead of decoding from 0
            try:
                container.seek(int((start - 1.0) / time_base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0, stream=stream)
        ends: list[float] = []
        frames: list[np.ndarray | None] = []  # pixels only for frames the 2 FPS grid can pick
        last = None  # the newest decoded frame, in case the grid's float edge picks it (sample_indices)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                step = frame.duration * time_base if frame.duration else default_step
                frame_end = float(frame.pts * time_base + step)
                if frame_end < start:
                    continue
                if frame_end > end:
                    break
                candidate = not ends or frame_end >= _next_grid_time(ends, budget)
                ends.append(frame_end)
                frames.append(displayed_rgb(frame, stream) if candidate else None)
                last = frame
                if _grid_full(ends, budget):
                    break
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode {path} ({exc})") from None
        if frames and frames[-1] is None:
            frames[-1] = displayed_rgb(last, stream)
    picked = sample_indices(ends, start, end, budget)
    if not picked:
        raise VideoError(f"no frame of {path} lies in the window {start:.2f}-{end:.2f} s")
    if len({frames[i].shape for i in picked}) > 1:
        raise VideoError(f"the frame size of {path} changes inside the window {start:.2f}-{end:.2f} s")
    chosen = torch.from_numpy(np.stack([frames[i] for i in picked])).permute(0, 3, 1, 2)  # [T, 3, H, W]
    height, width = budget.frame_size(chosen.shape[2], chosen.shape[3], len(picked), factor)
    if (height, width) != tuple(chosen.shape[2:]):
        # The stock processor's resize: torchvision bicubic with antialias on uint8 (core/frames.py).
        chosen = tvF.resize(
            chosen, [height, width], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True
        )
    return Clip(frames=chosen.contiguous(), ends=[ends[i] for i in picked], duration=duration)


def _next_grid_time(ends: list[float], budget: FrameBudget) -> float:
    """The first grid time (ends[0] + j / fps) that no frame so far has reached."""
    first, newest = ends[0], ends[-1]
    j = max(0, math.floor((newest - first) * budget.fps) - 1)
    while first + j / budget.fps <= newest:
        j += 1
    return first + j / budget.fps


def _grid_full(ends: list[float], budget: FrameBudget) -> bool:
    """Whether the 2 FPS grid already has max_frames times covered (later frames are dropped)."""
    return ends[-1] >= ends[0] + (budget.max_frames - 1) / budget.fps
