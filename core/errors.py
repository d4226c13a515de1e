"""User-facing errors: each carries one sentence that says what went wrong and what to do.

Entry points (CLIs, the GUI, the server) catch `StreamVLMError` and show its message as is;
anything else is a bug and keeps its traceback.
"""


class StreamVLMError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(StreamVLMError, ValueError):
    """A configuration value is invalid or two values cannot work together."""


class ModelNotFoundError(StreamVLMError):
    """A model path or hub id could not be found or downloaded."""


class SourceError(StreamVLMError):
    """A video source could not be opened or read."""
