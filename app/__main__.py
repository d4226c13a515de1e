"""`python -m app [--model M] [--source S] [--smoke]`: the desktop app.

`--smoke` runs the tiny random model offline on the demo clip, and says so in a banner in the window.

SIGINT (Ctrl+C in the terminal) or SIGTERM stops the run as Stop does, closes the window and exits with
128 + the signal, like `python -m core run`; a second SIGINT quits at once (app/signals.py).

With STREAMVLM_APP_TIMELINE naming a file, the app appends its startup's events to it (app/timeline.py:
`python -m evals startup --app` times the app so); unset, nothing is recorded.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from app.timeline import Timeline
from core.cli_args import ArgumentParser, nonempty, path_arg
from core.config import resolve_config
from core.errors import StreamVLMError
from core.paths import folder_problem

APP_NAME = "streamvlm"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m app", description="streamvlm: live video commentary")
    parser.add_argument("--model", type=nonempty, help="checkpoint folder, hub id, or tiny")
    parser.add_argument(
        "--source", type=nonempty, help="a file, camera:N, screen:N[@x,y,w,h] or a stream URL"
    )
    parser.add_argument("--smoke", action="store_true", help="offline smoke mode on the tiny random model")
    parser.add_argument("--start", action="store_true", help="start streaming as soon as the window opens")
    parser.add_argument(
        "--record", type=path_arg, metavar="FOLDER", help="record into this folder (recording switched on)"
    )
    parser.add_argument(
        "--config",
        type=path_arg,
        help="TOML or YAML engine settings ([stream], [cache], [generation], [model], [acceleration]) for every run",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.time()  # the startup timeline's "Python up", if one is asked for
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = folder_problem(Path(args.record).expanduser()) if args.record else None
    if problem:  # a usage error, before Qt and the window load
        parser.error(f"argument --record: {problem}")
    try:
        config = resolve_config(args.config)
        timeline = Timeline.from_env(os.environ, started)
    except StreamVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = application()
    from app import lingering
    from app.signals import AppStopSignals

    # SIGINT and SIGTERM stop the run as Stop does, then close the window (app/signals.py); from here, so
    # one that comes while the window is built is acted on as soon as the event loop runs.
    with AppStopSignals(app) as stop:
        from app.window import MainWindow

        # smoke mode is the tiny random model, whatever --model says
        model = "tiny" if args.smoke else args.model
        window = MainWindow(model=model, source=args.source, smoke=args.smoke, config=config)
        stop.window = window
        if args.record:
            window.record_check.setChecked(True)
            window.output_edit.setText(str(Path(args.record).expanduser().resolve()))
        window.show()
        if args.start:
            window.start()
        if timeline is not None:
            timeline.watch(window)
        code = app.exec()
        lingering.wait_all()  # a model load the closed window could not interrupt
        return stop.exit_code(code)


def application():
    """The QApplication, as desktops expect it: named streamvlm (the X11 window class, the Wayland app
    id, the taskbar's name), with its icon, and rendering at the screen's exact scale."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from app.icon import app_icon

    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        # argv[0] is the X11 instance name: with `python -m app` it would be '__main__.py'.
        app = QApplication([APP_NAME])
    app.setApplicationName(APP_NAME)
    app.setDesktopFileName(APP_NAME)
    app.setWindowIcon(app_icon())
    return app


if __name__ == "__main__":
    sys.exit(main())
