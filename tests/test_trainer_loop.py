"""The training loop (trainer/train.py) on the tiny random-weight model, on a CPU.

Unit tests use hand-built samples (real video pads, pixels and grids); the end-to-end tests run
`python -m trainer --config trainer/configs/tiny.yaml` on the synthetic fixture: the loss falls, a
run killed with SIGKILL resumes exactly where its checkpoint left off, and the export streams in core.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.conversation import Conversation, Part
from core.errors import ConfigError
from trainer import train as T
from trainer.config import Decay, ScheduleSettings, load_train_config
from trainer.data.errors import SampleError
from trainer.data.sample import IGNORE_INDEX, TrainSample
from trainer.loss import chunked_cross_entropy, shift_targets
from trainerhelpers import read_metrics

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "trainer" / "configs"
TINY = CONFIGS / "tiny.yaml"


# -- hand-built samples ---------------------------------------------------------------------------


def handmade_sample(spec, rng: np.random.Generator, chunks: int = 2, side: int = 4) -> TrainSample:
    """A conversation of `chunks` one-second rounds; each chunk a (1, side, side)-patch video block."""
    conv = Conversation(spec)
    vision = spec.vision
    merged = (side // vision.merge_size) ** 2
    ids: list[int] = []
    labels: list[int] = []
    positions: list[tuple[int, int, int]] = []
    cursor = 0

    def text(tokens, labelled: bool) -> None:
        nonlocal cursor
        ids.extend(tokens)
        labels.extend(tokens if labelled else [IGNORE_INDEX] * len(tokens))
        positions.extend((cursor + i,) * 3 for i in range(len(tokens)))
        cursor += len(tokens)

    for piece in conv.preamble("a match", 512, 512):
        text(piece.ids, False)
    words = "the red striker drives forward and the keeper comes out what a pass".split()
    for k in range(chunks):
        for piece in conv.user_turn(float(k), float(k + 1), merged, first=k == 0):
            if piece.part is not Part.VISION:
                text(piece.ids, False)
                continue
            text(piece.ids[:1], False)  # <|vision_start|>
            h = w = side // vision.merge_size
            ids.extend(piece.ids[1:-1])
            labels.extend([IGNORE_INDEX] * merged)
            positions.extend((cursor, cursor + r, cursor + s) for r in range(h) for s in range(w))
            cursor += max(h, w)  # T = 1: max((T-1)*dt, H-1, W-1) + 1
            text(piece.ids[-1:], False)  # <|vision_end|>
        said = " " + " ".join(rng.choice(words, size=int(rng.integers(0, 4))))
        for piece in conv.reply(said if said.strip() else ""):
            text(piece.ids, True)
    width = 3 * vision.temporal_patch_size * vision.patch_size**2
    return TrainSample(
        input_ids=torch.tensor(ids),
        labels=torch.tensor(labels),
        position_ids=torch.tensor(positions).T.contiguous(),
        pixel_values_videos=torch.from_numpy(
            rng.standard_normal((chunks * side * side, width)).astype(np.float32)
        ),
        video_grid_thw=torch.tensor([[1, side, side]] * chunks),
        source=f"handmade:{chunks}",
    )


@pytest.fixture(scope="module")
def tiny_cfg(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return load_train_config(
        TINY, [f"model.path={tiny_dir}", f"run.out={out}", "batch.global_samples=2", "optim.grad_clip=0"]
    )


@pytest.fixture(scope="module")
def loaded(tiny_cfg):
    return T.load_for_training(tiny_cfg, torch.device("cpu"))


def _copy_forward(loaded, cfg):
    """A fresh trainable copy of the tiny model (tests below change weights)."""
    import copy

    return T.TrainForward(copy.deepcopy(loaded.model), cfg.batch.loss_chunk)


def _fields(sample: TrainSample) -> dict[str, torch.Tensor]:
    return T._to(sample, torch.device("cpu"))


# -- the chunked cross-entropy ---------------------------------------------------------------------


@pytest.mark.parametrize("n, chunk", [(37, 8), (37, 37), (37, 100), (1, 4)])
def test_chunked_cross_entropy_equals_full_logits(n, chunk):
    g = torch.Generator().manual_seed(n + chunk)
    hidden = torch.randn(n, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (n,), generator=g)
    ours = chunked_cross_entropy(hidden, weight, targets, chunk)
    ours.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    full.backward()
    torch.testing.assert_close(ours, full)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_shift_targets_pairs_each_position_with_the_next_label():
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7])
    positions, targets = shift_targets(labels)
    assert positions.tolist() == [1, 2, 4]
    assert targets.tolist() == [5, 6, 7]


def test_loss_equals_stock_forward_with_stock_rope_index(loaded, tiny_cfg, rng):
    """Our positions (fed as [3, 1, L]) give the same loss as transformers computing its own rope index."""
    sample = handmade_sample(loaded.spec, rng, chunks=3)
    model = loaded.model
    video = sample.input_ids == model.config.video_token_id
    mm_types = (video.long() * 2)[None]  # 0 text, 2 video
    stock_positions, _ = model.model.get_rope_index(
        sample.input_ids[None], mm_types, video_grid_thw=sample.video_grid_thw
    )
    assert torch.equal(stock_positions[:, 0], sample.position_ids)
    forward = T.TrainForward(model, loss_chunk=16)
    with torch.no_grad():
        ours, count = forward(**_fields(sample))
        model.model.rope_deltas = None
        stock = model(
            input_ids=sample.input_ids[None],
            labels=sample.labels[None],
            pixel_values_videos=sample.pixel_values_videos,
            video_grid_thw=sample.video_grid_thw,
            mm_token_type_ids=mm_types,
        ).loss
        assert count.item() == sample.num_label_tokens - (sample.labels[0] != IGNORE_INDEX).item()
        torch.testing.assert_close(ours / count, stock, rtol=1e-5, atol=1e-5)
        # The model really uses the positions it is given: scrambled vision positions change the loss.
        scrambled = sample.position_ids.clone()
        scrambled[1:, video] = scrambled[1:, video].flip(-1)
        other, _ = forward(**{**_fields(sample), "position_ids": scrambled})
    assert abs(other.item() - ours.item()) > 1e-4


# -- one optimizer step -----------------------------------------------------------------------------


def test_step_gradient_is_the_mean_over_all_labelled_tokens_and_vision_is_frozen(loaded, tiny_cfg, rng):
    forward = _copy_forward(loaded, tiny_cfg)
    samples = [handmade_sample(loaded.spec, rng, chunks=c) for c in (1, 3)]
    params = T.trainable_parameters(forward)
    visual = list(forward.model.model.visual.parameters())
    assert visual and all(not p.requires_grad for p in visual)
    optimizer = T.build_optimizer(forward, tiny_cfg)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in visual}
    assert in_optimizer == {id(p) for p in params}

    # The reference: one mean over the labelled tokens of both samples, differentiated directly.
    total = sum(s.num_label_tokens - int(s.labels[0] != IGNORE_INDEX) for s in samples)
    reference = 0.0
    for s in samples:
        loss, _ = forward(**_fields(s))
        reference = reference + loss / total
    reference.backward()
    expected = {id(p): p.grad.clone() for p in params}
    for p in forward.parameters():
        p.grad = None

    before = {id(p): p.detach().clone() for p in forward.parameters()}
    sgd = torch.optim.SGD(params, lr=1.0)  # the update is minus the gradient
    scheduler = torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1.0)
    ctx = T.distributed.Context(0, 1, 0, torch.device("cpu"))
    stats = T.train_step(
        forward, samples, sgd, scheduler, tiny_cfg, ctx, T.placeholder_sample(loaded.spec), False
    )
    assert stats.labels == total and stats.skipped == 0
    assert stats.loss == pytest.approx(reference.item(), rel=1e-5)
    for p in params:
        torch.testing.assert_close(before[id(p)] - p.detach(), expected[id(p)], rtol=1e-4, atol=1e-6)
    for p in visual:
        assert p.grad is None
        assert torch.equal(before[id(p)], p.detach())


class _ListDataset:
    def __init__(self, samples: list[TrainSample | None]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> TrainSample:
        if self.samples[index] is None:
            raise SampleError(f"list:{index + 1}", "broken on purpose")
        return self.samples[index]


def test_a_malformed_sample_is_skipped_and_leaves_the_step_unchanged(loaded, tiny_cfg, rng):
    good = [handmade_sample(loaded.spec, rng) for _ in range(2)]
    stream = list(T.sample_stream(_ListDataset([good[0], None, good[1]]), [0, 1, 2], num_workers=0))
    assert [(i, s is None) for i, s, _ in stream] == [(0, False), (1, True), (2, False)]
    assert "broken on purpose" in stream[1][2]
    ctx = T.distributed.Context(0, 1, 0, torch.device("cpu"))
    losses = []
    for samples in ([s for _, s, _ in stream], good):
        forward = _copy_forward(loaded, tiny_cfg)
        opt = torch.optim.SGD(T.trainable_parameters(forward), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        stats = T.train_step(
            forward, samples, opt, sched, tiny_cfg, ctx, T.placeholder_sample(loaded.spec), False
        )
        losses.append((stats.loss, stats.labels, stats.skipped))
    assert losses[0][:2] == pytest.approx(losses[1][:2]) and (losses[0][2], losses[1][2]) == (1, 0)


def test_a_run_with_no_usable_sample_is_refused_and_a_mostly_unusable_one_warns(
    loaded, tiny_cfg, rng, tmp_path, caplog
):
    good = handmade_sample(loaded.spec, rng)
    with pytest.raises(
        ConfigError, match=r"all 3 samples this run reads were skipped \(the first: list:1: broken"
    ):
        T.check_usable(_ListDataset([None] * 3), [0, 1, 2])
    with pytest.raises(ConfigError, match="the first 64 of the 100 samples this run reads were all skipped"):
        T.check_usable(_ListDataset([None] * 100), list(range(100)))
    assert T.check_usable(_ListDataset([None, None, good]), [0, 1, 2]) == 2

    def config(out: str):
        overrides = ["batch.global_samples=2", "run.max_steps=3", "run.export=false", "data.shuffle=false"]
        return load_train_config(
            TINY, [f"model.path={tiny_cfg.model.path}", f"run.out={tmp_path / out}", *overrides]
        )

    with pytest.raises(
        ConfigError, match="no usable training sample: all 6 samples this run reads were skipped"
    ):
        T.train(config("none"), _ListDataset([None] * 6))
    assert not (tmp_path / "none" / "checkpoints").exists()
    with caplog.at_level(logging.INFO, logger="trainer"):
        result = T.train(config("most"), _ListDataset([None, None, None, good, None, None]))
    assert [r["skipped"] for r in result.steps] == [2, 1, 2]
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING and "of the" in r.message]
    assert warnings == [
        "5 of the 6 samples read were unusable and skipped; the run trained on the rest only: check data.dir "
        "and the files its data lines name (the first: list:1: broken on purpose)"
    ]


# -- data order and schedule --------------------------------------------------------------------------


def test_data_plan_shards_by_rank_and_is_the_same_for_any_process_count():
    one = T.DataPlan(size=23, world=1, accumulation=4, epochs=2, seed=7)
    two = T.DataPlan(size=23, world=2, accumulation=2, epochs=2, seed=7)
    assert one.steps_per_epoch == two.steps_per_epoch == 5 and one.total_steps == 10
    for step in range(one.total_steps):
        window = one.window(step)
        assert window == two.window(step)
        assert sorted(window) == sorted(set(window))
    assert list(one.rank_indices(0, 10, 0)) == [i for s in range(10) for i in one.window(s)]
    for rank in range(2):
        mine = list(two.rank_indices(3, 7, rank))
        assert mine == [i for s in range(3, 7) for i in two.window(s)[rank::2]]
    assert list(two.rank_indices(3, 7)) == [i for s in range(3, 7) for i in two.window(s)]  # every rank's
    assert one.order(0) != one.order(1) and one.order(0) == T.DataPlan(23, 1, 4, 2, seed=7).order(0)
    assert sorted(one.order(1)) == list(range(23))


def test_lr_schedule_matches_transformers_cosine_with_warmup():
    from transformers import get_cosine_schedule_with_warmup

    total = 40
    schedule = ScheduleSettings(warmup_ratio=0.1, decay=Decay.COSINE)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(opt, math.ceil(0.1 * total), total)
    for step in range(total):
        assert T.lr_factor(step, total, schedule) == pytest.approx(reference.get_last_lr()[0], abs=1e-12)
        opt.step()
        reference.step()
    assert T.lr_factor(0, total, schedule) == 0.0
    assert T.lr_factor(4, total, schedule) == 1.0
    assert T.lr_factor(total, total, schedule) == pytest.approx(0.0)
    floor = ScheduleSettings(warmup_ratio=0.0, decay=Decay.COSINE, min_lr_ratio=0.1)
    assert T.lr_factor(0, total, floor) == 1.0 and T.lr_factor(total, total, floor) == pytest.approx(0.1)
    assert T.lr_factor(20, total, ScheduleSettings(warmup_ratio=0.0, decay=Decay.LINEAR)) == 0.5


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stage1", "stage2", "tiny"])
def test_every_shipped_config_loads(name):
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    if name != "tiny":  # the published recipe
        assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == (
            1e-5,
            (0.9, 0.999),
            1e-8,
            0,
        )
        assert (cfg.schedule.warmup_ratio, cfg.schedule.decay, cfg.schedule.epochs) == (0.03, Decay.COSINE, 1)
        assert cfg.batch.global_samples == 512 and cfg.optim.grad_clip == 1.0
        assert cfg.batch.accumulation(8) == 64


def test_overrides_change_typed_values():
    cfg = load_train_config(
        TINY,
        [
            "optim.lr=1e-4",
            "run.out=/tmp/x",
            "run.max_steps=7",
            "data.patterns=[a_*, b_*]",
            "schedule.decay=linear",
        ],
    )
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.run.out == "/tmp/x" and cfg.run.max_steps == 7
    assert cfg.data.patterns == ("a_*", "b_*") and cfg.schedule.decay is Decay.LINEAR
    assert load_train_config(TINY, ["run.max_steps=null"]).run.max_steps is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "valid optim keys: lr, betas, eps, weight_decay, grad_clip"),
        ("optimizer.lr=1", "known: model, data, optim, schedule, batch, run, dist, precision"),
        ("optim.lr=fast", "optim.lr has the wrong type"),
        ("optim.lr=-1", "lr must be positive"),
        ("schedule.decay=exponential", "must be one of cosine, linear, constant"),
        ("lr=1e-4", "must look like section.key=value"),
        ("precision.compute=fp8", "must be one of bfloat16, float32"),
    ],
)
def test_bad_overrides_are_errors_that_say_what_is_valid(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_train_config(TINY, [override])


def test_a_global_batch_that_does_not_divide_by_the_ranks_is_refused():
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        load_train_config(TINY, ["batch.global_samples=4"]).batch.accumulation(3)


# -- end to end: python -m trainer --config trainer/configs/tiny.yaml -----------------------------------


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    from trainer.fixture import make_fixture

    path = tmp_path_factory.mktemp("fixture")
    make_fixture(path)
    return path


def _args(fixture_dir: Path, tiny_dir: Path, out: Path) -> list[str]:
    return ["--config", str(TINY), f"data.dir={fixture_dir}", f"model.path={tiny_dir}", f"run.out={out}"]


@pytest.mark.slow
def test_tiny_recipe_learns_resumes_after_sigkill_and_exports_for_core(fixture_dir, tiny_dir, tmp_path):
    from trainer.__main__ import main

    # An uninterrupted run, in this process.
    whole = tmp_path / "whole"
    assert main(_args(fixture_dir, tiny_dir, whole)) == 0
    records = read_metrics(whole)
    steps = sorted(records)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 20
    losses = [records[s]["loss"] for s in steps]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses

    # The same run as a child process, killed with SIGKILL once its first checkpoint is written.
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "killed.log").open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer", *_args(fixture_dir, tiny_dir, killed)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((killed / "checkpoints").glob("step_*/COMPLETE")):
            assert child.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert child.poll() is None, "the run ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    assert child.returncode == -signal.SIGKILL
    saved = sorted((killed / "checkpoints").glob("step_*/COMPLETE"))
    resumed_from = json.loads((saved[-1].parent / "meta.json").read_text())["step"]
    assert 0 < resumed_from < len(steps)
    assert not (killed / "export").exists()

    # Rerunning the same command resumes from the checkpoint: same samples, same losses after it.
    assert main(_args(fixture_dir, tiny_dir, killed)) == 0
    again = read_metrics(killed)
    assert sorted(again) == steps
    for s in steps[resumed_from:]:
        assert again[s]["samples"] == records[s]["samples"]
        assert again[s]["loss"] == pytest.approx(records[s]["loss"], rel=1e-6), s
        assert again[s]["lr"] == pytest.approx(records[s]["lr"], rel=1e-9)

    # The export loads in core and streams.
    from core.config import GenerationConfig
    from core.engine import StreamingEngine
    from core.loading import load_model

    model = load_model(whole / "export", device="cpu", dtype="float32")
    generation = GenerationConfig(min_new_tokens=3, max_new_tokens=8, seed=0)  # never a silent second
    session = StreamingEngine(model, generation=generation).start(instruction="Commentate", previous_text="")
    rng = np.random.default_rng(0)
    events = []
    with session:
        for t in range(3):
            frames = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
            events += session.push(frames, float(t), float(t + 1))
    assert [(e.start, e.end) for e in events] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert all(e.text.strip() for e in events)
