"""The one error type of the data side: a sample (or a whole file) that cannot be used, and where it is."""

from __future__ import annotations


class SampleError(Exception):
    """A training sample that cannot be built. The message starts with "file:line" (1-based line)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
