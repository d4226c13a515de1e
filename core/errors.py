"""User-facing errors: each carries one sentence that says what went wrong and what to do.

Entry points (CLIs, the GUI, the server) catch `StreamVLMError` and show its message as is. An
`OSError` that reaches an entry point is the user's to fix too (a path they named, a full disk, a
permission): the CLIs show it as one line (`os_error_line`), though the checks that name the flag and
say what to do (core/paths.py) should have caught it first. Anything else is a bug and keeps its
traceback.
"""


class StreamVLMError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(StreamVLMError, ValueError):
    """A configuration value is invalid or two values cannot work together."""


class ModelNotFoundError(StreamVLMError):
    """A model path or hub id could not be found or downloaded."""


class SourceError(StreamVLMError):
    """A video source could not be opened or read."""


def os_error_line(exc: OSError) -> str:
    """One line for an `OSError` from a file or folder: the path, the system's reason, what to check."""
    paths = " and ".join(f"'{p}'" for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{paths}: {reason}; check the path, its folder and their permissions" if paths else reason
