"""What the window asks the worker for: plain data, no Qt (the GUI's state stays testable without it)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.speech import SpeechRequest
from core.config import EngineConfig

DEMO_SOURCE = "demo clip"  # the source list's name for the bundled clip (assets/demo_clip.mp4)
_ASSET = Path(__file__).resolve().parents[1] / "assets" / "demo_clip.mp4"


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for when pressing Start."""

    source: str
    model: str  # a checkpoint folder, hub id or tiny; or ws://host:port of a `python -m core serve`
    instruction: str
    previous_text: str
    record_to: str | None = None  # an .mp4 path, or None
    audio_device: int | None = None  # record sound from this input device (with record_to)
    # Every engine setting (stream, cache, generation, model device/dtype/attention, acceleration), from
    # the app's --config file; `engine_config` puts the window's model into it.
    config: EngineConfig = field(default_factory=EngineConfig)
    latency_budget: float = 2.0
    token: str | None = None  # the remote server's token
    speech: SpeechRequest | None = None  # speak the commentary (and put it in the recording), or not

    @property
    def remote(self) -> bool:
        return is_server_url(self.model)

    @property
    def engine_config(self) -> EngineConfig:
        """The config a local engine is built from: the request's, with the window's model."""
        return replace(self.config, model=replace(self.config.model, path=self.model))


def is_server_url(model: str) -> bool:
    return model.startswith(("ws://", "wss://"))


def demo_clip() -> Path:
    """The demo clip: the repository's, or (an installed package ships no assets) the same clip drawn
    by `core.synthetic` into the temporary folder, once."""
    if _ASSET.is_file():
        return _ASSET
    drawn = Path(tempfile.gettempdir()) / "streamvlm-demo_clip.mp4"
    if not drawn.is_file():
        from core.synthetic import write_clip

        partial = drawn.with_name(f"{drawn.stem}.{os.getpid()}.mp4")  # another app may be drawing it too
        write_clip(partial)
        os.replace(partial, drawn)
    return drawn


def resolve_source(spec: str) -> str:
    """The source spec the worker opens: the demo clip's path for DEMO_SOURCE, any other spec as is."""
    spec = spec.strip()
    return str(demo_clip()) if spec.casefold() == DEMO_SOURCE else spec
