"""Loading a checkpoint: a local folder or a hub id, on a resolved device, dtype and attention.

`load_model("tiny")` builds (once) and loads the tiny random-weight model: a smoke mode.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core import quantize
from core.config import ATTENTION_BACKENDS, DTYPE_NAMES, AccelerationConfig, EngineConfig
from core.errors import ConfigError, ModelNotFoundError
from core.model import StreamModel
from core.prefetch import prefetch_weights

if TYPE_CHECKING:
    from core.download import ProgressCallback
    from core.engine import StreamingEngine

log = logging.getLogger(__name__)

DTYPES = dict(zip(DTYPE_NAMES, (None, torch.float32, torch.bfloat16, torch.float16), strict=True))


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


def model_folder(
    name: str | os.PathLike,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """The checkpoint folder `name` stands for: a local folder as is, 'tiny' built once, a hub id from
    the Hugging Face cache, downloaded first (with `progress` and `cancel`) when it is not complete
    there (core/download.py)."""
    name = str(name)
    if name == "tiny":
        from core.builders import tiny_model_dir

        return tiny_model_dir()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{path}' has no config.json; pass a folder written by save_pretrained")
        return path
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        from core.download import fetch

        return fetch(name, progress=progress, cancel=cancel)
    raise ModelNotFoundError(
        f"model folder '{name}' does not exist; pass an existing folder or a hub id like org/name"
    )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "auto",
    acceleration: AccelerationConfig | None = None,
    weights: str = "bf16",
) -> StreamModel:
    """Load a Qwen2.5-VL checkpoint from a local folder or a hub id (downloading it if needed).

    `name_or_path == "tiny"` builds (once) and loads the tiny random-weight model: a smoke mode.
    `weights` and `acceleration.fuse_projections`: the load-time transforms (`adapt_weights`).
    """
    from safetensors import SafetensorError
    from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from core.paths import cache_root

    name = str(name_or_path)
    if name == "tiny":
        log.warning("smoke mode: the tiny model has random weights, so its commentary is gibberish")
    source = str(model_folder(name))
    if name == "tiny":
        name = source
    prefetch_weights(
        source
    )  # the disk reads while the tokenizer and processor load (started earlier by the CLIs)

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    backend = resolve_attention(attn, torch_device, torch_dtype)
    quantize.require(weights, torch_device, torch_dtype)  # before reading gigabytes of weights
    _prewarm_compiler(source, torch_device, torch_dtype, acceleration)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        try:
            processor = AutoProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            processor = None  # the engine needs only the tokenizer; the processor is a reference
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=backend, device_map=str(torch_device)
        )
    except (OSError, ValueError, SafetensorError) as exc:
        # The folder is on this disk by now (downloaded complete, or built): a file in it is damaged,
        # cut short or of another model (a truncated .safetensors, a tokenizer.json that is not JSON).
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        again = (
            f"delete '{source}' and it is built again"
            if name == source and Path(source).parent == cache_root()
            else "copy or download it again"
        )
        raise ModelNotFoundError(
            f"the model folder '{source}' could not be loaded ({type(exc).__name__}: {reason[:160]}); a file "
            f"in it is damaged, incomplete or not of a Qwen2.5-VL checkpoint: {again}"
        ) from None
    adapt_weights(model, weights, acceleration)
    return StreamModel(model, tokenizer, name=name, processor=processor, acceleration=acceleration)


def _prewarm_compiler(
    source: str, device: torch.device, dtype: torch.dtype, acceleration: AccelerationConfig | None
) -> None:
    """Where the model will be compiled, the compiler's first use (imports, its tables, the toolchain)
    runs on a thread while the weights load (core/warmup.py says why), into this model's compile cache."""
    from transformers import AutoConfig

    from core.acceleration import Acceleration
    from core.compile_cache import compile_cache_dir, use_compile_cache
    from core.warmup import prewarm_compiler

    if not Acceleration.decide(acceleration or AccelerationConfig(), device).compile:
        return
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):  # the loading below says what is wrong with the folder
        return
    use_compile_cache(compile_cache_dir(config, dtype, device))
    prewarm_compiler(device)


def adapt_weights(model: torch.nn.Module, weights: str, acceleration: AccelerationConfig | None) -> None:
    """The load-time transforms of the language model's linear layers (transformers model, in place),
    in their one order: projections fused first (core/fused.py, when `acceleration.fuse_projections`
    asks), so a fused projection is quantized as the one matmul it is; then `weights` (core/quantize.py)."""
    from core import fused

    device = next(model.parameters()).device
    if fused.wanted(acceleration.fuse_projections if acceleration else None, device):
        fused.fuse_projections(model)
    quantize.quantize_language_model(model, weights)


def loaded_model_key(config: EngineConfig) -> tuple:
    """What makes the model `model_from_config` loads differ: two configs with the same key load the same
    model (the model section, and the load-time transforms `adapt_weights` applies); a kept model is reused
    for the same key (the app keeps one across runs)."""
    from core import fused

    device = resolve_device(config.model.device)
    return (config.model, fused.wanted(config.acceleration.fuse_projections, device))


def model_from_config(config: EngineConfig) -> StreamModel:
    """The model of `config.model` (path, device, dtype, attention, weights), asking for
    `config.acceleration`."""
    m = config.model
    if not m.path:
        raise ConfigError("no model given; pass --model (a checkpoint folder, a hub id or 'tiny')")
    return load_model(
        m.path,
        device=m.device,
        dtype=m.dtype,
        attn=m.attn,
        acceleration=config.acceleration,
        weights=m.weights,
    )


def open_engine(
    config: EngineConfig,
    model: StreamModel | None = None,
    *,
    sessions: int | str | None = None,
    batched: bool = False,
) -> StreamingEngine:
    """The engine `config` describes, the one way every command builds one: its model loaded (or
    `model`, one kept across runs), its stream, cache, generation and acceleration settings applied.
    `sessions` and `batched`: a pool of session caches whose sessions share one model thread that
    batches their work (the server's). Left out: one slot and the same scheduler, with a batch of one
    (the one code path of `python -m core run` and the app), where the cache policy bounds the cache
    and the attention runs ragged prefills; otherwise each session allocates its own cache."""
    from core.engine import StreamingEngine

    model = model or model_from_config(config)
    if sessions is None and not batched and config.cache.evicts and model.ragged_prefill:
        sessions, batched = 1, True
    log.info(
        "model %s on %s (%s, attention %s)", model.name, model.device, model.dtype, model.attention_backend
    )
    return StreamingEngine(
        model,
        stream=config.stream,
        cache=config.cache,
        generation=config.generation,
        acceleration=config.acceleration,
        sessions=sessions,
        batched=batched,
    )
