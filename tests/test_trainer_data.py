"""The trainer's data side: published JSONL windows to TrainSamples, checked token by token.

Expected sequences are written here from the tokenizer on hand-written strings (the Qwen chat
template's text) and the published label rule, not from the builder's own pieces.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from core.cache import PREFIX_ROUND, StreamCache
from core.config import CachePolicy, EvictionMode, GenerationConfig, StreamConfig
from core.conversation import Conversation
from core.engine import StreamingEngine
from trainer.data import IGNORE_INDEX, FrameBudget, SampleError, build_sample, open_dataset
from trainer.data import seeks as seeks_module
from trainer.data.seeks import SeekIndex, write_seeks
from trainer.data.video import read_clip, sample_indices
from trainer.fixture import main_make_fixture, make_fixture

VIDEO = "videos/match_00.mp4"  # 16 s at 10 FPS, 160x120 -> 252x336 frames, 9x12 = 108 tokens a chunk


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixture")
    make_fixture(path, videos=2, seconds=16.0, window=8.0, stride=4.0, clip=12.0)
    return path


def line(start, end, words, *, previous=None, qa=None, video=VIDEO):
    element = {"type": "video", "video": video, "video_start": start, "video_end": end}
    if previous is not None:
        element["previous"] = previous
    stream = {"type": "text_stream", "text_stream": words}
    if qa is not None:
        stream["qa_stream"] = qa
    return [
        {"role": "user", "content": [element, {"type": "text", "text": "A title the builder ignores"}]},
        {"role": "assistant", "content": [stream]},
    ]


def write_data(folder, stem, lines):
    path = folder / f"{stem}_with_seeks.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    write_seeks(path)
    return path


# -- the layout, token by token ---------------------------------------------------------------------------

WORDS = [
    [2.1, 2.4, "hello"],
    [2.5, 3.0, " world "],  # ends exactly on the first second's end: belongs to it, stripped
    [3.2, 3.6, "next"],
    [5.1, 5.9, "goal"],  # 4.0-5.0 stays silent
    [6.5, 7.5, "late"],  # ends after the last chunk (6.0-7.0): dropped
]
QA = [[0, 4.5, "Q: who?", "Red."]]


def test_layout_token_by_token(tiny_model, data_dir):
    m, sp = tiny_model, tiny_model.special
    enc = m.encode
    nl = enc("\n")
    previous = " ".join(f"word{i}" for i in range(700))  # far more than 1024 tokens
    sample = build_sample(line(2.0, 6.0, WORDS, previous=previous, qa=QA), data_dir, m, "x.jsonl:1")

    # Frames ending in [2.0, 6.0] at 10 FPS: 2.0, 2.1, ..., 6.0; the 2 FPS grid from 2.0 gives 9 frames,
    # padded to 10: five one-second chunks labelled from video_start (absolute time, as published).
    assert sample.video_grid_thw.tolist() == [[1, 18, 24]] * 5
    pads = [sp.video_pad] * 108
    vision = [sp.vision_start, *pads, sp.vision_end]

    def turn(role_and_text, *, close=True):
        return [sp.im_start, *enc(role_and_text)] + ([sp.im_end, *nl] if close else [])

    prev_turn = [sp.im_start, *enc("previous text\n"), *enc(previous), sp.im_end, *nl]
    assert len(prev_turn) > 1024
    expected = turn("system\nYou are a helpful assistant.") + prev_turn[:512] + prev_turn[-512:]
    user_texts = [
        "Time=2.0-3.0s",
        "Time=3.0-4.0s ",
        "Time=4.0-5.0s Q: who?",
        "Time=5.0-6.0s ",
        "Time=6.0-7.0s ",
    ]
    replies = ["\n\n hello world ...", "\n\n next ...", "\nRed.\n ...", "\n\n goal ...", "\n\n ..."]
    for user_text, reply in zip(user_texts, replies, strict=True):
        expected += turn("user\n" + user_text, close=False) + vision + [sp.im_end, *nl]
        expected += turn("assistant" + reply)
    assert sample.input_ids.tolist() == expected

    # The published rule: label from the 4th token of each assistant turn through its <|im_end|>.
    assistant = enc("assistant")[0]
    starts = [i for i, t in enumerate(expected) if t == sp.im_start]
    ends = [i for i, t in enumerate(expected) if t == sp.im_end]
    labels = [IGNORE_INDEX] * len(expected)
    for s, e in zip(starts, ends, strict=True):
        if expected[s + 1] == assistant:
            labels[s + 3 : e + 1] = expected[s + 3 : e + 1]
    assert sample.labels.tolist() == labels
    labelled = m.tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert (
        labelled
        == " hello world ...<|im_end|> next ...<|im_end|>Red.\n ...<|im_end|> goal ...<|im_end|> ...<|im_end|>"
    )

    # Positions: what the engine's cache reserves for the same turns, from 0 with no eviction.
    conv = Conversation(m)
    cache = StreamCache(
        num_layers=1, num_kv_heads=1, head_dim=8, dtype=torch.float32, device=torch.device("cpu"),
        inv_freq=torch.ones(4), policy=CachePolicy(mode=EvictionMode.NONE),
    )  # fmt: skip
    # The preamble cut in content tokens: the published 512 + 512 counts the 4-token header and 2-token footer.
    head = len(enc("previous text\n")) + 1
    positions = [cache.reserve(conv.preamble(previous, 512 - head, 512 - 1 - len(nl)), PREFIX_ROUND)]
    questions = ["", "", "Q: who?", "", ""]
    words = [" hello world", " next", "", " goal", ""]
    for k in range(5):
        user = conv.user_turn(2.0 + k, 3.0 + k, 108, first=k == 0, question=questions[k])
        reply = conv.reply(words[k], "Red." if k == 2 else "")
        positions.append(cache.reserve(user[:-1] if k == 2 else user, k, grid=(1, 9, 12), dt=2.0))
        positions.append(cache.reserve(reply, k))
    assert cache.token_ids() == expected
    assert torch.equal(sample.position_ids, torch.cat(positions, dim=1).to(torch.int64))
    assert sample.position_ids.dtype == torch.int64
    # By hand: a vision block of 9x12 merged tokens advances the cursor by 2 + max(9, 12).
    first_vs = expected.index(sp.vision_start)
    assert sample.position_ids[:, first_vs + 1].tolist() == [first_vs + 1] * 3
    assert sample.position_ids[:, first_vs + 109].tolist() == [first_vs + 13] * 3  # <|vision_end|>


def test_first_round_matches_an_inference_session(tiny_model, data_dir):
    """An engine session on the same frames caches the same tokens and patches for the first round."""
    previous = "Earlier commentary."
    sample = build_sample(line(0.0, 3.0, WORDS, previous=previous), data_dir, tiny_model, "x.jsonl:1")
    clip = read_clip(data_dir / VIDEO, 0.0, 3.0, FrameBudget())
    engine = StreamingEngine(
        tiny_model,
        stream=StreamConfig(),
        cache=CachePolicy(mode=EvictionMode.NONE),
        generation=GenerationConfig(max_new_tokens=2, seed=0),
    )
    with engine.start(instruction=None, previous_text=previous, trace=True) as session:
        frames = clip.frames[:2].permute(0, 2, 3, 1).numpy()
        session.push(list(frames), 0.0, 1.0)
        cached = session.cache.token_ids()
        video = session.trace.videos[0]
    # The prompt: system, previous text, the first user turn and the assistant header (4th <|im_start|> + 3).
    ids = sample.input_ids.tolist()
    prompt = [i for i, t in enumerate(ids) if t == tiny_model.special.im_start][3] + 3
    assert len(cached) > prompt and cached[:prompt] == ids[:prompt]
    assert torch.equal(sample.pixel_values_videos[: video.pixel_values.shape[0]], video.pixel_values)
    assert torch.equal(sample.video_grid_thw[:1], video.grid_thw)


# -- frames ------------------------------------------------------------------------------------------------


def test_frame_sampling_rules_on_hand_computed_numbers():
    budget = FrameBudget()
    # 30 FPS, frame k ends at (k + 1) / 30: a 24 s window takes every 15th frame, 48 frames.
    ends = [(k + 1) / 30 for k in range(900)]
    assert sample_indices(ends, 0.0, 24.0, budget) == [15 * j for j in range(48)]
    # 10 FPS for 300 s: 600 grid times, cut to the first 480.
    ends = [(k + 1) / 10 for k in range(3000)]
    assert sample_indices(ends, 0.0, 300.0, budget) == [5 * j for j in range(480)]
    # 9 grid times (0.1 ... 4.1) are padded to 10 by repeating the last frame.
    assert sample_indices(ends, 0.0, 4.3, budget) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 40]
    # A frame ending exactly at video_start counts: 12.0 ... 36.0 is 49 grid times, padded to 50.
    picked = sample_indices(ends, 12.0, 36.0, budget)
    assert len(picked) == 50 and picked[:2] == [119, 124] and picked[-2:] == [359, 359]
    assert sample_indices(ends, 400.0, 410.0, budget) == []


def test_resize_budget_on_hand_computed_numbers():
    budget = FrameBudget()
    # Up to 64 frames the per-frame bound is 768 * 28 * 28; 1280x720 becomes 1008x560 (720 tokens a chunk).
    assert budget.frame_max_pixels(48) == 602_112
    assert budget.frame_size(720, 1280, 48) == (560, 1008)
    # 200 frames share 19,267,584 px: 192,675.84 per frame.
    assert budget.frame_max_pixels(200) == pytest.approx(192_675.84)
    assert budget.frame_size(720, 1280, 200) == (308, 560)
    # 480 frames: the share (80,281.6) is below 1.05 x 78,400, which wins; smart_resize's floor then
    # lands at 196x364 = 71,344 px, under the 78,400 minimum, exactly as the published arithmetic does.
    assert budget.frame_max_pixels(480) == 82_320
    assert budget.frame_size(720, 1280, 480) == (196, 364)
    # Small frames are scaled up to at least 78,400 px.
    assert budget.frame_size(120, 160, 48) == (252, 336)


def test_a_clip_is_resized_once_to_the_budget(data_dir):
    clip = read_clip(data_dir / VIDEO, 0.0, 10.0, FrameBudget(min_pixels=3136, total_pixels=200_000))
    # 20 frames share 200,000 px: 20,000 each; 120x160 rounds to 112x168 = 18,816 px, within bounds.
    assert clip.frames.shape == (20, 3, 112, 168) and clip.frames.dtype == torch.uint8
    assert clip.ends[:3] == pytest.approx([0.1, 0.6, 1.1])


def test_a_window_read_after_seeking_equals_a_full_decode(data_dir):
    import av
    import torchvision.transforms.v2.functional as tvF

    budget = FrameBudget(min_pixels=3136, total_pixels=10**9)
    with av.open(str(data_dir / VIDEO)) as container:
        decoded = [
            (float((f.pts + f.duration) * f.time_base), f.to_ndarray(format="rgb24"))
            for f in container.decode(video=0)
        ]
    picked = sample_indices([e for e, _ in decoded], 7.3, 15.0, budget)
    reference = torch.from_numpy(np.stack([decoded[i][1] for i in picked])).permute(0, 3, 1, 2)
    reference = tvF.resize(reference, [112, 168], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    clip = read_clip(data_dir / VIDEO, 7.3, 15.0, budget)
    assert clip.ends[:2] == pytest.approx([7.3, 7.8]) and torch.equal(clip.frames, reference)


# -- reading -----------------------------------------------------------------------------------------------


def test_fixture_reads_back_and_patterns_select_files(tiny_model, data_dir):
    stage1 = open_dataset(data_dir, ["train_s12w24_*", "train_s12w24_*", "train_livecc_*"], tiny_model)
    windows = len(SeekIndex.open(data_dir / "train_s12w24_fixture_with_seeks.jsonl"))
    assert windows == 6  # two videos of 16 and 18 s, 8 s windows every 4 s
    assert len(stage1) == 2 * windows + 2
    same = open_dataset(
        data_dir, ["train_s12w24_*", "train_livecc_*"], tiny_model, repeat={"train_s12w24_*": 2}
    )
    assert [same.source(i) for i in range(len(same))] == [stage1.source(i) for i in range(len(stage1))]
    stage2 = open_dataset(data_dir, ["*_fg_*"], tiny_model)
    assert len(stage2) == 2 and stage2.source(1).endswith("train_fg_fixture_with_seeks.jsonl:2")
    everything = open_dataset(data_dir, None, tiny_model)
    assert len(everything) == windows + 4

    a, b = stage2[0], stage2[0]
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values_videos, b.pixel_values_videos)
    text = tiny_model.decode(a.input_ids.tolist())
    assert "previous text\nEarlier: kick-off." in text and "Time=" in text
    assert a.num_label_tokens > 0 and len(a) < 2500
    for _, sample in stage1.samples([0, windows, 2 * windows]):
        assert sample.labels.shape == sample.input_ids.shape and sample.position_ids.shape == (3, len(sample))
        assert (
            int((sample.input_ids == tiny_model.special.video_pad).sum())
            == sample.video_grid_thw.prod(1).sum() // 4
        )
    with pytest.raises(FileNotFoundError, match="train_nothing_"):
        open_dataset(data_dir, ["train_nothing_*"], tiny_model)
    with pytest.raises(ValueError, match="repeat"):
        open_dataset(data_dir, ["*_fg_*"], tiny_model, repeat={"train_livecc_*": 2})


def test_make_fixture_command(tmp_path, capsys):
    main_make_fixture([str(tmp_path), "--videos", "1", "--seconds", "14"])
    assert "train_livecc_fixture_with_seeks.jsonl (1 samples)" in capsys.readouterr().out
    assert (tmp_path / "videos" / "match_00.mp4").is_file()


def test_seeking_reads_one_line_not_the_file(tmp_path, monkeypatch):
    path = write_data(tmp_path, "big", [{"n": i, "pad": "x" * 10_000} for i in range(300)])  # 3 MB
    index = SeekIndex.open(path)
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            attr = getattr(self.f, name)
            if name in ("read", "readline"):
                return lambda *a: read.append(len(out := attr(*a))) or out
            return attr

    monkeypatch.setattr(seeks_module, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    assert index.load(123)["n"] == 123
    assert 0 < sum(read) < 2 * 10_030


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_lines_name_their_file_and_line(tiny_model, data_dir, tmp_path, caplog):
    shutil.copytree(data_dir / "videos", tmp_path / "videos")
    good = line(0.0, 2.0, WORDS)
    path = write_data(
        tmp_path,
        "train_bad",
        [
            good,
            line(0.0, 2.0, WORDS, video="videos/missing.mp4"),
            line(40.0, 44.0, WORDS),  # the video is 16 s long
            '{"not json',
            [{"role": "user", "content": []}, {"role": "assistant", "content": []}],
            good,
        ],
    )
    dataset = open_dataset(tmp_path, ["train_bad_*"], tiny_model)
    expected = {
        1: "missing.mp4' not found",
        2: "outside the video",
        3: "not JSON",
        4: "one video element",
    }
    for i, message in expected.items():
        with pytest.raises(SampleError, match=message) as err:
            dataset[i]
        assert str(err.value).startswith(f"{path}:{i + 1}: ")

    skipped = []
    with caplog.at_level(logging.WARNING, logger="trainer.data.dataset"):
        kept = [i for i, _ in dataset.samples(on_skip=skipped.append)]
    assert kept == [0, 5]
    assert [s.index for s in skipped] == [1, 2, 3, 4]
    assert skipped[2].source == f"{path}:4" and "not JSON" in skipped[2].reason
    assert sum("skipping sample" in r.message for r in caplog.records) == 4


@pytest.mark.parametrize(
    ("edit", "message", "line_no"),
    [
        (lambda o: o[:-1], "lists 3 lines but .* has more", 3),  # one offset missing
        (lambda o: [*o, o[-1] + 5], "past the end|does not start a line", 5),  # one too many
        (lambda o: [o[0], o[1] + 3, *o[2:]], None, 2),  # shifted: found when line 2 is read
    ],
)
def test_seeks_that_do_not_match_their_data_file(tmp_path, tiny_model, edit, message, line_no):
    path = write_data(tmp_path, "train_x", [{"a": i} for i in range(4)])
    seeks = path.with_name("train_x_seeks.jsonl")
    seeks.write_text(json.dumps(edit(json.loads(seeks.read_text()))))
    if message is not None:
        with pytest.raises(SampleError, match=message) as err:
            SeekIndex.open(path)
    else:
        dataset = open_dataset(tmp_path, ["train_x_*"], tiny_model)
        with pytest.raises(SampleError, match="offset") as err:
            dataset[line_no - 1]
    assert str(err.value).startswith(f"{path}:{line_no}: ")


def test_word_and_qa_assignment_rules():
    from trainer.data.builder import Window, plan_rounds

    window = Window(
        "v.mp4",
        10.0,
        14.0,
        words=[
            (9.0, 9.5, "before"),
            (10.2, 11.0, "a"),
            (11.5, 12.4, "b"),
            (12.0, 12.2, "c"),
            (13.9, 14.5, "d"),
        ],
        qa=[(12.0, "Q1", "A1"), (12.5, "Q2", "A2"), (12.7, "Q3", "A3")],
    )
    rounds = plan_rounds(window, 4)
    # Words before the window go to the first round; a word ending later holds back the ones after it.
    assert [r.words for r in rounds] == [" before a", "", " b c", ""]
    # One QA item per round, the head of the queue, when its time is in (start, end]; as published, a second
    # item in the same second is never asked (later rounds start after its time).
    assert [(r.question, r.answer) for r in rounds] == [("", ""), ("Q1", "A1"), ("Q2", "A2"), ("", "")]
    assert [r.t_start for r in rounds] == [10.0, 11.0, 12.0, 13.0]
