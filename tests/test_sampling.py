"""TokenSampler: greedy, seeded draws, masks (padding rows, suppressed ids, early stops), and the
penalty and top-k/top-p filters checked against transformers' own logits processors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.config import GenerationConfig
from core.sampling import TokenSampler

CPU = torch.device("cpu")
NO_RECENT = torch.empty(0, dtype=torch.long)


def make_sampler(valid_vocab: int, stop_ids=(), suppress_ids=(), **generation) -> TokenSampler:
    config = GenerationConfig(**{"repetition_penalty": 1.0, "seed": 0, **generation})
    return TokenSampler(
        config, valid_vocab=valid_vocab, stop_ids=list(stop_ids), suppress_ids=list(suppress_ids), device=CPU
    )


def draw(sampler: TokenSampler, logits: torch.Tensor, n: int, recent=NO_RECENT, step: int = 0) -> list[int]:
    return [int(sampler(logits, recent, step)) for _ in range(n)]


def spread_logits(vocab: int, seed: int) -> torch.Tensor:
    """Distinct logits over a narrow range, so every token a filter keeps is drawn often."""
    order = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
    return torch.linspace(1.5, -1.5, vocab)[order]


def reference_scores(logits, recent, *, penalty=1.0, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """transformers' processors in generate's order: penalty, temperature, top-k, top-p."""
    ids, scores = recent[None], logits[None].clone()
    if penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores)
    scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores[0]


# -- greedy and seeds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits, expected",
    [
        ([0.1, 3.0, -1.0, 2.9], 1),
        ([-5.0, -4.0, -4.5], 1),
        ([1.0, 0.0, 0.0, 0.0, 1.5], 4),
        ([7.0], 0),
    ],
)
def test_greedy_returns_the_argmax(logits, expected):
    logits = torch.tensor(logits)
    for seed in (0, 1):
        sampler = make_sampler(len(logits), temperature=0.0, seed=seed)
        assert draw(sampler, logits, 5) == [expected] * 5


def test_same_seed_same_draws_different_seed_different_draws():
    logits = torch.zeros(32)
    first = draw(make_sampler(32, temperature=1.0, seed=7), logits, 40)
    again = draw(make_sampler(32, temperature=1.0, seed=7), logits, 40)
    other = draw(make_sampler(32, temperature=1.0, seed=8), logits, 40)
    assert first == again
    assert first != other
    assert len(set(first)) > 10  # the draws are random at all


# -- masks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0, 5.0])
def test_rows_past_the_vocabulary_are_never_sampled(temperature):
    logits = torch.zeros(12)
    logits[8:] = 50.0  # padding rows with the highest logits
    sampler = make_sampler(valid_vocab=8, temperature=temperature)
    drawn = draw(sampler, logits, 300)
    assert max(drawn) < 8
    if temperature:
        assert set(drawn) == set(range(8))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_suppressed_ids_are_never_sampled(temperature):
    logits = torch.zeros(10)
    logits[[2, 5]] = 50.0
    logits[7] = 1.0
    sampler = make_sampler(10, suppress_ids=[5, 2, 5], temperature=temperature)
    drawn = draw(sampler, logits, 300)
    assert not {2, 5} & set(drawn)
    if temperature == 0:
        assert drawn[0] == 7  # the best of what is left
    else:
        assert set(drawn) == set(range(10)) - {2, 5}


@pytest.mark.parametrize(
    "temperature, step, stop_allowed",
    [
        (0.0, 0, False),
        (0.0, 2, False),
        (0.0, 3, True),
        (1.0, 0, False),
        (1.0, 2, False),
        (1.0, 3, True),
        (1.0, 9, True),
    ],
)
def test_stop_ids_wait_for_min_new_tokens(temperature, step, stop_allowed):
    logits = torch.zeros(8)
    logits[[3, 6]] = 20.0  # two stop ids that win whenever they are allowed
    sampler = make_sampler(8, stop_ids=[3, 6], temperature=temperature, min_new_tokens=3)
    drawn = draw(sampler, logits, 200, step=step)
    stopped = {3, 6} & set(drawn)
    assert bool(stopped) == stop_allowed
    if stop_allowed:
        assert set(drawn) <= {3, 6}


# -- repetition penalty ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits, recent, penalty, expected",
    [
        ([2.0, 1.95], [0], 1.05, 1),  # positive logit divided: 2 / 1.05 = 1.905 < 1.95
        ([2.0, 1.95], [1], 1.05, 0),
        ([-1.0, -1.03], [0], 1.05, 1),  # negative logit multiplied: -1.05 < -1.03 (dividing would keep 0)
        ([-1.0, -1.03], [0], 1.0, 0),  # penalty 1 is off
        ([1.0, 0.9, 0.95], [0, 0, 0], 1.2, 2),  # a repeated id is penalised once, not three times
        ([1.0, 0.9], [1], 0.5, 1),  # a penalty below 1 rewards repetition
    ],
)
def test_repetition_penalty_greedy(logits, recent, penalty, expected):
    sampler = make_sampler(len(logits), temperature=0.0, repetition_penalty=penalty)
    assert int(sampler(torch.tensor(logits), torch.tensor(recent), 0)) == expected


# -- equal to transformers' processors -------------------------------------------------------------


@pytest.mark.parametrize(
    "generation, recent",
    [
        ({"repetition_penalty": 1.3}, [0, 3, 3, 7, 11]),
        ({"repetition_penalty": 1.05, "temperature": 0.7}, [1, 2, 4, 8]),
        ({"top_k": 5}, []),
        ({"top_k": 1}, []),
        ({"top_k": 4, "temperature": 0.5, "repetition_penalty": 1.5}, [0, 1, 2, 3, 4, 5]),
        ({"top_p": 0.5}, []),
        ({"top_p": 0.3, "temperature": 0.6}, []),
        ({"top_p": 0.9, "repetition_penalty": 2.0}, [5, 6, 7]),
        ({"top_k": 8, "top_p": 0.4}, []),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_filters_keep_what_transformers_keeps(generation, recent, seed):
    vocab = 16
    logits = spread_logits(vocab, seed)
    recent = torch.tensor(recent, dtype=torch.long)
    generation = {"temperature": 1.0, **generation}
    expected = reference_scores(
        logits,
        recent,
        penalty=generation.get("repetition_penalty", 1.0),
        temperature=generation["temperature"],
        top_k=generation.get("top_k", 0),
        top_p=generation.get("top_p", 1.0),
    )
    kept = set(torch.isfinite(expected).nonzero().flatten().tolist())

    drawn = draw(make_sampler(vocab, seed=seed, **generation), logits, 800, recent=recent)
    assert set(drawn) == kept
    # Same probabilities and the same generator give the same draws as transformers' scores would.
    generator = torch.Generator().manual_seed(seed)
    reference = [int(torch.multinomial(expected.softmax(-1), 1, generator=generator)) for _ in range(200)]
    assert drawn[:200] == reference


@pytest.mark.parametrize(
    "probs, top_p",
    [([0.5, 0.25, 0.125, 0.125], 0.5), ([0.5, 0.25, 0.125, 0.125], 0.75)],
)
def test_top_p_at_the_boundary_keeps_what_transformers_keeps(probs, top_p):
    logits = torch.tensor([math.log(p) for p in probs])
    expected = reference_scores(logits, NO_RECENT, top_p=top_p)
    kept = set(torch.isfinite(expected).nonzero().flatten().tolist())
    drawn = draw(make_sampler(len(probs), temperature=1.0, top_p=top_p), logits, 500)
    assert set(drawn) == kept


# Ops that make the host wait for the device (a read back, a blocking copy to it, a data-dependent shape)
# or that build a host tensor for one (`logits[ids] = -inf` makes a host scalar and index_put_ copies it
# over, synchronously: on the H200 that sync in every forced step left the GPU idle 1.3 ms per token).
WAITS_FOR_THE_DEVICE = {
    "aten.scalar_tensor.default",
    "aten.index_put_.default",
    "aten._to_copy.default",
    "aten.copy_.default",
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
}


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_draw_queues_only_device_work(temperature):
    """The engine queues the next forward behind the draw before it reads the token back
    (core/engine.py): nothing in a draw may wait for the device, with every option in play."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func))
            return func(*args, **(kwargs or {}))

    config = GenerationConfig(
        temperature=temperature, top_k=20, top_p=0.9, repetition_penalty=1.2, min_new_tokens=5, seed=1
    )
    sampler = TokenSampler(config, valid_vocab=90, stop_ids=[3, 4], suppress_ids=[7], device=torch.device("cpu"))
    logits, recent = torch.randn(100), torch.tensor([1, 2, 5])
    sampler(logits, recent, 0)  # the first call builds the banned mask, once
    with Ops() as ops:
        sampler(logits, recent, 0)  # step 0 < min_new_tokens: the stop tokens are masked too
    assert "aten.index_fill_.int_Scalar" in ops.seen  # the stop mask ran
    assert not ops.seen & WAITS_FOR_THE_DEVICE
