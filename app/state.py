"""What the window asks the worker for: plain data, no Qt (the GUI's state stays testable without it)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import StreamConfig


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for when pressing Start."""

    source: str
    model: str  # a checkpoint folder, hub id or tiny; or ws://host:port of a `python -m core serve`
    instruction: str
    previous_text: str
    record_to: str | None = None  # an .mp4 path, or None
    audio_device: int | None = None  # record sound from this input device (with record_to)
    device: str = "auto"
    stream: StreamConfig = StreamConfig()
    latency_budget: float = 2.0
    token: str | None = None  # the remote server's token

    @property
    def remote(self) -> bool:
        return is_server_url(self.model)


def is_server_url(model: str) -> bool:
    return model.startswith(("ws://", "wss://"))
