"""`python -m evals <name> [options]` runs one benchmark; `python -m evals list` lists them."""

from __future__ import annotations

import logging
import os
import sys

from core.cli_args import ArgumentParser
from core.errors import StreamVLMError, os_error_line
from evals.registry import TASKS


def build_parser(task: str | None = None) -> ArgumentParser:
    """Every benchmark is a subcommand; only `task`'s module is imported to declare its options."""
    parser = ArgumentParser(prog="python -m evals", description=__doc__)
    sub = parser.add_subparsers(dest="task", required=True)
    sub.add_parser("list", help="list the benchmarks")
    for spec in TASKS.values():
        task_parser = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        if spec.name == task:
            spec.load().add_arguments(task_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task = next((arg for arg in argv if not arg.startswith("-")), None)  # the subcommand comes first
    try:
        parser = build_parser(task)
    except ModuleNotFoundError as exc:  # a package only this benchmark needs
        print(f"error: the {task} benchmark needs the '{exc.name}' package; install it", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.task == "list":
        for spec in TASKS.values():
            print(f"{spec.name:14s} {spec.help}")
        return 0
    # Read when transformers loads, if this task loads it: no import here for tasks that do not.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's
    try:
        return TASKS[args.task].load().run(args)
    except StreamVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path, a disk or a permission no check above caught
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
