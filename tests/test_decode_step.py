"""The static decode step (fixed shapes, CUDA-graph capturable) gives the dynamic path's tokens.

On a CPU the static step runs eagerly; where a GPU exists, the graph-captured step on the GPU is
checked against the CPU reference path (greedy decoding, float32). CI has no GPU and skips it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SMALL_STREAM, random_frames
from core.config import AccelerationConfig, CachePolicy, GenerationConfig
from core.engine import StreamingEngine
from core.loading import load_model

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=6, repetition_penalty=1.05)
POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)


def run(model, fast_decode: bool, chunks: int = 10, attention: str = "auto"):
    rng = np.random.default_rng(99)
    # Compiled (on a GPU) before the first chunk, so every chunk runs the path under test.
    acceleration = AccelerationConfig(
        static_decode=fast_decode, decode_attention=attention, compile_in_background=False
    )
    engine = StreamingEngine(
        model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, acceleration=acceleration
    )
    session = engine.start(previous_text="Blue against red, second half.")
    texts = []
    for k in range(chunks):
        texts += [c.text for c in session.push(random_frames(rng, 56, 84), k, k + 1)]
    if fast_decode:  # the engine really ran the decode attention under test
        assert session._static_step.attention == attention
    return session.cache.token_ids(), texts


@pytest.mark.parametrize("attention", ["matmul", "math"])
def test_static_step_gives_the_dynamic_paths_tokens(tiny_model, attention):
    assert run(tiny_model, fast_decode=True, attention=attention) == run(tiny_model, fast_decode=False)
    assert (
        tiny_model.model.config.text_config._attn_implementation == "streamvlm_causal"
    )  # restored after each step


def test_overlapped_decode_gives_the_same_tokens(tiny_model):
    """On a GPU the next step is launched before the host reads the token (and is wasted after a
    stop token); forced on here, where launches run at once, it must change nothing. Sampled hot
    and long so that some replies stop early and some run to the limit."""
    hot = GenerationConfig(temperature=1.5, max_new_tokens=30, seed=3)
    lengths = []

    def sampled(fast: bool):
        acceleration = AccelerationConfig(static_decode=fast, overlap=fast)
        engine = StreamingEngine(
            tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=hot, acceleration=acceleration
        )
        session = engine.start(previous_text="Blue against red, second half.")
        rng = np.random.default_rng(99)
        for k in range(12):
            session.push(random_frames(rng, 56, 84), k, k + 1)
            lengths.append(session.last_stats.new_tokens)
        return session.cache.token_ids()

    overlapped = sampled(True)
    assert overlapped == sampled(False)
    assert min(lengths) < hot.max_new_tokens and max(lengths) == hot.max_new_tokens


def test_static_step_survives_buffer_growth(tiny_model):
    engine = StreamingEngine(
        tiny_model,
        stream=SMALL_STREAM,
        cache=CachePolicy(mode="none"),
        generation=GREEDY,
        acceleration=AccelerationConfig(static_decode=True),
    )
    session = engine.start()
    rng = np.random.default_rng(0)
    start = session.cache.capacity
    for k in range(40):  # full attention: the buffers must grow at least once
        session.push(random_frames(rng, 112, 112), k, k + 1)
    assert session.cache.capacity > start
    reference = StreamingEngine(
        tiny_model,
        stream=SMALL_STREAM,
        cache=CachePolicy(mode="none"),
        generation=GREEDY,
        acceleration=AccelerationConfig(static_decode=False),
    ).start()
    rng = np.random.default_rng(0)
    for k in range(40):
        reference.push(random_frames(rng, 112, 112), k, k + 1)
    assert session.cache.token_ids() == reference.cache.token_ids()


@pytest.mark.gpu
def test_gpu_graph_path_gives_the_cpu_reference_tokens(tiny_dir):
    torch.backends.cudnn.allow_tf32 = False  # the vision tower's patch convolution: full float32
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = load_model(tiny_dir, device="cpu", dtype="float32")
    gpu = load_model(tiny_dir, device="cuda", dtype="float32")
    decided = StreamingEngine(gpu, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY).decided
    assert decided.static_decode and decided.cuda_graphs and decided.overlap
    gpu_tokens = run(gpu, fast_decode=True, chunks=12)
    assert gpu_tokens == run(cpu, fast_decode=False, chunks=12)
