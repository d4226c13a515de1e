"""Media I/O, the wing of core that touches the outside world's pictures and files: sources (files,
stream URLs, cameras, screens) and their reconnection, chunking at the model's rate, real-time
pacing, subtitle writers, the recorder with its overlay, and sound capture. The engine (core/)
imports nothing from here."""
