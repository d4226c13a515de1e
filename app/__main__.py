"""`python -m app [--model M] [--source S] [--smoke]`: the desktop app.

`--smoke` (or `--model tiny`) runs the tiny random model offline and says so in the title.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from core.cli_args import ArgumentParser
from core.config import resolve_config
from core.errors import StreamVLMError
from core.paths import folder_problem


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m app", description="streamvlm: live video commentary")
    parser.add_argument("--model", help="checkpoint folder, hub id, or tiny")
    parser.add_argument("--source", help="a file, camera:N, screen:N[@x,y,w,h] or a stream URL")
    parser.add_argument("--smoke", action="store_true", help="offline smoke mode on the tiny random model")
    parser.add_argument("--start", action="store_true", help="start streaming as soon as the window opens")
    parser.add_argument("--record", metavar="FOLDER", help="record into this folder (recording switched on)")
    parser.add_argument(
        "--config",
        help="TOML or YAML engine settings ([stream], [cache], [generation], [model], [acceleration]) for every run",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = folder_problem(Path(args.record).expanduser()) if args.record else None
    if problem:  # a usage error, before Qt and the window load
        parser.error(f"argument --record: {problem}")
    try:
        config = resolve_config(args.config)
    except StreamVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from PySide6.QtWidgets import QApplication

    from app.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow(
        model="tiny" if args.smoke else args.model, source=args.source, smoke=args.smoke, config=config
    )
    if args.record:
        window.record_check.setChecked(True)
        window.output_edit.setText(args.record)
    window.show()
    if args.start:
        window.start()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
