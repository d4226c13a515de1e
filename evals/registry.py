"""The benchmarks behind `python -m evals`: a table of name -> module, imported only when that one runs.

A task module defines `add_arguments(parser)` and `run(args)` and keeps torch, transformers, PyAV and
openai out of its top-level imports (they load in `run` and the functions it calls). So `python -m
evals list`, `--help` and a bad flag are instant, and a task runs where another task's packages are
missing: efficiency and ceilings need neither PyAV nor openai. Task modules do not import this one,
so there is no import cycle, and the table is the one place a benchmark is named.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Task:
    name: str
    module: str  # defines add_arguments(parser) and run(args) -> exit status
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("ceilings", "evals.ceilings", "measured bf16 matmul rate and device copy bandwidth"),
        Task(
            "efficiency",
            "evals.efficiency",
            "latency and memory per chunk against stream length, per cache policy",
        ),
        Task("inf-stream", "evals.inf_stream", "Inf-Streams-Eval: LLM-judged win rate of live commentary"),
        Task(
            "livesports-cc", "evals.livesports", "LiveSports-3K CC: LLM-judged win rate of event commentary"
        ),
        Task(
            "make-fixtures",
            "evals.fixtures",
            "write tiny datasets in every benchmark's format (for smoke runs and CI)",
        ),
        Task("ovobench", "evals.ovobench", "OVO-Bench: accuracy per task, Real-Time / Backward / Forward"),
        Task(
            "report",
            "evals.report",
            "runs side by side from their records of how each number was made (refuses mixed methods)",
        ),
        Task("server-load", "evals.server_load", "many clients streaming into one inference server at once"),
        Task("soak", "evals.soak", "a long stream through the whole pipeline, watched for leaks"),
        Task("startup", "evals.startup", "process start to model loaded, first chunk, first commentary"),
        Task(
            "vqa",
            "evals.vqa",
            "Video-MME / MVBench / LongVideoBench accuracy (through VLMEvalKit when installed)",
        ),
    )
}
