"""Where torch.compile and Triton keep what they compile, so a second start of a model skips it.

TorchInductor caches compiled graphs (its FX graph and AOTAutograd caches) and Triton caches compiled
kernels, both on disk, by default under the system's temporary folder, which a reboot or a cleaner
empties. `use_compile_cache` points both at a folder under streamvlm's cache (`core.paths.cache_root`)
named by what a compiled artifact depends on: the torch and Triton versions, the GPU (name and compute
capability) and CUDA version, and the model's architecture and dtype (not its weights: compiled code
takes them as inputs). Different GPUs or upgrades then never share a folder, and removing one folder
forgets one configuration. Where the user set `TORCHINDUCTOR_CACHE_DIR` or `TRITON_CACHE_DIR`, that
choice stands.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
from pathlib import Path

import torch

from core.paths import cache_root

log = logging.getLogger(__name__)

# The environment variables the two compilers read their cache folders from (at each compile).
CACHE_VARIABLES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def compile_cache_key(model_config: object, dtype: torch.dtype, device: torch.device) -> str:
    """A readable folder name for what compiled code depends on, ending in a hash of the details."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gpu = f"{torch.cuda.get_device_name(device)}-sm{major}{minor}-cuda{torch.version.cuda}"
    else:
        gpu = device.type
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "none"
    architecture = _architecture(model_config)
    details = json.dumps(
        {
            "torch": torch.__version__,
            "triton": triton,
            "gpu": gpu,
            "dtype": str(dtype),
            "model": architecture,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(details.encode()).hexdigest()[:16]
    readable = f"torch{torch.__version__}-{gpu}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", readable) + "-" + digest


def compile_cache_dir(model_config: object, dtype: torch.dtype, device: torch.device) -> Path:
    """The folder for this model's compiled code on this device with these versions."""
    return cache_root() / "compile" / compile_cache_key(model_config, dtype, device)


def use_compile_cache(folder: Path) -> dict[str, str]:
    """Point TorchInductor's and Triton's caches into `folder` (made if missing), except where the user
    set one; returns the folders in use. Called before anything compiles: both read the variables when
    they compile."""
    in_use = {}
    for variable, name in CACHE_VARIABLES.items():
        if not os.environ.get(variable):
            path = folder / name
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only home: compile into the default (temporary) folders
                log.warning("compile cache folder %s cannot be made (%s); using the default", path, exc)
                continue
            os.environ[variable] = str(path)
        in_use[variable] = os.environ.get(variable, "")
    return in_use


def _architecture(model_config: object) -> dict:
    """The config without what does not change compiled code (names, paths, versions, token ids)."""
    to_dict = getattr(model_config, "to_dict", None)
    config = to_dict() if callable(to_dict) else dict(vars(model_config))
    ignored = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"}
    return {
        key: value
        for key, value in config.items()
        if key not in ignored and not key.endswith("_token_id") and not key.startswith("_")
    }
