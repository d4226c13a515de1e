"""streamvlm core: the streaming engine (model, cache policy, positions, generate loop, sources)."""

import logging

# torchao, which transformers imports whenever it is installed (the `fp8` extra), registers its enums with
# a pytree call torch deprecates, and torch says so at WARNING on every start of every command: two lines
# of noise about a library the user may not even be using. Only that module's logger is quieted.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from core.config import CachePolicy, EvictionMode, GenerationConfig, StreamConfig  # noqa: E402
from core.errors import StreamVLMError  # noqa: E402
from core.types import Commentary, Frame  # noqa: E402

__all__ = [
    "CachePolicy",
    "Commentary",
    "EvictionMode",
    "Frame",
    "GenerationConfig",
    "StreamConfig",
    "StreamVLMError",
]
