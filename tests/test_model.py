"""The model adapter: the tiny model on disk, its tokenizer, loading errors, device/dtype/attention
choices, the 7B shapes, and the language-model forward against the stock model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import DynamicCache, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from core.builders import qwen25_vl_7b_config
from core.errors import ConfigError, ModelNotFoundError
from core.loading import load_model, resolve_attention, resolve_device, resolve_dtype
from core.model import StreamModel

HAS_CUDA = torch.cuda.is_available()
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
CPU = torch.device("cpu")

# -- the tiny model on disk ------------------------------------------------------------------------


def test_tiny_model_folder_loads_through_the_normal_path(tiny_dir, tiny_model):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (tiny_dir / name).is_file(), name
    assert type(tiny_model.model) is Qwen2_5_VLForConditionalGeneration
    assert isinstance(tiny_model.processor, Qwen2_5_VLProcessor)  # AutoProcessor found it on disk
    assert tiny_model.name == str(tiny_dir)
    assert (tiny_model.device, tiny_model.dtype) == (CPU, torch.float32)
    assert tiny_model.attention_backend == "streamvlm_causal"  # SDPA through the engine's own calls


@pytest.mark.parametrize(
    "field, token, config_key",
    [
        ("video_pad", "<|video_pad|>", "video_token_id"),
        ("vision_start", "<|vision_start|>", "vision_start_token_id"),
        ("vision_end", "<|vision_end|>", "vision_end_token_id"),
        ("im_start", "<|im_start|>", None),
        ("im_end", "<|im_end|>", None),
        ("endoftext", "<|endoftext|>", None),
    ],
)
def test_special_ids_come_from_the_tokenizer(tiny_model, field, token, config_key):
    token_id = getattr(tiny_model.special, field)
    assert token_id == tiny_model.tokenizer.convert_tokens_to_ids(token)
    assert tiny_model.tokenizer.convert_ids_to_tokens(token_id) == token
    if config_key:
        assert token_id == getattr(tiny_model.model.config, config_key)


def test_special_ids_are_distinct_and_inside_the_vocabulary(tiny_model):
    ids = list(vars(tiny_model.special).values())
    assert len(set(ids)) == len(ids)
    assert len(tiny_model.tokenizer) <= tiny_model.text.vocab_size
    assert max(ids) < len(tiny_model.tokenizer)


@pytest.mark.parametrize(
    "text, pieces",
    [
        # What the real Qwen2 tokenizer gives: "\n\n" is one token, " ..." one token with its space.
        ("assistant\n\n goal ...", ["assistant", "ĊĊ", "Ġgoal", "Ġ..."]),
        ("<|im_start|>assistant\n", ["<|im_start|>", "assistant", "Ċ"]),
        (" ...", ["Ġ..."]),
    ],
)
def test_tokenizer_splits_like_qwen(tiny_model, text, pieces):
    assert tiny_model.tokenizer.tokenize(text) == pieces
    # Our own templates name special tokens; text from a user never becomes one (it stays its characters).
    assert tiny_model.decode(tiny_model.spec.encode_template(text)) == text.replace("<|im_start|>", "")
    assert tiny_model.decode(tiny_model.encode(text)) == text


# -- loading errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_name, fragment",
    [
        (lambda tmp: str(tmp / "missing"), "does not exist"),
        (lambda tmp: str(tmp / "empty"), "no config.json"),
        (lambda tmp: "./nope/model", "does not exist"),
        (lambda tmp: "~/nope/model", "does not exist"),
        (lambda tmp: "no-such-org/no-such-model", "could not be found locally or downloaded"),
    ],
    ids=["missing-folder", "no-config", "relative-path", "home-path", "unknown-hub-id"],
)
def test_missing_models_raise_one_line_errors_naming_the_model(tmp_path, make_name, fragment):
    (tmp_path / "empty").mkdir()
    name = make_name(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        load_model(name, device="cpu", dtype="float32")
    message = str(info.value)
    assert "\n" not in message
    assert name in message and fragment in message


# -- device, dtype and attention -------------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only choice")
def test_auto_choices_on_cpu():
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    assert (device, dtype, resolve_attention("auto", device, dtype)) == (CPU, torch.float32, "sdpa")


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("auto", torch.float32),
    ],
)
def test_resolve_dtype(dtype, expected):
    assert resolve_dtype(dtype, CPU) == expected


@pytest.mark.parametrize(
    "attn, device, dtype, expected",
    [
        ("sdpa", CPU, torch.float32, "sdpa"),
        ("eager", CPU, torch.float32, "eager"),
        ("auto", CPU, torch.bfloat16, "sdpa"),
        pytest.param(
            "auto",
            torch.device("cuda"),
            torch.bfloat16,
            "sdpa",
            marks=pytest.mark.skipif(HAS_FLASH_ATTN, reason="flash-attn is installed"),
        ),
    ],
)
def test_resolve_attention(attn, device, dtype, expected):
    assert resolve_attention(attn, device, dtype) == expected


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: resolve_device("tpu"), "unknown device 'tpu'"),
        pytest.param(
            lambda: resolve_device("cuda"),
            "no CUDA GPU",
            marks=pytest.mark.skipif(HAS_CUDA, reason="a GPU is present"),
        ),
        pytest.param(
            lambda: resolve_device("cuda:1"),
            "no CUDA GPU",
            marks=pytest.mark.skipif(HAS_CUDA, reason="a GPU is present"),
        ),
        (lambda: resolve_dtype("float64", CPU), "unknown dtype 'float64'"),
        (lambda: resolve_dtype("bf16", CPU), "unknown dtype 'bf16'"),
        (lambda: resolve_attention("flash", CPU, torch.float32), "unknown attention backend 'flash'"),
        pytest.param(
            lambda: resolve_attention("flash_attention_2", torch.device("cuda"), torch.bfloat16),
            "flash-attn",
            marks=pytest.mark.skipif(HAS_FLASH_ATTN, reason="flash-attn is installed"),
        ),
        (lambda: resolve_attention("flash_attention_2", CPU, torch.float32), "flash"),
    ],
    ids=["device", "cuda", "cuda-1", "float64", "bf16", "attention", "flash-missing", "flash-on-cpu"],
)
def test_unusable_choices_raise_config_errors(call, fragment):
    with pytest.raises(ConfigError, match=fragment):
        call()


# -- the 7B shapes ---------------------------------------------------------------------------------


def test_7b_config_has_the_published_shapes(tiny_model):
    config = qwen25_vl_7b_config(tiny_model.tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(8.29e9, rel=0.01)
    spec = StreamModel(model, tiny_model.tokenizer, name="7b-shapes").text
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.hidden_size) == (28, 4, 128, 3584)
    assert spec.mrope_section == (16, 24, 24)
    assert spec.rope_theta == 1e6
    assert spec.kv_bytes_per_token(torch.bfloat16) == 28 * 2 * 4 * 128 * 2 == 57344
    assert spec.kv_bytes_per_token(torch.float32) == 2 * 57344


def test_tiny_specs(tiny_model):
    text, vision = tiny_model.text, tiny_model.vision
    assert (text.num_layers, text.num_kv_heads, text.head_dim, text.mrope_section) == (2, 2, 16, (2, 3, 3))
    assert text.kv_bytes_per_token(torch.float32) == 2 * 2 * 2 * 16 * 4
    assert (vision.patch_size, vision.temporal_patch_size, vision.merge_size, vision.factor) == (14, 2, 2, 28)
    assert tiny_model.inv_freq.shape == (text.head_dim // 2,)


# -- the forward -----------------------------------------------------------------------------------


@torch.inference_mode()
def stock_logits(model: StreamModel, ids: torch.Tensor) -> torch.Tensor:
    """Logits [n, vocab] of the stock model on the same embeddings and 3-D positions."""
    n = len(ids)
    positions = torch.arange(n).expand(3, 1, n)
    out = model.model(inputs_embeds=model.embed(ids)[None], position_ids=positions, use_cache=False)
    return out.logits[0].float()


@pytest.mark.parametrize("text", ["hello there, the goal ...", "a"])
def test_forward_equals_the_stock_model(tiny_model, text):
    ids = torch.tensor(tiny_model.encode(text))
    n = len(ids)
    cache = DynamicCache()
    last = tiny_model.forward(tiny_model.embed(ids), torch.arange(n).expand(3, n), cache)
    expected = stock_logits(tiny_model, ids)
    assert last.shape == (tiny_model.text.vocab_size,) and last.dtype == torch.float32
    torch.testing.assert_close(last, expected[-1], rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == n

    every = tiny_model.forward(
        tiny_model.embed(ids), torch.arange(n).expand(3, n), DynamicCache(), all_logits=True
    )
    torch.testing.assert_close(every, expected, rtol=1e-5, atol=1e-5)


def test_forward_in_two_steps_appends_to_the_cache(tiny_model):
    ids = torch.tensor(tiny_model.encode("the goal ... and then assistant"))
    n, split = len(ids), 3
    positions = torch.arange(n).expand(3, n)
    cache = DynamicCache()
    tiny_model.forward(tiny_model.embed(ids[:split]), positions[:, :split], cache)
    last = tiny_model.forward(tiny_model.embed(ids[split:]), positions[:, split:], cache)
    assert cache.get_seq_length() == n
    torch.testing.assert_close(last, stock_logits(tiny_model, ids)[-1], rtol=1e-5, atol=1e-5)
