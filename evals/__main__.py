"""`python -m evals <name> [options]` runs one benchmark; `python -m evals list` lists them."""

from __future__ import annotations

import argparse
import logging
import sys

from core.errors import StreamVLMError
from evals.registry import load_tasks


def main(argv: list[str] | None = None) -> int:
    tasks = load_tasks()
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__)
    sub = parser.add_subparsers(dest="task", required=True)
    sub.add_parser("list", help="list the benchmarks")
    for task in tasks.values():
        task.add_arguments(sub.add_parser(task.name, help=task.help, description=task.help))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.task == "list":
        for task in tasks.values():
            print(f"{task.name:14s} {task.help}")
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return tasks[args.task].run(args)
    except StreamVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
