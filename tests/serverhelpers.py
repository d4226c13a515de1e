"""The real inference server in tests: on a thread on loopback, serving the tiny model greedily."""

from __future__ import annotations

import time

from core.config import GenerationConfig
from core.remote.server import InferenceServer, ServerThread

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=6)


class RunningServer(ServerThread):
    """An InferenceServer for `engine` (its options passed on) on a thread; `.server` is the server."""

    def __init__(self, engine, port: int = 0, **options) -> None:
        self.server = InferenceServer(engine, **options)
        super().__init__(self.server, port)


def no_sessions_left(server, timeout: float = 10.0) -> bool:
    """Waits up to `timeout` seconds for a RunningServer to hold no session; whether it holds none."""
    deadline = time.monotonic() + timeout
    while server.server.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.server.sessions == 0
