"""The model adapter: everything streamvlm knows about Qwen2.5-VL sits in this file.

`load_model` opens a checkpoint (local folder or hub id) and wraps it in a `StreamModel`, which
exposes only what the engine needs through the stock transformers modules: the vision tower
(`get_video_features`), the token embeddings, the language model driven with `inputs_embeds`,
explicit 3-D `position_ids` and a `Cache` object, and the LM head on the last position.

`build_tiny_model` writes a tiny random-weight Qwen2.5-VL (real transformers classes) with a
byte-level BPE tokenizer trained offline on text shipped with the project; tests, CI and smoke
runs use it. `build_random_model` instantiates full-size random weights from a config written in
code, for speed and memory measurements without a checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError, ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
ATTENTION_BACKENDS = ("auto", "sdpa", "eager", "flash_attention_2", "flex_attention")
MATMUL_ALIGNMENT = 64  # elements: keeps bf16 rows 16-byte aligned for cuBLAS's Hopper kernels
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Qwen2's special tokens (the tiny tokenizer's ids differ from Qwen's; they are always read from it).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

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


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the structural tokens, read from the tokenizer (never hard-coded)."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    video_pad: int
    endoftext: int


@dataclass(frozen=True)
class VisionSpec:
    """How frames become vision tokens, read from the checkpoint's config and processor."""

    patch_size: int  # 14
    temporal_patch_size: int  # 2 frames per temporal group
    merge_size: int  # 2x2 patches per LLM token
    tokens_per_second: float  # temporal position units per second of video
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this many pixels."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class TextSpec:
    """Shapes of the language model's KV cache and its rotary frequencies."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope_theta: float
    mrope_section: tuple[int, ...]

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return (
            self.num_layers
            * 2
            * self.num_kv_heads
            * self.head_dim
            * torch.empty((), dtype=dtype).element_size()
        )


class StreamModel:
    """A loaded Qwen2.5-VL plus its tokenizer, seen through the few calls the engine makes."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        processor: Any | None = None,
        compile: bool | None = None,
    ) -> None:
        """`compile` fuses elementwise work with torch.compile (`compile_modules`); default: on a GPU."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        config = model.config
        text, vision = config.text_config, config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
        self.text = TextSpec(
            num_layers=text.num_hidden_layers,
            num_kv_heads=text.num_key_value_heads,
            head_dim=head_dim,
            hidden_size=text.hidden_size,
            vocab_size=text.vocab_size,
            rope_theta=float(rope.get("rope_theta", getattr(text, "rope_theta", 1e6))),
            mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
        )
        video_processor = getattr(processor, "video_processor", None)
        self.vision = VisionSpec(
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
            tokens_per_second=float(vision.tokens_per_second),
            image_mean=tuple(
                getattr(video_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
            ),
            image_std=tuple(
                getattr(video_processor, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
            ),
        )
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIAL_NAMES.items()}
        missing = [
            token for name, token in _SPECIAL_NAMES.items() if ids[name] in (None, tokenizer.unk_token_id)
        ]
        if missing:
            raise ModelNotFoundError(
                f"the tokenizer of '{name}' lacks Qwen's special tokens {', '.join(missing)}; "
                "pass a Qwen2.5-VL checkpoint"
            )
        self.special = SpecialTokens(**ids)
        if self.special.video_pad != config.video_token_id:
            raise ModelNotFoundError(
                f"'{name}' is inconsistent: the tokenizer's <|video_pad|> is {self.special.video_pad} "
                f"but the config's video_token_id is {config.video_token_id}"
            )
        from core import attention, kernels
        from core.vision import VisionRunner

        if self.model.config._attn_implementation == "sdpa":
            # The engine's own SDPA calls for its three attention shapes (core/attention.py).
            attention.register()
            self.model.set_attn_implementation(
                {"text_config": attention.CAUSAL_PREFILL, "vision_config": attention.VARLEN_VISION}
            )
        self._vision = VisionRunner(self.model, use_graph=self.device.type == "cuda")
        if self.device.type == "cuda":
            for block in self.model.model.visual.blocks:
                align_mlp_width(block.mlp, MATMUL_ALIGNMENT)
            kernels.warm_up(self.text.head_dim, self.dtype, self.device)
        self.compiled = False
        if compile if compile is not None else self.device.type == "cuda":
            self.compile_modules()
        language_model = self.model.model.language_model
        # transformers renamed `past_key_values` to `cache`; accept checkpoints on either side of it.
        params = inspect.signature(language_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def compile_modules(self) -> None:
        """Fuse the elementwise work between the matmuls with `torch.compile` on stock submodules.

        A decode step is memory-bound and its RMSNorms (float32 upcasts, a mean, a rescale) and
        SiLU-gated MLP glue are dozens of tiny kernels per layer; a vision block's norms, float32
        rotary and MLP glue are the same over 2,880 patches. Compiled, each chain becomes one or two
        kernels (docs/performance.md has the measured gain). The language model's norms and MLPs and
        the vision blocks and merger are compiled; attention and the cache stay eager. Compilation
        happens at the first call of each shape (seconds, once per process; the CUDA graphs are
        captured after it), and a platform where it cannot work is left uncompiled with a warning.
        """
        if self.compiled:
            return
        if not _compile_works(self.device):
            return
        language_model, visual = self.model.model.language_model, self.model.model.visual
        for layer in language_model.layers:
            for part in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
                part.compile()
        language_model.norm.compile()
        for block in visual.blocks:
            block.compile()
        visual.merger.compile()
        self.compiled = True

    def _stance(self, tokens: int):
        """Prefill runs the compiled modules' Python originals.

        Each compiled module checks its guards on the host at every call (85 calls a forward). In the
        CUDA graphs (decode, vision) that is paid once, at capture; the prefill runs eagerly with a
        new length every chunk, and there the checks cost more than the fusion saves (an H100 prefill:
        50.8 ms compiled vs 40.2 ms eager, docs/performance.md).
        """
        if self.compiled and tokens > 1:
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    # -- facts -----------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @cached_property
    def inv_freq(self) -> torch.Tensor:
        """Rotary inverse frequencies [head_dim / 2], float32, as the model's rotary module uses them."""
        rotary = self.model.model.language_model.rotary_emb
        return rotary.inv_freq.detach().to(self.device, torch.float32).clone()

    @property
    def attention_backend(self) -> str:
        return self.model.config.text_config._attn_implementation

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special-token parsing surprises: specials are written explicitly)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- the three calls the engine makes ---------------------------------------------------------

    @torch.inference_mode()
    def encode_video(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Vision tower: patchified frames [patches, C*T*P*P] and grid [1, 3] -> merged tokens [n, hidden]."""
        return self._vision(pixel_values, grid_thw).to(self.dtype)

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [n, hidden] for ids [n]."""
        return self.model.model.get_input_embeddings()(ids)

    @torch.inference_mode()
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        all_logits: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the language model over new tokens [n, hidden] at positions [3, n], appending to `cache`.

        Returns float32 logits of the last position [vocab] (or of every position [n, vocab]).
        `attention_mask` [1, 1, n, keys] (bool, True = attend) replaces the causal mask the model
        would build from the cache's length; the static decode step uses it.
        """
        with self._stance(embeds.shape[0]):
            out = self.model.model.language_model(
                inputs_embeds=embeds.unsqueeze(0),
                position_ids=positions.unsqueeze(1),
                attention_mask=attention_mask,
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
        hidden = out.last_hidden_state[0]
        hidden = hidden if all_logits else hidden[-1]
        return self.model.lm_head(hidden).float()


def _compile_works(device: torch.device) -> bool:
    """Compile and run one small function first: torch.compile needs Triton and a C compiler."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.silu(x) * x + 1)
        probe(torch.ones(8, device=device))
        return True
    except Exception as exc:  # any toolchain failure means: run the stock modules eagerly
        log.warning(
            "torch.compile does not work here (%s); running uncompiled", str(exc).splitlines()[0][:200]
        )
        return False


def align_mlp_width(mlp: nn.Module, multiple: int) -> None:
    """Pad a gated MLP's hidden width with zero units up to a multiple of `multiple`, in place.

    The Qwen2.5-VL vision MLP is 3,420 wide: rows of 3,420 bf16 values are not 16-byte aligned, so
    cuBLAS cannot use its Hopper kernels and falls back to an Ampere one at ~190 TFLOP/s (12.8 of a
    chunk's ~19 ms of vision on an H100, docs/performance.md). A padded unit has zero gate and up
    weights and biases and a zero down-projection column: act(0) * 0 = 0 adds nothing, so outputs
    are unchanged. For inference only: the module no longer matches its config's width.
    """
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    width = gate.out_features
    pad = -width % multiple
    if pad == 0:
        return
    with torch.no_grad():
        for linear in (gate, up):
            linear.weight = nn.Parameter(
                torch.cat([linear.weight, linear.weight.new_zeros(pad, linear.in_features)]),
                requires_grad=False,
            )
            if linear.bias is not None:
                linear.bias = nn.Parameter(
                    torch.cat([linear.bias, linear.bias.new_zeros(pad)]), requires_grad=False
                )
            linear.out_features = width + pad
        down.weight = nn.Parameter(
            torch.cat([down.weight, down.weight.new_zeros(down.out_features, pad)], dim=1),
            requires_grad=False,
        )
        down.in_features = width + pad
    mlp.intermediate_size = width + pad


_SPECIAL_NAMES = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "video_pad": "<|video_pad|>",
    "endoftext": "<|endoftext|>",
}


# -- loading ---------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' asked for but no CUDA GPU is available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # bf16 where the hardware has it; float32 on CPUs, where bf16 matmuls are slow and imprecise.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def resolve_attention(attn: str, device: torch.device, dtype: torch.dtype) -> str:
    if attn not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attention backend '{attn}'; use one of {', '.join(ATTENTION_BACKENDS)}")
    flash_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if attn == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "attention backend flash_attention_2 needs the flash-attn package; install it or use sdpa"
            )
        if not flash_ok:
            raise ConfigError("flash_attention_2 runs only on a CUDA GPU in float16 or bfloat16; use sdpa")
    if attn == "auto":
        return "flash_attention_2" if flash_ok and importlib.util.find_spec("flash_attn") else "sdpa"
    return attn


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "auto",
    compile: bool | None = None,
) -> StreamModel:
    """Load a Qwen2.5-VL checkpoint from a local folder or a hub id (downloading it if needed).

    `name_or_path == "tiny"` builds (once) and loads the tiny random-weight model: a smoke mode.
    """
    from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    name = str(name_or_path)
    if name == "tiny":
        name = str(tiny_model_dir())
        log.warning("smoke mode: the tiny model has random weights, so its commentary is gibberish")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{path}' has no config.json; pass a folder written by save_pretrained")
        source = str(path)
    elif _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        source = name
    else:
        raise ModelNotFoundError(
            f"model folder '{name}' does not exist; pass an existing folder or a hub id like org/name"
        )

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    backend = resolve_attention(attn, torch_device, torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        try:
            processor = AutoProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            processor = None  # the engine needs only the tokenizer; the processor is a reference
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=backend, device_map=str(torch_device)
        )
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"model '{name}' could not be found locally or downloaded from the hub ({reason[:160]}); "
            "check the id, your network and HF_TOKEN, or pass a local folder"
        ) from None
    return StreamModel(model, tokenizer, name=name, processor=processor, compile=compile)


# -- building models without a checkpoint ---------------------------------------------------------

CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
TINY_VOCAB = 640


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

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIAL_NAMES.items()}
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
    root = Path(os.environ.get("STREAMVLM_CACHE", Path.home() / ".cache" / "streamvlm"))
    path = root / "tiny-model-v1"
    if not (path / "config.json").is_file():
        build_tiny_model(path)
    return path


def build_random_model(
    preset: str = "7b",
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "auto",
    seed: int = 0,
    compile: bool | None = None,
) -> StreamModel:
    """Full-size random weights (no checkpoint needed): the right way to measure speed and memory."""
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
    stream_processor = _processor(tokenizer, 100 * 28 * 28, 768 * 28 * 28)
    return StreamModel(model, tokenizer, name=f"random-{preset}", processor=stream_processor, compile=compile)
