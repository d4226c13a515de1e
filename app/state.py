"""What the window asks the worker for: plain data, no Qt (the GUI's state stays testable without it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.config import EngineConfig


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

    @property
    def remote(self) -> bool:
        return is_server_url(self.model)

    @property
    def engine_config(self) -> EngineConfig:
        """The config a local engine is built from: the request's, with the window's model."""
        return replace(self.config, model=replace(self.config.model, path=self.model))


def is_server_url(model: str) -> bool:
    return model.startswith(("ws://", "wss://"))
