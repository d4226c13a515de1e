"""Command line of the trainer.

    python -m trainer --config trainer/configs/stage1.yaml [section.key=value ...]   # train (the default)
    torchrun --nproc-per-node 8 -m trainer --config trainer/configs/stage1.yaml      # one node, 8 GPUs
    python -m trainer --config trainer/configs/tiny.yaml run.out=/tmp/tiny         # CPU smoke run
    python -m trainer make-fixture DIR                                               # tiny synthetic data

Every error a user can cause prints one line (`error: ...`) and exits with status 2. The recipe and its
overrides are checked before torch loads, so a typo costs no start-up time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from core.cli_args import ArgumentParser, path_arg
from core.errors import StreamVLMError, os_error_line

COMMANDS = ("train", "make-fixture")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a training recipe (the default command)")
    train.add_argument(
        "--config", type=path_arg, required=True, help="a recipe, e.g. trainer/configs/stage1.yaml"
    )
    train.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="change a setting, e.g. optim.lr=1e-4"
    )
    sub.add_parser(
        "make-fixture", help="write a tiny synthetic dataset (videos + word timestamps)", add_help=False
    )
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # torch-free: a bad recipe fails at once
    from trainer.train import train

    train(cfg)
    return 0


def cmd_make_fixture(argv: list[str]) -> int:
    from trainer.fixture import main_make_fixture

    main_make_fixture(argv)  # the data side's own arguments: DIR [--videos N --seconds S ...]
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "train")  # `python -m trainer --config X` means train
    fixture = bool(argv) and argv[0] == "make-fixture"
    if not fixture:
        args = build_parser().parse_args(argv)
        rank = int(os.environ.get("RANK", "0"))
        logging.basicConfig(
            level=logging.INFO if rank == 0 else logging.WARNING,
            format=f"%(levelname)s %(name)s{f'[{rank}]' if rank else ''}: %(message)s",
            stream=sys.stderr,
        )
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return cmd_make_fixture(argv[1:]) if fixture else cmd_train(args)
    except StreamVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path, a disk or a permission no check caught
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if fixture:
            print("interrupted; run make-fixture again to write the whole fixture", file=sys.stderr)
        else:
            print("interrupted; resume from the last checkpoint with the same command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
