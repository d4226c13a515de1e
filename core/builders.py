"""Models without a checkpoint: the tiny random-weight Qwen2.5-VL and full-size random weights.

`build_tiny_model` writes a tiny random-weight Qwen2.5-VL (real transformers classes) with a
byte-level BPE tokenizer trained offline on text shipped with the project (`build_tokenizer`);
tests, CI and smoke runs use it. `build_random_model` instantiates full-size random weights from a
config written in code (`qwen25_vl_7b_config`), for speed and memory measurements without a
checkpoint. Synthetic clips to feed them come from `core.synthetic`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.config import AccelerationConfig
from core.errors import ConfigError
from core.loading import adapt_weights, resolve_attention, resolve_device, resolve_dtype
from core.model import StreamModel
from core.quantize import require
from core.spec import QWEN_SPECIAL_TOKENS, SPECIAL_NAMES

# The chat template Qwen2.5-VL checkpoints ship (the processor needs one to be complete).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
TINY_VOCAB = 640
TINY_MARK = "streamvlm-tiny.json"  # written by build_tiny_model: what build-tiny may overwrite


def build_tokenizer(vocab_size: int = TINY_VOCAB) -> Any:
    """A byte-level BPE trained offline on the shipped corpus, with Qwen2's pre-tokenizer and specials."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import Qwen2Tokenizer

    # Train with exactly the pre-tokenizer Qwen2Tokenizer installs, so merges line up with its splits.
    template = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = template.backend_tokenizer.normalizer
    bpe.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    corpus = CORPUS.read_text()
    bpe.train_from_iterator([corpus] * 4, trainer=trainer)
    state = bpe.model.__getstate__()
    import json

    trained = json.loads(state) if isinstance(state, (str, bytes)) else state
    vocab, merges = trained["vocab"], trained["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    from tokenizers import AddedToken

    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True
    )
    return tokenizer


def _qwen_vl_config(tokenizer: Any, text: dict, vision: dict) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_NAMES.items()}
    text = {
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": text.pop("mrope_section"),
        },
        "bos_token_id": ids["endoftext"],
        "eos_token_id": ids["im_end"],
        "pad_token_id": ids["endoftext"],
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "max_position_embeddings": 128000,
        **text,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=False,
    )


def tiny_config(tokenizer: Any, num_layers: int = 2) -> Any:
    """A Qwen2.5-VL config small enough to run in milliseconds on a CPU, same structure as the 7B."""
    vocab = -(-len(tokenizer) // 64) * 64
    text = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "mrope_section": [2, 3, 3],  # head_dim 16: 8 rotary pairs split temporal/height/width
        # Wider than the default 0.02 init, so attention is peaked and positions visibly matter.
        "initializer_range": 0.1,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64,
        "tokens_per_second": 2,
    }
    return _qwen_vl_config(tokenizer, text, vision)


def qwen25_vl_7b_config(tokenizer: Any) -> Any:
    """The Qwen2.5-VL-7B architecture (as in its published config.json), for random-weight benchmarks."""
    text = {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "mrope_section": [16, 24, 24],
    }
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "out_hidden_size": 3584,
        "tokens_per_second": 2,
    }
    return _qwen_vl_config(tokenizer, text, vision)


def _processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def build_tiny_model(path: str | os.PathLike, *, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random-weight Qwen2.5-VL with tokenizer and processor to `path`; return the path."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from core.config import StreamConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / TINY_MARK).write_text(json.dumps({"layers": num_layers, "seed": seed}) + "\n")
    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer, num_layers=num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    stream = StreamConfig()
    model.save_pretrained(path)
    _processor(tokenizer, stream.min_pixels, stream.max_pixels).save_pretrained(path)
    return path


def tiny_model_dir() -> Path:
    """Where `--model tiny` keeps its built model (built on first use, reused after)."""
    from core.paths import cache_root, make_output_folder

    cache = make_output_folder(cache_root(), "streamvlm's cache folder (STREAMVLM_CACHE)")
    path = cache / "tiny-model-v1"
    if not (path / "config.json").is_file():
        # Built beside it and renamed into place: a build cut short (Ctrl+C, a full disk) leaves no
        # half-written model that later starts would take for a whole one.
        partial = Path(tempfile.mkdtemp(prefix=f"{path.name}.partial-", dir=cache))
        try:
            build_tiny_model(partial)
            try:
                partial.rename(path)
            except OSError:  # another process finished first (or left a broken folder: said at load)
                if not (path / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return path


def is_tiny_build(path: str | os.PathLike) -> bool:
    """Whether `path` holds a model written by `build_tiny_model` (its mark file)."""
    return (Path(path) / TINY_MARK).is_file()


def build_random_model(
    preset: str = "7b",
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "auto",
    seed: int = 0,
    acceleration: AccelerationConfig | None = None,
    weights: str = "bf16",
) -> StreamModel:
    """Full-size random weights (no checkpoint needed): the right way to measure speed and memory.
    `weights` and `acceleration.fuse_projections` transform them as `core.loading.load_model` does."""
    require(weights, resolve_device(device))
    model, tokenizer, processor = _random_checkpoint(preset, device, dtype, attn, seed)
    adapt_weights(model, weights, acceleration)
    return StreamModel(
        model, tokenizer, name=f"random-{preset}", processor=processor, acceleration=acceleration
    )


def write_random_checkpoint(
    folder: str | os.PathLike, preset: str = "7b", *, device: str = "auto", dtype: str = "auto", seed: int = 0
) -> Path:
    """Random weights of `preset` saved as a checkpoint folder (what a user's `--model DIR` is), for
    measuring loading and startup. The plain transformers model is saved: a `StreamModel` adapts its
    modules for inference (the vision MLP padded on a GPU), which a checkpoint must not carry."""
    folder = Path(folder)
    model, tokenizer, processor = _random_checkpoint(preset, device, dtype, "auto", seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _random_checkpoint(preset: str, device: str, dtype: str, attn: str, seed: int):
    """(the transformers model, tokenizer, processor) of `preset` with random weights."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    presets = {"7b": qwen25_vl_7b_config, "tiny": tiny_config}
    if preset not in presets:
        raise ConfigError(f"unknown random-weights preset '{preset}'; use one of {', '.join(presets)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = build_tokenizer()
    config = presets[preset](tokenizer)
    config._attn_implementation = resolve_attention(attn, torch_device, torch_dtype)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(torch_dtype)
        with torch.device(torch_device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model, tokenizer, _processor(tokenizer, 100 * 28 * 28, 768 * 28 * 28)
