"""A small dataset in the published format, drawn and encoded here: `python -m trainer make-fixture DIR`.

Videos are core/synthetic.py's football scene (moving ball and players, a running scoreboard)
encoded to mp4 with PyAV; the commentary is generated words with ASR-style timestamps (some
seconds silent, one word per video ending exactly on a second boundary). Three file pairs are
written, named like the published ones so the stage globs find them:

- `train_s12w24_fixture_*`: sliding windows over each video, with the words before the window as
  `previous` text (Inf-Stream-Train's shape, scaled down);
- `train_livecc_fixture_*`: one clip per video, no previous text (Live-WhisperX-526K's shape);
- `train_fg_fixture_*`: windows with `qa_stream` items (the stage-2 subset's shape).

At the defaults (160x120 source frames, 8-12 s windows) a tiny-model sample is about 1-1.5k tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.cli_args import ArgumentParser, number, path_arg
from core.errors import ConfigError
from core.paths import make_output_folder
from core.synthetic import synthetic_frames, write_video
from trainer.data.seeks import DATA_SUFFIX, write_seeks

_WORDS = (
    "the red striker drives forward and the blue keeper comes out quickly "
    "what a pass through the middle he shoots wide of the post "
    "the ball runs out for a goal kick and blue build again from the back "
    "lovely touch from the winger now a cross into the box headed clear"
).split()
_QUESTIONS = (
    ("Which team has the ball?", "The red team."),
    ("What colour is the away team?", "Blue."),
    ("Is the ball in the air?", "No, it is on the ground."),
    ("What does the scoreboard show?", "The score and the match clock."),
)

Word = tuple[float, float, str]


def make_fixture(
    directory: str | Path,
    *,
    videos: int = 3,
    seconds: float = 32.0,
    seed: int = 0,
    width: int = 160,
    height: int = 120,
    fps: float = 10.0,
    window: float = 8.0,
    stride: float = 8.0,
    clip: float = 12.0,
) -> list[Path]:
    """Write the fixture dataset into `directory`; return the data files (`*_with_seeks.jsonl`)."""
    if videos < 1 or seconds < max(window, clip) + 2:
        raise ValueError(
            f"need >= 1 video of at least {max(window, clip) + 2} s (got {videos} of {seconds} s)"
        )
    root = Path(directory)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    windows, clips, fine = [], [], []
    for v in range(videos):
        length = seconds + 2 * v  # videos of slightly different lengths
        rel = f"videos/match_{v:02d}.mp4"
        write_video(root / rel, synthetic_frames(width, height, fps, length, seed=seed * 1000 + v), fps)
        words = _commentary(rng, length)
        title = f"Fixture match {v}: red against blue"
        for k, start in enumerate(np.arange(0.0, length - window + 1e-9, stride)):
            start = float(start)
            before = [w for w in words if w[1] <= start]
            # Some lines carry earlier commentary as previous text, some an empty one, some none.
            previous = " ".join(w[2].strip() for w in before) if k % 3 != 2 else None
            windows.append(_line(rel, start, start + window, title, words, previous=previous))
        offset = float(v % 3)
        clips.append(_line(rel, offset, offset + clip, title, words, previous="" if v % 2 else None))
        start = float(min(4.0 + v, length - window))
        qa = [
            [round(start + 1.0, 2), round(start + 2.5, 2), *_QUESTIONS[v % len(_QUESTIONS)]],
            [round(start + 4.0, 2), round(start + 5.0, 2), *_QUESTIONS[(v + 1) % len(_QUESTIONS)]],
        ]
        fine.append(_line(rel, start, start + window, title, words, previous="Earlier: kick-off.", qa=qa))
    out = []
    for stem, lines in (
        ("train_s12w24_fixture", windows),
        ("train_livecc_fixture", clips),
        ("train_fg_fixture", fine),
    ):
        path = root / (stem + DATA_SUFFIX)
        path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        write_seeks(path)
        out.append(path)
    return out


def _commentary(rng: np.random.Generator, length: float) -> list[Word]:
    """ASR-style words: phrases of short words separated by silences of one to three seconds."""
    words: list[Word] = []
    t, snapped = 0.3, False
    while t < length - 0.5:
        if rng.random() < 0.3:
            t += float(rng.uniform(1.2, 3.0))  # a silence: at least one whole second without a word ends
            continue
        at = int(rng.integers(len(_WORDS)))  # phrases follow the word list, so there is something to learn
        for n in range(int(rng.integers(3, 9))):
            end = t + float(rng.uniform(0.15, 0.45))
            if end > length - 0.2:
                break
            if not snapped and math.floor(t) != math.floor(end) and t > 2:
                end, snapped = float(math.floor(end)), True  # a word ending exactly on a second boundary
                end = max(end, t + 0.05)
            text = _WORDS[(at + n) % len(_WORDS)]
            if rng.random() < 0.1:
                text = " " + text  # ASR words sometimes carry spaces; the builder strips them
            words.append((round(t, 3), round(end, 3), text))
            t = end + float(rng.uniform(0.02, 0.12))
        t += float(rng.uniform(0.2, 0.6))
    return words


def _line(
    video: str,
    start: float,
    end: float,
    title: str,
    words: list[Word],
    *,
    previous: str | None,
    qa: list[list] | None = None,
) -> list[dict]:
    element: dict = {"type": "video", "video": video, "video_start": start, "video_end": end}
    if previous is not None:
        element["previous"] = previous
    stream: dict = {
        "type": "text_stream",
        "text_stream": [list(w) for w in words if w[0] >= start and w[1] <= end],
    }
    if qa:
        stream["qa_stream"] = qa
    return [
        {"role": "user", "content": [element, {"type": "text", "text": title}]},
        {"role": "assistant", "content": [stream]},
    ]


def main_make_fixture(argv: list[str] | None = None) -> None:
    """`make-fixture DIR [--videos N --seconds S --seed K ...]`."""
    parser = ArgumentParser(prog="python -m trainer make-fixture", description=make_fixture.__doc__)
    parser.add_argument("directory", type=path_arg)
    parser.add_argument("--videos", type=number(1, 1000, integer=True), default=3)
    parser.add_argument("--seconds", type=number(0, 3600, low_open=True), default=32.0)
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--width", type=number(16, 4096, integer=True), default=160)
    parser.add_argument("--height", type=number(16, 4096, integer=True), default=120)
    args = parser.parse_args(argv)
    make_output_folder(args.directory, "the fixture folder")  # a file, /proc/x, read-only: one sentence
    try:
        paths = make_fixture(
            args.directory,
            videos=args.videos,
            seconds=args.seconds,
            seed=args.seed,
            width=args.width,
            height=args.height,
        )
    except ValueError as exc:  # the sizes do not fit together (videos shorter than a window)
        raise ConfigError(f"{exc}; pass a larger --seconds") from None
    for path in paths:
        print(f"wrote {path} ({sum(1 for _ in open(path))} samples)")
