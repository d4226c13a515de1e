"""Fused projections (core/fused.py): q/k/v as one matmul and gate/up as one give the unfused outputs,
the same logits and, through the engine, the same greedy tokens: on the dynamic path, the static decode
step and the compiled modules (CPU, float32), and on a GPU with CUDA graphs (`gpu` tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SMALL_STREAM, random_frames
from core.config import AccelerationConfig, CachePolicy, GenerationConfig, load_config_file
from core.engine import StreamingEngine
from core.fused import FusedLinear, FusedMLP, FusedPart, fuse_projections, stacked_linear
from core.loading import load_model, model_from_config

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=6, repetition_penalty=1.05)
POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
FUSED = AccelerationConfig(fuse_projections=True)
UNFUSED = AccelerationConfig(fuse_projections=False)  # the reference (auto fuses on a GPU)


def stream_tokens(model, acceleration: AccelerationConfig, chunks: int = 8) -> list[int]:
    """Every token a greedy session caches over `chunks` chunks of random frames."""
    engine = StreamingEngine(
        model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, acceleration=acceleration
    )
    session = engine.start(previous_text="Blue against red, second half.")
    rng = np.random.default_rng(99)
    for k in range(chunks):
        session.push(random_frames(rng, 56, 84), k, k + 1)
    return session.cache.token_ids()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    from transformers import DynamicCache

    positions = torch.arange(len(ids), device=ids.device).expand(3, -1)
    return model.forward(model.embed(ids), positions, DynamicCache(), all_logits=True)


@pytest.fixture(scope="module")
def fused_model(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="float32", acceleration=FUSED)


def test_loading_fuses_every_layer_only_when_asked(tiny_model, fused_model):
    for layer in fused_model.model.model.language_model.layers:
        assert isinstance(layer.mlp, FusedMLP) and isinstance(layer.self_attn.q_proj, FusedPart)
        assert layer.self_attn.qkv_proj.linear.out_features == 64 + 2 * 32  # q and the two shared k/v heads
    for layer in tiny_model.model.model.language_model.layers:
        assert not isinstance(layer.mlp, FusedMLP) and isinstance(layer.self_attn.q_proj, nn.Linear)
    assert fuse_projections(fused_model.model) == 0  # already fused: nothing changes


def test_the_config_file_key_fuses_at_load(tiny_dir, tmp_path):
    path = tmp_path / "fused.toml"
    path.write_text(
        f'[model]\npath = "{tiny_dir}"\ndevice = "cpu"\n[acceleration]\nfuse_projections = true\n'
    )
    model = model_from_config(load_config_file(path))
    assert isinstance(model.model.model.language_model.layers[0].mlp, FusedMLP)


def test_fused_model_gives_the_same_logits(tiny_model, fused_model):
    ids = torch.arange(3, 200) % 600
    expected = logits(tiny_model, ids)
    torch.testing.assert_close(logits(fused_model, ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("acceleration", [AccelerationConfig(), AccelerationConfig(static_decode=True)])
def test_fused_model_gives_the_same_greedy_tokens_through_the_engine(tiny_model, fused_model, acceleration):
    assert stream_tokens(fused_model, acceleration) == stream_tokens(tiny_model, acceleration)


def test_fused_model_gives_the_same_tokens_through_batched_sessions(tiny_model, fused_model):
    """The server's path: two sessions on one scheduler, their prefills ragged and their decode steps
    batched rows (core/batch.py), over fused projections."""
    import threading

    def together(model) -> list[list[int]]:
        engine = StreamingEngine(
            model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, sessions=2, batched=True
        )
        out: list[list[int]] = [[], []]

        def run(index: int) -> None:
            session = engine.start(previous_text=["Blue against red.", "Cup final, rain."][index])
            rng = np.random.default_rng(index)
            for k in range(5):
                session.push(random_frames(rng, 56, 84 + 28 * index), k, k + 1)
            out[index] = session.cache.token_ids()
            session.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        return out

    assert together(fused_model) == together(tiny_model)


def test_fused_compiled_modules_in_the_static_step_give_the_same_tokens(tiny_dir, tiny_model):
    from torch._dynamo.utils import counters

    model = load_model(tiny_dir, device="cpu", dtype="float32", acceleration=FUSED)  # compiled: not shared
    if not model.compile_modules():
        pytest.skip("torch.compile does not work on this machine")
    graphs = counters["stats"]["unique_graphs"]
    tokens = stream_tokens(model, AccelerationConfig(static_decode=True), chunks=4)
    assert counters["stats"]["unique_graphs"] > graphs  # the fused MLP ran compiled
    assert tokens == stream_tokens(tiny_model, AccelerationConfig(static_decode=True), chunks=4)


def test_stacked_linear_computes_its_parts_side_by_side():
    torch.manual_seed(0)
    parts = [nn.Linear(8, 5), nn.Linear(8, 3, bias=False), nn.Linear(8, 4)]
    x = torch.randn(2, 7, 8)
    stacked = stacked_linear(parts)
    expected = torch.cat([p(x) for p in parts], dim=-1)
    torch.testing.assert_close(stacked(x), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="one input width"):
        stacked_linear([nn.Linear(8, 2), nn.Linear(6, 2)])


def test_fused_parts_give_their_own_projection_in_any_call_order():
    """The stock attention calls q, k, v on one input: one matmul. Any other order or input must still
    give each part its own projection, and nothing is held once all three have taken theirs."""
    torch.manual_seed(0)
    q, k, v = nn.Linear(8, 6), nn.Linear(8, 4), nn.Linear(8, 4)
    fused = FusedLinear([q, k, v])
    parts = [FusedPart(fused, i) for i in range(3)]
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    calls = []
    fused.linear.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for order in ([0, 1, 2], [2, 0, 1]):
            calls.clear()
            outs = {i: parts[i](x) for i in order}
            assert len(calls) == 1 and fused._input is None
            for i, linear in enumerate((q, k, v)):
                torch.testing.assert_close(outs[i], linear(x), rtol=1e-6, atol=1e-6)
        # another input between two parts, and a part taken twice: recomputed, never a stale slice
        assert torch.allclose(parts[0](x), q(x), atol=1e-6)
        assert torch.allclose(parts[1](y), k(y), atol=1e-6)
        assert torch.allclose(parts[1](y), k(y), atol=1e-6)
        assert torch.allclose(parts[2](x), v(x), atol=1e-6)
    assert [name for name, _ in nn.ModuleList(parts).named_modules()] == ["", "0", "1", "2"]


def test_fused_mlp_equals_the_gated_mlp():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    torch.manual_seed(0)
    config = type("C", (), {"hidden_size": 16, "intermediate_size": 24, "hidden_act": "silu"})()
    mlp = Qwen2MLP(config)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(FusedMLP(mlp)(x), mlp(x), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_fused_model_on_the_gpu_gives_the_same_tokens_with_compile_and_graphs(tiny_dir):
    """Everything a GPU runs (compiled modules, CUDA graphs, the static step), in float32: the unfused
    tokens exactly."""
    plain = load_model(tiny_dir, device="cuda", dtype="float32", acceleration=UNFUSED)
    fused = load_model(tiny_dir, device="cuda", dtype="float32", acceleration=FUSED)
    on = AccelerationConfig(compile=True, compile_in_background=False, cuda_graphs=True, static_decode=True)
    assert stream_tokens(fused, on, chunks=10) == stream_tokens(plain, on, chunks=10)


@pytest.mark.gpu
def test_fused_model_on_the_gpu_in_bf16_gives_nearly_the_same_logits(tiny_dir):
    """In bf16 the fused matmul may sum in another order than the three it replaces: the logits stay
    within bf16's rounding of the unfused ones."""
    plain = load_model(tiny_dir, device="cuda", dtype="bfloat16", acceleration=UNFUSED)
    fused = load_model(tiny_dir, device="cuda", dtype="bfloat16", acceleration=FUSED)
    ids = (torch.arange(3, 200) % 600).cuda()
    expected = logits(plain, ids)
    assert float((logits(fused, ids) - expected).norm() / expected.norm()) < 2e-2


def test_the_efficiency_benchmark_switches_fusion_on_and_reports_decode_bandwidth(tmp_path, capsys):
    import json

    from evals.__main__ import main

    out = tmp_path / "eff"
    argv = ["efficiency", "--random-weights", "tiny", "--device", "cpu", "--resolution", "56x56"]
    argv += ["--seconds", "3", "--warmup", "0", "--tokens", "4", "--policies", "streaming"]
    assert main([*argv, "--fuse-projections", "on", "--out", str(out)]) == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    meta = data["meta"]
    assert meta["fuse_projections"] is True and meta["weights"] == "bf16"
    # the tiny language model's layers, final norm and head in float32, and its K/V per token
    assert meta["decode_weight_bytes"] == 4 * (
        2 * (64 * 128 + 128 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 64 * 640
    )
    assert meta["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # k and v, 2 layers, 2 heads of 16, float32
    for row in data["chunks"]:
        read = meta["decode_weight_bytes"] + row["cached_tokens"] * meta["kv_bytes_per_token"]
        assert row["decode_gbps"] == pytest.approx(read / row["decode_ms_per_token"] / 1e6)
    assert "decode GB/s" in (out / "table.md").read_text()


def test_auto_fuses_on_a_gpu_only_and_an_explicit_setting_wins():
    from core.fused import wanted

    assert wanted(None, "cuda") and wanted(None, torch.device("cuda", 1))
    assert not wanted(None, "cpu") and not wanted(None, "mps")
    assert wanted(True, "cpu") and not wanted(False, "cuda")


def test_a_model_loaded_with_other_projections_is_another_model():
    """The app keeps a loaded model across runs by this key: fusing projections changes the model, so a run
    that asks otherwise loads anew (on a CPU, where auto leaves them unfused)."""
    from core.config import AccelerationConfig, EngineConfig, ModelConfig
    from core.loading import loaded_model_key

    plain = EngineConfig(model=ModelConfig(path="tiny", device="cpu"))
    fused_config = EngineConfig(
        model=ModelConfig(path="tiny", device="cpu"), acceleration=AccelerationConfig(fuse_projections=True)
    )
    assert loaded_model_key(plain) == loaded_model_key(
        EngineConfig(model=ModelConfig(path="tiny", device="cpu"))
    )
    assert loaded_model_key(plain) != loaded_model_key(fused_config)
    assert loaded_model_key(plain) != loaded_model_key(
        EngineConfig(model=ModelConfig(path="tiny", device="cpu", dtype="float32"))
    )
