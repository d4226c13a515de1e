"""One published JSONL line to one `TrainSample`: the streaming conversation the trainer sees.

A line is `[user, assistant]`. The user content holds `{type: "video", video, video_start,
video_end, previous?}` (the title text element is ignored, as in the published builder); the
assistant content holds `{type: "text_stream", text_stream: [[start, end, word], ...],
qa_stream?: [[x, t, question, answer], ...]}`. Times are absolute seconds of the video.

The window becomes (published `LMMDataset.preprocess_conversation_stream`, read in the
mit-han-lab/streaming-vlm code; ours is written from that description):
- a system turn and a `previous text` turn (present even when empty), the turn cut to its first
  `text_sink` and last `text_window` tokens counting its header and footer;
- one round per one-second chunk of two frames, chunk k labelled `Time=a.a-b.bs` with
  a = video_start + k. The published code labels ABSOLUTE video time (a window starting at 120 s
  opens with Time=120.0-121.0s), as inference labels absolute stream time, so we do too;
- the reply of a chunk: every not-yet-used word, in stream order, whose end time is <= the chunk's
  end, each stripped and prefixed by one space, then ` ...`. Words are consumed in order, so a word
  ending later blocks the ones after it (as published); words ending after the last chunk are dropped;
- the head of the QA queue is asked in the chunk whose (start, end] holds its time: the question
  follows the time label, the answer opens the reply (`answer\\n words ...`).
Labels (published: from the 4th token of each assistant turn through `<|im_end|>`) cover the
answer, its newline, the words, the ` ...` marker and `<|im_end|>`, but not the assistant header
with the reply's leading newline (merged into one token by Qwen's tokenizer) nor the newline after
`<|im_end|>`. Every piece comes from `core.conversation.Conversation`, so training and inference
share one layout; positions come from `core.conversation.layout_positions`, as the engine's cache
places them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.config import StreamConfig
from core.conversation import Conversation, Part, Piece, layout_positions
from core.frames import video_input
from core.positions import temporal_step
from core.spec import ModelSpec
from trainer.data.errors import SampleError
from trainer.data.sample import IGNORE_INDEX, TrainSample
from trainer.data.video import Clip, FrameBudget, VideoError, read_clip

TEXT_SINK = 512  # the published --text_sink: first tokens of the previous-text turn kept
TEXT_WINDOW = 512  # the published --text_sliding_window: last tokens of that turn kept


@dataclass(frozen=True)
class Window:
    """A parsed line: which seconds of which video, and what was said in them."""

    video: str
    start: float
    end: float
    previous: str = ""
    words: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, word), stream order
    qa: list[tuple[float, str, str]] = field(default_factory=list)  # (time, question, answer)


@dataclass(frozen=True)
class Round:
    """What one chunk's turn says."""

    t_start: float
    t_end: float
    words: str  # ' w1 w2' (empty when silent)
    question: str = ""
    answer: str = ""


def parse_line(obj: object, source: str) -> Window:
    """Check a line's structure and read its window; raise SampleError naming what is wrong."""

    def fail(reason: str) -> SampleError:
        return SampleError(source, reason)

    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(m, dict) for m in obj)):
        raise fail("a line must be a JSON array [user message, assistant message]")
    user, assistant = obj
    if user.get("role") != "user" or assistant.get("role") != "assistant":
        raise fail(f"roles must be user then assistant (got {user.get('role')!r}, {assistant.get('role')!r})")
    content = user.get("content")
    if not isinstance(content, list):
        raise fail("the user content must be a list")
    videos = [e for e in content if isinstance(e, dict) and e.get("type") == "video"]
    if len(videos) != 1:
        raise fail(f"the user content must hold one video element (found {len(videos)})")
    video = videos[0]
    path = video.get("video")
    if not isinstance(path, str) or not path:
        raise fail("the video element has no 'video' path")
    try:
        start, end = float(video["video_start"]), float(video["video_end"])
    except (KeyError, TypeError, ValueError):
        raise fail("the video element needs numeric video_start and video_end") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise fail(f"the window {start}-{end} s is not a time range within a video")
    previous = next((e["previous"] for e in content if isinstance(e, dict) and "previous" in e), "")
    if previous is None:
        previous = ""
    if not isinstance(previous, str):
        raise fail("'previous' must be text")

    reply = assistant.get("content")
    stream = reply[0] if isinstance(reply, list) and reply and isinstance(reply[0], dict) else {}
    if "text_stream" not in stream:
        raise fail("the assistant content must start with a text_stream element")
    words = []
    for i, item in enumerate(stream["text_stream"] or []):
        if not (isinstance(item, list | tuple) and len(item) == 3 and isinstance(item[2], str)):
            raise fail(f"text_stream item {i} must be [start, end, word] (got {item!r})")
        try:
            words.append((float(item[0]), float(item[1]), item[2]))
        except (TypeError, ValueError):
            raise fail(f"text_stream item {i} has non-numeric times ({item!r})") from None
    qa = []
    for i, item in enumerate(stream.get("qa_stream") or []):
        if not (
            isinstance(item, list | tuple) and len(item) == 4 and all(isinstance(x, str) for x in item[2:])
        ):
            raise fail(f"qa_stream item {i} must be [x, time, question, answer] (got {item!r})")
        try:
            qa.append((float(item[1]), item[2], item[3]))
        except (TypeError, ValueError):
            raise fail(f"qa_stream item {i} has a non-numeric time ({item!r})") from None
    return Window(path, start, end, previous, words, qa)


def plan_rounds(window: Window, chunks: int, chunk_seconds: float = 1.0) -> list[Round]:
    """Assign words and QA items to the window's `chunks` one-second rounds (published rules)."""
    rounds, next_word, next_qa = [], 0, 0
    for k in range(chunks):
        t_start = window.start + k * chunk_seconds
        t_end = window.start + (k + 1) * chunk_seconds
        words = ""
        while next_word < len(window.words) and window.words[next_word][1] <= t_end:
            words += " " + window.words[next_word][2].strip()
            next_word += 1
        question = answer = ""
        if next_qa < len(window.qa) and t_start < window.qa[next_qa][0] <= t_end:
            _, question, answer = window.qa[next_qa]
            next_qa += 1
        rounds.append(Round(t_start, t_end, words, question, answer))
    return rounds


def build_sample(
    line_obj: object,
    root: Path,
    model: ModelSpec,
    source: str,
    *,
    budget: FrameBudget | None = None,
    text_sink: int = TEXT_SINK,
    text_window: int = TEXT_WINDOW,
    conversation: Conversation | None = None,
) -> TrainSample:
    """Build the training sample of one line; `root` is the dataset folder video paths are relative to."""
    budget = budget or FrameBudget()
    window = parse_line(line_obj, source)
    path = Path(root) / window.video
    if not path.is_file():
        raise SampleError(source, f"video '{window.video}' not found under {root}")
    try:
        clip = read_clip(path, window.start, window.end, budget, model.vision.factor)
    except VideoError as exc:
        raise SampleError(source, str(exc)) from None
    conv = conversation or Conversation(model)
    rounds = plan_rounds(window, clip.frames.shape[0] // budget.frames_per_chunk)
    pixel_values, grids, merged = _vision_inputs(clip, model, budget)
    pieces = _pieces(conv, model, window.previous, rounds, merged, text_sink, text_window)
    dt = temporal_step(model.vision.tokens_per_second, model.vision.temporal_patch_size, budget.fps)
    ids, labels, positions = layout(pieces, merged, dt)
    return TrainSample(
        input_ids=torch.tensor(ids, dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64),
        position_ids=_as_int64(positions, source),
        pixel_values_videos=pixel_values,
        video_grid_thw=grids,
        source=source,
    )


# A piece and whether each of its tokens is a label.
LabelledPiece = tuple[Piece, tuple[bool, ...]]


def _pieces(
    conv: Conversation,
    model: ModelSpec,
    previous: str,
    rounds: list[Round],
    merged: list[tuple[int, int, int]],
    text_sink: int,
    text_window: int,
) -> list[LabelledPiece]:
    # The published cut keeps the first/last tokens of the whole previous-text turn (header and
    # footer included), the preamble cuts its content: translate one into the other.
    bare = {p.part: len(p) for p in conv.preamble("", 0, 0)}
    sink = max(0, text_sink - bare[Part.PREV_OPEN])
    tail = max(0, text_window - bare[Part.PREV_CLOSE])
    if text_sink == 0 and text_window == 0:  # the published switch for "no cut"
        sink, tail = 1 << 62, 0
    out: list[LabelledPiece] = [(p, (False,) * len(p)) for p in conv.preamble(previous, sink, tail)]
    # Qwen's template writes '<|im_start|>assistant\n' + content; the published labels start after it.
    header = conv.answer_open
    for k, (rnd, grid) in enumerate(zip(rounds, merged, strict=True)):
        # The question's place in the turn is the conversation's rule, which inference shares.
        turn = conv.user_turn(
            rnd.t_start, rnd.t_end, grid[0] * grid[1] * grid[2], first=k == 0, question=rnd.question
        )
        asked = bool(rnd.question or rnd.answer)
        if asked:  # the reply brings its own header with the answer in it
            assert turn[-1].part is Part.ASSISTANT_OPEN
            turn = turn[:-1]
        out += [(p, (False,) * len(p)) for p in turn]
        for piece in conv.reply(rnd.words, rnd.answer, asked=asked):
            if piece.part is Part.ASSISTANT_OPEN:
                shared = _common_prefix(piece.ids, header)
                mask = (False,) * shared + (True,) * (len(piece) - shared)
            elif piece.part is Part.REPLY_CLOSE:
                unlabelled = len(conv.newline)  # the newline after <|im_end|> is the next turn's business
                mask = (True,) * (len(piece) - unlabelled) + (False,) * unlabelled
            else:
                mask = (True,) * len(piece)
            out.append((piece, mask))
    return out


def layout(
    pieces: list[LabelledPiece], grids: list[tuple[int, int, int]], dt: float
) -> tuple[list[int], list[int], torch.Tensor]:
    """Ids, labels and float positions [3, L] of the pieces, the k-th vision piece on grids[k].

    Positions from `core.conversation.layout_positions`.
    """
    ids: list[int] = []
    labels: list[int] = []
    for piece, mask in pieces:
        ids += piece.ids
        labels += [i if m else IGNORE_INDEX for i, m in zip(piece.ids, mask, strict=True)]
    return ids, labels, layout_positions([piece for piece, _ in pieces], grids, dt)


def _vision_inputs(
    clip: Clip, model: ModelSpec, budget: FrameBudget
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """Patchified chunks (core/frames.py, the stock processor's arithmetic), one grid row per chunk."""
    height, width = clip.size
    # The clip is already at its final size (multiples of 28), so this config makes video_input skip resizing.
    as_is = StreamConfig(min_pixels=model.vision.factor**2, max_pixels=height * width)
    frames = clip.frames.permute(0, 2, 3, 1).numpy()  # [T, H, W, 3] uint8
    n = budget.frames_per_chunk
    chunks = [video_input(list(frames[i : i + n]), as_is, model.vision) for i in range(0, len(frames), n)]
    assert all(c.size == (height, width) for c in chunks)
    pixel_values = torch.cat([c.pixel_values for c in chunks])  # [patches, 3 * tp * p * p]
    grids = torch.cat([c.grid_thw for c in chunks])  # [chunks, 3]
    return pixel_values, grids, [c.merged_grid for c in chunks]


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _as_int64(positions: torch.Tensor, source: str) -> torch.Tensor:
    # At 2 FPS a chunk is one temporal group, so every position is a whole number.
    rounded = positions.round()
    if not torch.equal(rounded, positions):
        raise SampleError(
            source, "positions are not whole numbers; the trainer supports one temporal group per chunk"
        )
    return rounded.to(torch.int64)
