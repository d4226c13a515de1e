"""The PySide6 desktop app (`python -m app`): pick a source, watch live commentary, record it."""
