"""Headless command line: `python -m core run` streams a video through a model and writes subtitles.

    python -m core run --source clip.mp4 --model PATH_OR_ID --srt out.srt --vtt out.vtt --jsonl out.jsonl
    python -m core run --source rtsp://camera.local/stream --model PATH_OR_ID   # or camera:0, screen:1@0,0,1280,720
    python -m core run --source clip.mp4 --model PATH_OR_ID --speak --voice espeak --speech-wav speech.wav
    python -m core run --source clip.mp4 --model PATH_OR_ID --question 12.5:"Who is winning?"
    python -m core sources               # the cameras and monitors this machine has
    python -m core build-tiny DIR        # the tiny random-weight model tests and smoke runs use

Questions: `--question TIME:TEXT` (repeatable) is asked in the chunk that reaches TIME; when standard
input is a terminal, each line typed during the run is asked in the next chunk. Answers are printed,
written and spoken marked as answers.

Every error a user can cause prints one line (`error: ...`) and exits with status 2. Flags, the config
file and the output paths are checked before torch and transformers are imported (seconds), so a typo
costs nothing; only then are the source opened and the model loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

from core.cli_args import (
    PORT,
    SECONDS,
    ArgumentParser,
    add_engine_arguments,
    config_from_args,
    nonempty,
    number,
    path_arg,
    question,
    server_url,
)
from core.config import EngineConfig
from core.errors import ConfigError, StreamVLMError, os_error_line
from core.paths import check_outputs, make_output_folder, read_text_file, recording_outputs, source_file
from core.prefetch import prefetch_weights
from core.types import CommentarySession

log = logging.getLogger("streamvlm")

LATENCY_BUDGET = number(0, 3600, low_open=True)
_SESSION_COUNT = number(1, 10_000, integer=True)


def _count_or_auto(count: Callable[[str], int | float]) -> Callable[[str], int | str]:
    """A flag's type that takes a count held to `count`'s rule, or auto."""

    def parse(text: str) -> int | str:
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return int(count(text))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, or auto") from None

    parse.range = count.range  # type: ignore[attr-defined]  # the count's rule, for the flag tests
    return parse


_sessions = _count_or_auto(_SESSION_COUNT)  # --max-sessions
_replicas = _count_or_auto(number(1, 1024, integer=True))  # --replicas (a cluster's)


MAX_RECORD_FPS = 120.0  # high-refresh screens; the encoder's time base is exact up to here


class Stopping(KeyboardInterrupt):
    """Raised in the main thread by the first SIGINT or SIGTERM to `run`: the stack unwinds as for Ctrl+C,
    so every `with` closes its output (subtitle files, the recording, the remote session)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM while a command runs (the main thread): the first calls `first(signum)` after
    one line to the user, a second quits at once (os._exit, exit status 128 + the signal) without the
    clean-up the first started, which may be what hangs. Restores the previous handlers on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, first: Callable[[int], None], doing: str) -> None:
        self.first, self.doing = first, doing
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _say(f"{name} again: quitting at once; the outputs end where the last write left them")
            os._exit(128 + signum)
        self.signum = signum
        _say(f"stopping on {name}: {self.doing} (press Ctrl+C again to quit at once)")
        self.first(signum)


def _say(line: str) -> None:
    """One line to stderr from a signal handler: os.write, since the handler may interrupt a print."""
    os.write(2, (line + "\n").encode("utf-8", "replace"))


def _raise_stopping(signum: int) -> None:
    raise Stopping(signum)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="stream a video through the model and print commentary")
    run.add_argument(
        "--source",
        required=True,
        type=nonempty,
        help="a video file, camera:N (or camera:/dev/videoN), screen:N or screen:N@x,y,w,h, or a stream URL "
        "(rtsp, rtmp, http(s), udp, srt)",
    )
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--model", type=nonempty, help="local checkpoint folder, hub id, or 'tiny' (smoke test)"
    )
    where.add_argument(
        "--server",
        type=server_url,
        help="a remote engine: ws://host:8765 (or wss://) started by 'python -m core serve'",
    )
    run.add_argument("--token", help="the remote server's token (or set STREAMVLM_TOKEN)")
    run.add_argument("--instruction", default=None, help="what to do (default: 'Commentate on this match')")
    run.add_argument("--previous-text", default="", help="context: a title or earlier commentary")
    run.add_argument("--srt", type=path_arg, help="write SRT subtitles here, one cue per line of commentary")
    run.add_argument("--vtt", type=path_arg, help="write WebVTT subtitles here")
    run.add_argument("--jsonl", type=path_arg, help="write {start, end, text} JSON lines here")
    run.add_argument("--realtime", action="store_true", help="pace the file at real time, like a live feed")
    run.add_argument(
        "--record",
        type=path_arg,
        help="record the stream with the commentary burned in to this .mp4 (and a .srt beside it)",
    )
    run.add_argument(
        "--record-fps",
        type=number(0, MAX_RECORD_FPS, low_open=True),
        help="frame rate of the recording (default: the source's, at most 30)",
    )
    run.add_argument("--cursor", action="store_true", help="screen sources: draw the mouse pointer in")
    run.add_argument(
        "--duration",
        type=number(0, 10**7, low_open=True),  # about four months of stream
        help="stop after this many seconds of stream time",
    )
    run.add_argument(
        "--latency-budget",
        type=LATENCY_BUDGET,
        default=2.0,
        help="live sources: skip a chunk whose commentary would come more than this many seconds after it",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--question",
        type=question,
        action="append",
        default=[],
        metavar='TIME:"TEXT"',
        help="ask this question in the chunk that reaches TIME stream seconds (repeatable); lines typed "
        "while a run goes are asked too, when standard input is a terminal",
    )
    speech = run.add_argument_group("speech (docs/speech.md); a file is paced at real time when it is on")
    speech.add_argument("--speak", action="store_true", help="speak the commentary live on a sound output")
    speech.add_argument(
        "--voice", help="pocket (neural, needs streamvlm[speech]) or espeak (default: pocket if installed)"
    )
    speech.add_argument(
        "--speech-device",
        type=number(0, 100_000, integer=True),
        help="the sound output to speak on, by index (default: the system's; an unknown one lists them)",
    )
    speech.add_argument(
        "--speech-wav", type=path_arg, help="write what was spoken to this .wav, on the stream's clock"
    )
    add_engine_arguments(run)

    sub.add_parser("sources", help="list the cameras that open and the monitors of this display")

    srv = sub.add_parser("serve", help="serve a model to remote clients over WebSocket (docs/protocol.md)")
    srv.add_argument(
        "--model", required=True, type=nonempty, help="local checkpoint folder, hub id, or 'tiny'"
    )
    srv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (other than loopback needs a token)"
    )
    srv.add_argument("--port", type=PORT, default=8765, help="0 picks a free port (printed)")
    srv.add_argument("--token-file", type=path_arg, help="a file holding the token clients must present")
    srv.add_argument(
        "--tls-cert", type=path_arg, help="TLS certificate (PEM); with --tls-key, clients use wss://"
    )
    srv.add_argument("--tls-key", type=path_arg)
    srv.add_argument(
        "--max-sessions",
        type=_sessions,
        default="auto",
        help="streams served at once, each with a cache preallocated at start (default auto: as many as "
        "90%% of the GPU's free memory holds); their decode steps run batched",
    )
    srv.add_argument(
        "--idle-timeout", type=SECONDS, default=60.0, help="seconds before an idle session is closed"
    )
    srv.add_argument("--latency-budget", type=LATENCY_BUDGET, default=2.0)
    cluster = srv.add_argument_group(
        "a cluster (Ray Serve, pip install 'streamvlm[cluster]'; docs/serving.md)"
    )
    cluster.add_argument(
        "--cluster",
        action="store_true",
        help="serve from replicas on a Ray cluster, one per GPU, each session on one replica",
    )
    cluster.add_argument(
        "--address", help="the Ray cluster to join (ray start's address; default: a local one on this host)"
    )
    cluster.add_argument(
        "--replicas", type=_replicas, help="replicas, each an engine on one GPU (default auto: one per GPU)"
    )
    add_engine_arguments(srv)

    tiny = sub.add_parser("build-tiny", help="write the tiny random-weight model (for tests and smoke runs)")
    tiny.add_argument("path", type=path_arg)
    tiny.add_argument("--layers", type=number(1, 64, integer=True), default=2)
    return parser


# The flags of `run` that set up the engine itself (its weights, its device, its cache, how it samples):
# with --server the engine is the server's, so they would change nothing.
SERVER_SIDE = (
    "device", "dtype", "attn", "weights", "no_compile", "cache_mode", "max_new_tokens", "min_new_tokens",
    "temperature", "top_p", "top_k", "repetition_penalty", "seed",
)  # fmt: skip


def check_remote_flags(args: argparse.Namespace) -> None:
    """Refuse flags that a run's other half would ignore: engine flags with --server, --token without it."""
    if args.server is None:
        if args.token is not None:
            raise ConfigError("--token is the remote server's; add --server, or leave --token out")
        return
    given = [
        f"--{name.replace('_', '-')}"
        for name in SERVER_SIDE
        if getattr(args, name, None) not in (None, False)
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'sets' if len(given) == 1 else 'set'} up the engine, which with --server is "
            "the server's: leave it out here, or give it to the 'python -m core serve' of that server"
        )


def check_run(args: argparse.Namespace) -> EngineConfig:
    """Everything about a run that can be checked without torch: the config and every output path."""
    check_remote_flags(args)
    config = config_from_args(args)
    if args.record_fps is not None and args.record_fps < config.stream.fps:
        raise ConfigError(
            f"--record-fps {args.record_fps:g} must be at least the model's {config.stream.fps:g} FPS (--fps)"
        )
    outputs = {"--srt": args.srt, "--vtt": args.vtt, "--jsonl": args.jsonl, "--speech-wav": args.speech_wav}
    if args.record:
        outputs |= recording_outputs(args.record, "--record")
    check_outputs(outputs, {"--source": source_file(args.source), "--config": args.config})
    check_speech(args)
    check_questions(args.question, args.duration, "--duration")
    return config


def check_questions(questions: list[tuple[float, str]], end: float | None, what: str) -> None:
    """Refuse a scripted question after the stream's `end` (a --duration, a file's length): never asked."""
    for seconds, text in questions:
        if end is not None and seconds > end:
            raise ConfigError(
                f"--question {seconds:g}:{text!r} comes after {what} ({end:g} s), so it would never be "
                f"asked; give a time up to {end:g}"
            )


def speaking(args: argparse.Namespace) -> bool:
    """Whether a run speaks: to a device (--speak) or to a file (--speech-wav)."""
    return args.speak or args.speech_wav is not None


def check_speech(args: argparse.Namespace) -> None:
    """The speech flags, checked before anything loads; fills in the default voice."""
    from core.speech.voices import check_voice, default_voice

    if not speaking(args):
        if args.voice is not None or args.speech_device is not None:
            raise ConfigError("--voice and --speech-device choose how --speak speaks; add --speak")
        return
    if args.speech_device is not None and not args.speak:
        raise ConfigError("--speech-device is where --speak is heard; add --speak, or leave it out")
    if args.speech_wav is not None and args.speech_wav.suffix.lower() != ".wav":
        raise ConfigError(
            f"--speech-wav writes a WAV file; give a path ending in .wav (got '{args.speech_wav}')"
        )
    args.voice = args.voice or default_voice()
    check_voice(args.voice)
    if args.speak:
        from core.speech.output import default_output, output_devices

        devices, why = output_devices()
        if why is not None:
            raise ConfigError(f"--speak: {why}; use --speech-wav PATH alone to write the speech to a file")
        if args.speech_device is None and default_output() is None:
            raise ConfigError(
                "--speak: this system has no default sound output; choose one with --speech-device"
            )
        if args.speech_device is not None and args.speech_device not in [d.index for d in devices]:
            listed = ", ".join(f"{d.index} ({d.name})" for d in devices)
            raise ConfigError(
                f"--speech-device {args.speech_device} is not a sound output here; the outputs are: {listed}"
            )


def cmd_run(args: argparse.Namespace) -> int:
    config = check_run(args)
    if not args.server:  # the disk reads the weights while torch and transformers import (core/prefetch.py)
        prefetch_weights(config.model.path)
    from core.media.sources import open_source  # PyAV, not torch: a bad source is still quick

    # Opened first, so a bad source fails before the model loads. Speech is live: a file is paced at
    # real time when it is on, so a line is heard when its picture would be seen.
    realtime = args.realtime or speaking(args)
    source = open_source(args.source, config.stream.fps, realtime=realtime, cursor=args.cursor)
    # SIGTERM stops a run as Ctrl+C does (its default would kill it, leaving the recording's last
    # fragment and the encoder's queued frames unwritten).
    stop = StopSignals(_raise_stopping, "closing the subtitles and the recording")
    with source, stop:  # _stream closes the source too; this covers a failure before streaming starts
        return _run(args, config, source)


def _run(args: argparse.Namespace, config: EngineConfig, source) -> int:
    from rich.console import Console

    from core.media.sources import FileSource
    from core.pipeline import open_recording

    console = Console(stderr=False, highlight=False)
    live = args.realtime or speaking(args) or not isinstance(source, FileSource)
    if isinstance(source, FileSource):
        check_questions(args.question, source.duration, f"the end of {args.source}")
    voice = _open_voice(args.voice, console) if speaking(args) else None  # before any file is created
    # The recording keeps the source's frame rate; the model still sees `fps` frames a second.
    recorder = (
        open_recording(args.record, source, config.stream, fps=args.record_fps, speech=speaking(args))
        if args.record
        else None
    )
    with recorder or contextlib.nullcontext():
        if args.server:
            from core.remote.client import RemoteSession

            token = args.token or os.environ.get("STREAMVLM_TOKEN")
            # No instruction given: the server's default, as for a local session.
            instruction = {} if args.instruction is None else {"instruction": args.instruction}
            session = RemoteSession(args.server, token=token, previous_text=args.previous_text, **instruction)
            return _stream(args, config, console, source, live, recorder, session, voice)
        _quiet_transformers()
        from core.engine import DEFAULT_INSTRUCTION
        from core.loading import open_engine

        _fetch_model(config.model.path, console)
        with console.status(f"loading model {args.model}"):
            engine = open_engine(config)
        for seconds, text in args.question:  # the model's tokenizer counts a question's length
            try:
                engine.conversation.check_question(text)
            except StreamVLMError as exc:
                raise ConfigError(f"--question {seconds:g}: {exc}") from None
        instruction = args.instruction if args.instruction is not None else DEFAULT_INSTRUCTION
        session = engine.start(instruction=instruction, previous_text=args.previous_text)
        return _stream(args, config, console, source, live, recorder, session, voice)


def _stream(args, config, console, source, live: bool, recorder, session: CommentarySession, voice) -> int:
    """The pipeline, shown: commentary to the console and the subtitle files, a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from core.media.subtitles import open_writers
    from core.pipeline import Pipeline, open_speaker
    from core.speech.clock import StreamClock

    total = source.duration / config.stream.chunk_seconds if source.duration else None
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s" if total else "{task.completed:.0f} s"),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet or not console.is_terminal,
    )
    with session, open_writers(srt=args.srt, vtt=args.vtt, jsonl=args.jsonl) as writers, progress:
        task = progress.add_task("streaming", total=total)

        def show(line) -> None:
            asked = f"  (Q: {line.question})" if line.is_answer else ""
            progress.console.print(
                f"[{_clock(line.start)} - {_clock(line.end)}] {line.marked}{asked}", markup=False
            )

        clock = StreamClock()
        speaker = None
        if voice is not None:
            speaker = open_speaker(
                voice,
                clock,
                device=args.speech_device,
                audible=args.speak,
                wav=args.speech_wav,
                recorder=recorder,
            )
        pipeline = Pipeline(
            source,
            session,
            config.stream,
            live=live,
            budget=args.latency_budget,
            duration=args.duration,
            recorder=recorder,
            sinks=(writers.write, show, *([speaker.say] if speaker else [])),
            clock=clock,
            questions=args.question,
        )
        if sys.stdin is not None and sys.stdin.isatty():
            progress.console.print("Type a question and press Enter to ask it.")
            threading.Thread(
                target=ask_typed, args=(sys.stdin, pipeline, progress.console.print), daemon=True
            ).start()
        finished = False
        try:
            with pipeline:
                for report in pipeline.run():
                    if report.skipped_span:
                        a, b = report.skipped_span
                        progress.console.print(
                            f"[{_clock(a)} - {_clock(b)}] (skipped: the model fell behind)"
                        )
                    if speaker is not None:
                        progress.update(task, description=_speech_state(speaker.stats()))
                    progress.update(task, completed=report.t_end)
            finished = True
        finally:
            if speaker is not None:
                speaker.close(finish=finished)  # the last line is heard to its end; Ctrl+C cuts it
                log.info("%s", speaker.stats().summary())
            unasked = getattr(session, "questions_waiting", 0)
            if unasked:  # one question a chunk: the stream ended before their turn
                log.warning("%d question(s) were not asked: the stream ended first", unasked)
        if live and pipeline.summary():
            log.info("%s", pipeline.summary())
    return 0


def ask_typed(lines, pipeline, say) -> None:
    """Each non-empty line read from `lines` (a terminal) is asked in the pipeline's next chunk; a question
    it cannot ask is reported with `say` and the run goes on. Runs until the input ends (a daemon thread)."""
    for line in lines:
        if not line.strip():
            continue
        try:
            pipeline.ask(line)
        except (StreamVLMError, ValueError, RuntimeError) as exc:  # RuntimeError: the session has closed
            say(f"question not asked: {exc}", markup=False)


def _open_voice(name: str, console):
    """The voice, its weights downloaded first (under a progress bar) where the cache lacks them."""
    from core.download import progress_bar
    from core.speech.voices import open_voice

    with progress_bar(console) as show:
        return open_voice(name, progress=show)


def _speech_state(stats) -> str:
    lag = f", lag {stats.lag:.1f} s" if stats.lag is not None else ""
    return f"streaming (speech: {stats.waiting} waiting, {stats.dropped} dropped{lag})"


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import ssl

    config = config_from_args(args)  # checked before anything heavy loads
    if not args.cluster and (args.address is not None or args.replicas is not None):
        raise ConfigError("--address and --replicas are for a cluster; add --cluster")
    token = None
    if args.token_file:
        token = read_text_file(args.token_file, "the token file").strip()
        if not token:
            raise ConfigError(f"the token file '{args.token_file}' is empty; put the token in it")
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate or key ({exc})") from None
    if not (args.cluster and args.address):  # a cluster elsewhere listens on its own hosts
        check_listen(args.host, args.port)  # before the model loads, which can take minutes
    if not args.cluster:  # a cluster's replicas load in their own processes
        prefetch_weights(config.model.path)
    _quiet_transformers()
    from rich.console import Console

    from core.loading import open_engine
    from core.remote.server import InferenceServer

    _fetch_model(config.model.path, Console(stderr=True))
    if args.cluster:
        return _serve_cluster(args, config, token)
    engine = open_engine(config, sessions=args.max_sessions, batched=True)
    model = engine.model
    server = InferenceServer(
        engine,
        token=token,
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout,
        budget=args.latency_budget,
    )

    async def run() -> None:
        try:
            listening = await server.serve(args.host, args.port, ssl=context)
        except OSError as exc:  # taken since check_listen (another process was quicker)
            raise ConfigError(_cannot_listen(args.host, args.port, exc)) from None
        async with listening:
            scheme = "wss" if context else "ws"
            port = listening.sockets[0].getsockname()[1] if listening.sockets else args.port  # --port 0
            # The first SIGINT or SIGTERM closes every session with a reason (a second quits at once).
            stopping, loop = asyncio.Event(), asyncio.get_running_loop()
            # call_soon_threadsafe wakes the loop, which a handler run between its selects would not.
            stop = StopSignals(
                lambda signum: loop.call_soon_threadsafe(stopping.set), "closing every session with a reason"
            )
            with stop:
                print(f"serving {model.name} at {scheme}://{args.host}:{port}", flush=True)
                await stopping.wait()
                await server.shut_down(listening)
            return stop.signum

    signum = asyncio.run(run())
    print(
        f"stopped on {signal.Signals(signum).name}; every session was told the server shut down",
        file=sys.stderr,
    )
    return 128 + signum


def _serve_cluster(args: argparse.Namespace, config: EngineConfig, token: str | None) -> int:
    """`serve --cluster`: the server's replicas on Ray Serve until SIGINT or SIGTERM (core/remote/cluster.py)."""
    try:
        from core.remote.cluster import ReplicaSettings, deploy
    except ImportError as exc:
        raise ConfigError(
            f"--cluster needs Ray Serve, which is not installed ({exc.name}); pip install 'streamvlm[cluster]'"
        ) from None
    settings = ReplicaSettings(token, args.max_sessions, args.idle_timeout, args.latency_budget)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    cluster = deploy(
        config,
        settings,
        replicas=args.replicas or "auto",
        address=args.address,
        host=args.host,
        port=args.port,
        tls=tls,
        ray_options={"include_dashboard": False} if args.address is None else None,
    )
    stopping = threading.Event()
    try:
        with StopSignals(lambda signum: stopping.set(), "stopping the replicas") as stop:
            print(
                f"serving {config.model.path} at {cluster.url} from {cluster.replicas} "
                f"replica{'s' if cluster.replicas != 1 else ''}",
                flush=True,
            )
            while not stopping.wait(0.5):
                pass
    finally:
        cluster.stop()
    print(f"stopped on {signal.Signals(stop.signum).name}; the replicas are down", file=sys.stderr)
    return 128 + stop.signum


def check_listen(host: str, port: int) -> None:
    """Refuse (ConfigError) a host or port this machine cannot listen on, by binding it as the server
    will (every address the host resolves to, SO_REUSEADDR as asyncio sets it) and letting go."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(_cannot_listen(host, port, exc)) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(_cannot_listen(host, port, exc)) from None


def _cannot_listen(host: str, port: int, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc)
    return (
        f"cannot listen on --host {host} --port {port} ({reason}); pick a free --port, or a --host that "
        "is an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
    )


def cmd_sources(args: argparse.Namespace) -> int:
    from core.media.sources import list_cameras, list_monitors

    cameras, monitors = list_cameras(), list_monitors()
    print("cameras:" if cameras else "cameras: none that open")
    for camera in cameras:
        print(f"  camera:{camera.index}  {camera.path}  {camera.width}x{camera.height}")
    print("monitors:" if monitors else "monitors: none (no display)")
    for monitor in monitors:
        print(f"  screen:{monitor.index}  {monitor.width}x{monitor.height} at {monitor.left},{monitor.top}")
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from core.builders import is_tiny_build

    if args.path.is_dir() and any(args.path.iterdir()) and not is_tiny_build(args.path):
        raise ConfigError(
            f"'{args.path}' is a folder with files in it, not a tiny model that build-tiny wrote; give a "
            "new or empty folder (nothing was written)"
        )
    make_output_folder(args.path, "the model folder")
    _quiet_transformers()
    from core.builders import build_tiny_model

    path = build_tiny_model(args.path, num_layers=args.layers)
    print(f"wrote a tiny random-weight Qwen2.5-VL to {path}")
    return 0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}:{minutes:02d}:{secs:04.1f}"


def _fetch_model(name: str, console) -> None:
    """A hub id the Hugging Face cache does not have complete is downloaded here, under a progress
    bar (core/download.py); loading then finds it in the cache."""
    from core.download import progress_bar
    from core.loading import model_folder

    with progress_bar(console) as show:
        model_folder(name, progress=show)


def _quiet_transformers() -> None:
    """Called by a command once its checks have passed: this is where transformers (and torch) load."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the hub's client logs each request at INFO


# What a command interrupted outside its own signal handling (while loading, or a signal in its clean-up)
# has left behind, said after "stopped on SIGINT".
STOPPED = {
    "run": "; the subtitles and the recording written so far are complete",
    "serve": "; the server's sessions are closed",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # flag types check every number here
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    commands = {"run": cmd_run, "serve": cmd_serve, "sources": cmd_sources, "build-tiny": cmd_build_tiny}
    try:
        return commands[args.command](args)
    except StreamVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path, a disk or a permission no check above caught
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopping) else signal.SIGINT
        print(f"stopped on {signal.Signals(signum).name}{STOPPED.get(args.command, '')}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
