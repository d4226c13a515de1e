"""Headless benchmarks: `python -m evals <name>`; `python -m evals list` shows them."""
