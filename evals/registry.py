"""The registry of benchmark tasks behind `python -m evals`: one name, one module, one runner."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


TASKS: dict[str, Task] = {}


def register(name: str, help: str, add_arguments: Callable, run: Callable) -> None:
    if name in TASKS:
        raise ValueError(f"benchmark {name!r} is registered twice")
    TASKS[name] = Task(name, help, add_arguments, run)


def load_tasks() -> dict[str, Task]:
    """Import the task modules (each registers itself) and return the registry."""
    from evals import ceilings, efficiency, fixtures, inf_stream, livesports, ovobench, server_load, vqa  # noqa: F401

    return TASKS
