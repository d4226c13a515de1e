"""streamvlm core: the streaming engine (model, cache policy, positions, generate loop, sources)."""

from core.config import CachePolicy, EvictionMode, GenerationConfig, StreamConfig
from core.errors import StreamVLMError
from core.types import Commentary, Frame

__all__ = [
    "CachePolicy",
    "Commentary",
    "EvictionMode",
    "Frame",
    "GenerationConfig",
    "StreamConfig",
    "StreamVLMError",
]
