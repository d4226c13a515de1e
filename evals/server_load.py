"""`python -m evals server-load`: many clients streaming at once into one inference server.

Starts `core/remote/server.py` on loopback with the given model (or targets `--url`), then runs
`--clients` `RemoteSession`s in parallel, each streaming `--seconds` one-second chunks paced in
real time (a chunk is sent when its last frame would have been captured). Per client it
reports the latency from sending a chunk to its `chunk_done` (percentiles), the chunks the
server skipped to keep latency bounded, and the share of the other chunks that came back with
commentary; a client below `--min-served` (90%) is starved and the run fails. Writes
results.json, summary.md and latency.png to `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.cli_args import COUNT, SECONDS, add_engine_arguments, engine_overrides, number, setting
from core.config import StreamConfig, resolve_config
from core.errors import ConfigError, StreamVLMError

log = logging.getLogger(__name__)


@dataclass
class ClientResult:
    client: int
    chunks: int = 0  # sent
    skipped: int = 0  # the server said it skipped them (latency budget)
    served: int = 0  # not skipped and came back with at least one line of commentary
    failed: int = 0  # raised (the session ended)
    latencies: list[float] = field(default_factory=list)  # seconds, send to chunk_done, every chunk
    late: float = 0.0  # the most a chunk was sent after its due time, seconds
    error: str | None = None

    @property
    def served_share(self) -> float:
        """Commentary received for this share of the chunks the server did not skip."""
        answered = self.chunks - self.skipped
        return self.served / answered if answered else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def stream_client(
    index: int,
    url: str,
    *,
    seconds: int,
    token: str | None,
    frame_size: tuple[int, int],
    fps: float,
    start_at: float,
    on_chunk=None,
) -> ClientResult:
    """One client: `seconds` chunks of `fps` frames each, sent in real time from `start_at`."""
    from core.remote.client import RemoteSession

    result = ClientResult(index)
    rng = np.random.default_rng(index)
    height, width = frame_size
    frames_per_chunk = max(1, round(fps))
    try:
        with RemoteSession(url, token=token, seed=index) as session:
            for k in range(seconds):
                due = start_at + k + 1  # the chunk's last frame is captured at the end of its second
                time.sleep(max(0.0, due - time.monotonic()))
                result.late = max(result.late, time.monotonic() - due)
                frames = [
                    rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames_per_chunk)
                ]
                skipped_before = session.skipped
                sent = time.monotonic()
                events = session.push(frames, float(k), float(k + 1))
                result.latencies.append(time.monotonic() - sent)
                result.chunks += 1
                if session.skipped > skipped_before:
                    result.skipped += 1
                elif events:
                    result.served += 1
                if on_chunk is not None:
                    on_chunk()
    except StreamVLMError as exc:
        result.error = str(exc)
        result.failed = seconds - result.chunks
    return result


def run_load(
    url: str,
    *,
    clients: int,
    seconds: int,
    token: str | None = None,
    frame_size: tuple[int, int] = (112, 112),
    fps: float = 2.0,
    on_chunk=None,
) -> list[ClientResult]:
    """All clients in parallel threads, starting together; their results in client order."""
    start_at = time.monotonic() + 0.5
    results: list[ClientResult | None] = [None] * clients

    def one(i: int) -> None:
        results[i] = stream_client(
            i,
            url,
            seconds=seconds,
            token=token,
            frame_size=frame_size,
            fps=fps,
            start_at=start_at,
            on_chunk=on_chunk,
        )

    threads = [threading.Thread(target=one, args=(i,), name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def summary_rows(results: list[ClientResult]) -> list[dict]:
    return [
        {
            "client": r.client,
            "chunks": r.chunks,
            "skipped": r.skipped,
            "served": r.served,
            "served_share": round(r.served_share, 4),
            "p50_ms": round(r.percentile(50) * 1000, 1),
            "p90_ms": round(r.percentile(90) * 1000, 1),
            "p99_ms": round(r.percentile(99) * 1000, 1),
            "max_ms": round(max(r.latencies, default=float("nan")) * 1000, 1),
            "late_ms": round(r.late * 1000, 1),
            "error": r.error,
        }
        for r in results
    ]


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| client | chunks | skipped | with commentary | share | p50 ms | p90 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['client']} | {r['chunks']} | {r['skipped']} | {r['served']} | {r['served_share']:.1%} "
            f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    errors = [f"- client {r['client']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def plot(results: list[ClientResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot([[x * 1000 for x in r.latencies] or [0.0] for r in results], showfliers=True)
    ax.set_xticks(range(1, len(results) + 1), [str(r.client) for r in results])
    ax.set_xlabel("client")
    ax.set_ylabel("send to chunk_done (ms)")
    ax.set_title(f"{len(results)} clients, latency per chunk")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="serve this checkpoint folder, hub id or 'tiny' on loopback")
    which.add_argument("--url", help="load an already running server instead (ws://host:port)")
    parser.add_argument("--token", help="the server's token (with --url)")
    parser.add_argument("--clients", type=number(1, 1000, integer=True), default=8)
    parser.add_argument("--seconds", type=COUNT, default=60, help="seconds of stream per client")
    parser.add_argument("--resolution", default="112x112", help="frame size WxH sent by the clients")
    parser.add_argument("--fps", type=setting(StreamConfig, "fps"), default=2.0)
    parser.add_argument("--latency-budget", type=SECONDS, default=2.0, help="the server's budget (seconds)")
    parser.add_argument(
        "--min-served", type=number(0, 1), default=0.9, help="starvation threshold per client (a fraction)"
    )
    add_engine_arguments(parser, ("device", "dtype", "attn"))  # the served engine's (with --model)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/server-load-TIME)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    if args.clients < 1 or args.seconds < 1:
        raise ConfigError("--clients and --seconds must be at least 1")
    try:
        width, height = (int(x) for x in args.resolution.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--resolution must look like 112x112, not {args.resolution!r}") from None
    config = resolve_config(args.config, {**engine_overrides(args), "stream": {"fps": args.fps}})
    out = args.out or Path("runs") / time.strftime("server-load-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection otherwise
    server_thread = None
    url, token, model_name = args.url, args.token, None
    if args.model:
        from core.loading import open_engine
        from core.remote.server import InferenceServer, ServerThread

        with console.status(f"loading model {args.model}"):
            engine = open_engine(config)
        model_name = engine.model.name
        server = InferenceServer(engine, max_sessions=args.clients, budget=args.latency_budget)
        server_thread = ServerThread(server)
        url, token = server_thread.url, None
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{args.clients} clients", total=args.clients * args.seconds)
            lock = threading.Lock()

            def advance() -> None:
                with lock:
                    progress.advance(task)

            results = run_load(
                url,
                clients=args.clients,
                seconds=args.seconds,
                token=token,
                frame_size=(height, width),
                fps=args.fps,
                on_chunk=advance,
            )
    finally:
        if server_thread is not None:
            server_thread.stop()
    from core.provenance import git_revision, package_version

    rows = summary_rows(results)
    starved = [r.client for r in results if r.served_share < args.min_served or r.error]
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "token"},
        "model": model_name,
        "url": url,
        "git": git_revision(),
        "versions": {p: package_version(p) for p in ("torch", "transformers", "websockets")},
        "clients": rows,
        "latencies_s": {r.client: r.latencies for r in results},
        "starved": starved,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=asdict))
    header = (
        f"{args.clients} clients x {args.seconds} s at {args.fps:g} FPS, {width}x{height} frames, "
        f"model {model_name or url}, latency budget {args.latency_budget:g} s"
    )
    table = markdown(rows, header)
    (out / "summary.md").write_text(table)
    plot(results, out / "latency.png")
    print(table, flush=True)
    console.print(f"results in {out}")
    if starved:
        console.print(f"[red]starved (< {args.min_served:.0%} of answered chunks with commentary): {starved}")
        return 1
    return 0
