"""`python -m evals server-load`: many clients streaming at once into one inference server.

Starts `core/remote/server.py` on loopback with the given model (or targets `--url`), then runs
`--clients` clients, each in a process of its own (the "spawn" start method: no thread of the
server's process does client work). Each client draws its frames and encodes them (JPEG, quality
90) before timing starts, opens its session, and when all are ready streams `--seconds`
one-second chunks paced in real time from a common start (a chunk is sent when its last frame
would have been captured). Per chunk it records the latency from sending the chunk to its
`chunk_done` and the server's split of that chunk (`timing`: queue, vision, evict, prefill,
decode and total milliseconds). `--clients 1,4,8` is a sweep: the levels run one after another
against the same server and model.

Per level: latency percentiles, chunks the server skipped to keep latency bounded, the share of
the other chunks that came back with commentary, the median server-side split, and the
throughput: stream-seconds of video answered per second of wall time (what one server's device
does in a second). Against a cluster (`python -m core serve --cluster`), which replica served each client
(the `replica` of its `ready`) and how many clients each replica carried. A client below `--min-served`
(90%) at any level is starved and the run fails
(exit 1, one line saying where). Writes results.json (every level, every chunk), summary.md and
latency.png (p50 and p99 latency, and throughput, against the number of streams) to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from core.cli_args import (
    COUNT,
    SECONDS,
    add_engine_arguments,
    engine_overrides,
    number,
    parse_resolution,
    path_arg,
    server_url,
    setting,
)
from core.config import StreamConfig, resolve_config
from core.errors import ConfigError, StreamVLMError
from evals.runner import output_folder

log = logging.getLogger(__name__)

MAX_CLIENTS = 1000  # per level
DISTINCT_CHUNKS = 10  # chunks of frames a client draws and encodes; longer streams send them again in turn
START_DELAY = 0.5  # seconds from "all clients ready" to the common start
READY_TIMEOUT = 300.0  # seconds a client may take to encode its frames and open its session
FINISH_SLACK = 60.0  # seconds past the stream's end (plus one reply timeout) before a client is stopped
REPLY_TIMEOUT = 30.0  # a client's wait for one chunk_done
STAGES = ("queue_ms", "vision_ms", "evict_ms", "prefill_ms", "decode_ms", "total_ms")  # chunk_done's timing


@dataclass
class ClientResult:
    client: int
    pid: int | None = None  # the client's process
    chunks: int = 0  # sent
    skipped: int = 0  # the server said it skipped them (latency budget)
    served: int = 0  # not skipped and came back with at least one line of commentary
    failed: int = 0  # not sent or not answered (the session ended)
    latencies: list[float] = field(default_factory=list)  # seconds, send to chunk_done, every chunk
    records: list[dict] = field(default_factory=list)  # per chunk: sent, latency, skipped, lines, timing
    late: float = 0.0  # the most a chunk was sent after its due time, seconds
    error: str | None = None
    warmup: int = 0  # first chunks left out of the latency figures (compilation, graph capture)
    replica: str | None = None  # the cluster replica that served the session (None: a single server)

    @property
    def timed(self) -> list[float]:
        """The latencies after warm-up, which the figures are made of."""
        return self.latencies[self.warmup :]

    @property
    def served_share(self) -> float:
        """Commentary received for this share of the chunks the server did not skip."""
        answered = self.chunks - self.skipped
        return self.served / answered if answered else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.timed, q)) if self.timed else float("nan")


@dataclass(frozen=True)
class ClientPlan:
    """What one client process does (picklable: it crosses to the process)."""

    index: int
    url: str
    token: str | None
    seconds: int
    frame_size: tuple[int, int]  # height, width
    fps: float
    content: str = "noise"  # "noise" (random pixels) or "synthetic" (core.synthetic's football scene)


def encode_chunks(plan: ClientPlan) -> list[list[bytes]]:
    """The client's chunks of JPEG frames (at most DISTINCT_CHUNKS different ones), encoded up front."""
    from core.remote.client import _encode_image

    height, width = plan.frame_size
    per_chunk = max(1, round(plan.fps))
    count = min(plan.seconds, DISTINCT_CHUNKS) * per_chunk
    if plan.content == "synthetic":
        from core.synthetic import synthetic_frames

        frames = list(synthetic_frames(width, height, float(per_chunk), count / per_chunk, seed=plan.index))
    else:
        rng = np.random.default_rng(plan.index)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    images = [_encode_image(frame, "jpeg") for frame in frames]
    return [images[i : i + per_chunk] for i in range(0, len(images), per_chunk)]


def client_process(conn: Connection, plan: ClientPlan) -> None:
    """A client process's body: encode, connect, say "ready", wait for the start time, stream, report.

    Messages to the parent: ("ready",), ("chunk",) after each chunk, ("result", ClientResult as a dict).
    """
    logging.basicConfig(level=logging.WARNING)
    result = ClientResult(plan.index, pid=os.getpid())
    try:
        result = stream_client(plan, conn, result)
    except BaseException as exc:  # reported, not raised: the parent reads the result
        result.error = result.error or f"{type(exc).__name__}: {exc}"
        result.failed = plan.seconds - result.chunks
    finally:
        try:
            conn.send(("result", asdict(result)))
        finally:
            conn.close()


def stream_client(plan: ClientPlan, conn: Connection, result: ClientResult) -> ClientResult:
    from core.remote.client import RemoteSession

    chunks = encode_chunks(plan)  # before timing starts
    try:
        # No reconnection: a dropped session is a failure this benchmark reports, not one it hides.
        with RemoteSession(
            plan.url, token=plan.token, seed=plan.index, reconnect=None, timeout=REPLY_TIMEOUT
        ) as session:
            result.replica = session.replica
            conn.send(("ready",))
            if not conn.poll(READY_TIMEOUT):
                raise StreamVLMError("no start time came from the load generator")
            start_at = conn.recv()  # wall-clock seconds, common to all clients
            if start_at is None:  # the run was called off
                return result
            for k in range(plan.seconds):
                due = start_at + k + 1  # the chunk's last frame is captured at the end of its second
                time.sleep(max(0.0, due - time.time()))
                result.late = max(result.late, time.time() - due)
                skipped_before = session.skipped
                sent_wall, sent = time.time(), time.monotonic()
                events = session.push_images(chunks[k % len(chunks)], float(k), float(k + 1))
                latency = time.monotonic() - sent
                skipped = session.skipped > skipped_before
                result.latencies.append(latency)
                result.records.append(
                    {
                        "chunk": k,
                        "sent_s": round(sent_wall - start_at, 4),  # from the common start
                        "latency_ms": round(latency * 1000, 3),
                        "skipped": skipped,
                        "lines": len(events),
                        "timing": session.last_timing,
                    }
                )
                result.chunks += 1
                if skipped:
                    result.skipped += 1
                elif events:
                    result.served += 1
                conn.send(("chunk",))
    except StreamVLMError as exc:
        result.error = str(exc)
    result.failed = plan.seconds - result.chunks
    return result


def run_load(
    url: str,
    *,
    clients: int,
    seconds: int,
    token: str | None = None,
    frame_size: tuple[int, int] = (112, 112),
    fps: float = 2.0,
    content: str = "noise",
    on_chunk=None,
) -> list[ClientResult]:
    """`clients` client processes streaming together into `url`; their results in client order.

    The processes start, encode and connect first; the common start time is sent when all are ready
    (or have failed). A client still running FINISH_SLACK seconds after its stream should have ended
    is terminated and reported as failed.
    """
    if not 1 <= clients <= MAX_CLIENTS or seconds < 1:
        raise ConfigError(f"clients must be 1 to {MAX_CLIENTS} and seconds at least 1")
    context = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    conns: dict[int, Connection] = {}
    results: dict[int, ClientResult] = {}
    try:
        for i in range(clients):
            parent, child = context.Pipe()
            plan = ClientPlan(i, url, token, seconds, frame_size, fps, content)
            proc = context.Process(
                target=client_process, args=(child, plan), name=f"load-client-{i}", daemon=True
            )
            proc.start()
            child.close()
            procs[i], conns[i] = proc, parent
        ready: set[int] = set()
        _collect(
            conns, procs, results, time.monotonic() + READY_TIMEOUT, on_chunk, ready=ready, wanted=clients
        )
        start_at = time.time() + START_DELAY
        for i in conns.keys() - results.keys():  # None: a client not ready in time stops when it is
            with contextlib.suppress(OSError):  # a client that died meanwhile: read as such below
                conns[i].send(start_at if i in ready else None)
        _collect(
            conns,
            procs,
            results,
            time.monotonic() + START_DELAY + seconds + REPLY_TIMEOUT + FINISH_SLACK,
            on_chunk,
        )
    finally:
        for i, proc in procs.items():
            proc.join(timeout=5 if i in results else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conns[i].close()
    for i in range(clients):
        if i not in results:
            results[i] = ClientResult(
                i, pid=procs[i].pid, failed=seconds, error="the client did not finish in time"
            )
    return [results[i] for i in range(clients)]


def _collect(
    conns: dict[int, Connection],
    procs: dict,
    results: dict[int, ClientResult],
    deadline: float,
    on_chunk,
    *,
    ready: set[int] | None = None,
    wanted: int = 0,
) -> None:
    """Reads the clients' messages until every client has sent its result (or, with `ready`, until
    `wanted` clients are ready or done), or until `deadline` (monotonic)."""

    def finished() -> bool:
        if ready is not None:
            return len(ready | results.keys()) >= wanted
        return len(results) == len(conns)

    while not finished() and time.monotonic() < deadline:
        open_conns = {conns[i]: i for i in conns if i not in results}
        for conn in wait(list(open_conns), timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            i = open_conns[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the process ended without a result
                procs[i].join(timeout=5)
                error = f"the client process ended without a result (exit code {procs[i].exitcode})"
                results[i] = ClientResult(i, pid=procs[i].pid, error=error)
                continue
            if message[0] == "ready" and ready is not None:
                ready.add(i)
            elif message[0] == "chunk" and on_chunk is not None:
                on_chunk()
            elif message[0] == "result":
                results[i] = ClientResult(**message[1])


# -- the report ---------------------------------------------------------------------------------


def client_rows(results: list[ClientResult]) -> list[dict]:
    return [
        {
            "client": r.client,
            "pid": r.pid,
            "chunks": r.chunks,
            "skipped": r.skipped,
            "served": r.served,
            "failed": r.failed,
            "served_share": round(r.served_share, 4),
            "p50_ms": _ms(r.percentile(50)),
            "p90_ms": _ms(r.percentile(90)),
            "p99_ms": _ms(r.percentile(99)),
            "max_ms": _ms(max(r.timed, default=float("nan"))),
            "late_ms": _ms(r.late),
            "replica": r.replica,
            "error": r.error,
        }
        for r in results
    ]


def level_summary(results: list[ClientResult]) -> dict:
    """One level in numbers: latency over every chunk of every client, the server's median split over
    the answered chunks, and throughput over the level's wall time (common start to last chunk_done)."""
    latencies = [x for r in results for x in r.timed]
    records = [c for r in results for c in r.records]
    answered = [c for c in records if not c["skipped"]]
    chunks, skipped = len(records), sum(c["skipped"] for c in records)
    served = sum(r.served for r in results)
    wall = max((c["sent_s"] + c["latency_ms"] / 1000 for c in records), default=0.0)
    busy_ms = sum(sum(c["timing"].get(s, 0.0) for s in STAGES[1:-1]) for c in answered if c["timing"])
    summary = {
        "clients": len(results),
        "chunks": chunks,
        "skipped": skipped,
        "failed": sum(r.failed for r in results),
        "served": served,
        "served_share": round(served / (chunks - skipped), 4) if chunks > skipped else 0.0,
        "p50_ms": _ms(float(np.percentile(latencies, 50)) if latencies else float("nan")),
        "p99_ms": _ms(float(np.percentile(latencies, 99)) if latencies else float("nan")),
        "max_ms": _ms(max(latencies, default=float("nan"))),
        "wall_s": round(wall, 3),
        # Each chunk is one second of video: stream-seconds answered per second of the server's time.
        "stream_s_per_s": round(len(answered) / wall, 3) if wall else 0.0,
        "model_busy": round(busy_ms / 1000 / wall, 4) if wall else 0.0,  # share of that time the model ran
        "replicas": replica_load(results),
    }
    for stage in STAGES:
        values = [c["timing"][stage] for c in answered if c["timing"] and stage in c["timing"]]
        summary[f"median_{stage}"] = round(float(np.median(values)), 2) if values else None
    return summary


def replica_load(results: list[ClientResult]) -> dict[str, int]:
    """Clients per cluster replica, by replica id ({} against a single server)."""
    counts: dict[str, int] = {}
    for r in results:
        if r.replica is not None:
            counts[r.replica] = counts.get(r.replica, 0) + 1
    return dict(sorted(counts.items()))


def _ms(seconds: float) -> float | None:
    return None if seconds != seconds else round(seconds * 1000, 1)  # NaN (no chunk): null in JSON


def markdown(levels: list[dict], header: str) -> str:
    """The level table (one row per number of streams), then each level's per-client table."""
    lines = [
        header,
        "",
        "| clients | chunks | p50 ms | p99 ms | max ms | skipped | with commentary | queue ms | vision ms "
        "| prefill ms | decode ms | stream-s per s | model busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        s = level["summary"]
        lines.append(
            f"| {s['clients']} | {s['chunks']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | {s['skipped']} "
            f"| {s['served_share']:.1%} | {s['median_queue_ms']} | {s['median_vision_ms']} "
            f"| {s['median_prefill_ms']} | {s['median_decode_ms']} | {s['stream_s_per_s']} | {s['model_busy']:.0%} |"
        )
    lines += [
        "",
        "Latency: client side, send to `chunk_done`, every chunk after each client's `--warmup` chunks. Queue, vision, prefill, decode: the "
        "server's medians over the answered chunks. Stream-s per s: seconds of video answered per second "
        "of wall time (common start to the last `chunk_done`); model busy: the share of it the model ran.",
    ]
    for level in levels:
        replicas = level["summary"].get("replicas") or {}
        lines += ["", f"### {level['clients']} clients", ""]
        if replicas:  # a cluster: which replica served each client
            spread = ", ".join(f"`{name}` {count}" for name, count in replicas.items())
            lines += [f"Clients per replica: {spread}.", ""]
        extra = (" replica |", "---|") if replicas else ("", "")
        lines += [
            "| client | chunks | skipped | with commentary | share | p50 ms | p90 ms | p99 ms | max ms |"
            + extra[0],
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + extra[1],
        ]
        for r in level["per_client"]:
            where = f" {r.get('replica') or ''} |" if replicas else ""
            lines.append(
                f"| {r['client']} | {r['chunks']} | {r['skipped']} | {r['served']} | {r['served_share']:.1%} "
                f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |" + where
            )
        lines += [f"- client {r['client']}: {r['error']}" for r in level["per_client"] if r["error"]]
    return "\n".join(lines) + "\n"


def plot(levels: list[dict], path: Path) -> None:
    """p50 and p99 latency, and stream-seconds per second, against the number of streams."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = sorted((level["summary"] for level in levels), key=lambda s: s["clients"])
    streams = [s["clients"] for s in summaries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        left.plot(streams, [s[key] if s[key] is not None else np.nan for s in summaries], "o-", label=label)
    left.set_xlabel("streams")
    left.set_ylabel("send to chunk_done (ms)")
    left.set_title("latency per chunk")
    left.legend()
    right.plot(streams, [s["stream_s_per_s"] for s in summaries], "o-", label="answered")
    right.plot(streams, streams, ":", color="grey", label="every stream in real time")
    right.set_xlabel("streams")
    right.set_ylabel("stream-seconds per second")
    right.set_title("throughput of the server")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(streams)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def client_levels(text: str) -> list[int]:
    """`--clients`: one number of clients or a comma-separated sweep ("1,4,8"), each 1 to MAX_CLIENTS."""
    one = number(1, MAX_CLIENTS, integer=True)
    levels = [int(one(part.strip())) for part in text.split(",")]
    return list(dict.fromkeys(levels))  # a level given twice runs once


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="serve this checkpoint folder, hub id or 'tiny' on loopback")
    which.add_argument(
        "--url", type=server_url, help="load an already running server instead (ws://host:port)"
    )
    parser.add_argument("--token", help="the server's token (with --url)")
    parser.add_argument(
        "--clients",
        type=client_levels,
        default=[8],
        help="client processes (streams) at once; a comma-separated list runs a sweep, e.g. 1,4,8,16",
    )
    parser.add_argument("--seconds", type=COUNT, default=60, help="seconds of stream per client")
    parser.add_argument("--resolution", default="112x112", help="frame size WxH sent by the clients")
    parser.add_argument(
        "--content",
        choices=("noise", "synthetic"),
        default="noise",
        help="what the frames show: random pixels (the largest JPEGs) or the synthetic football scene",
    )
    parser.add_argument("--fps", type=setting(StreamConfig, "fps"), default=2.0)
    parser.add_argument("--latency-budget", type=SECONDS, default=2.0, help="the server's budget (seconds)")
    parser.add_argument(
        "--min-served", type=number(0, 1), default=0.9, help="starvation threshold per client (a fraction)"
    )
    parser.add_argument(
        "--warmup",
        type=number(0, 10**6, integer=True),
        default=2,
        help="each client's first chunks left out of the latency figures (compilation, graph capture)",
    )
    add_engine_arguments(parser, ("device", "dtype", "attn", "weights"))  # the served engine's (with --model)
    parser.add_argument(
        "--serial",
        action="store_true",
        help="with --model: serve one chunk at a time (no cache pool, no batched decode), for comparison",
    )
    parser.add_argument(
        "--out", type=path_arg, default=None, help="output folder (default runs/server-load-TIME)"
    )


def run(args: argparse.Namespace) -> int:
    levels = args.clients if isinstance(args.clients, list) else [args.clients]
    if not levels or min(levels) < 1 or args.seconds < 1:
        raise ConfigError("--clients and --seconds must be at least 1")
    width, height = parse_resolution(args.resolution)
    if args.content == "synthetic" and min(width, height) < 32:
        raise ConfigError(f"--content synthetic needs frames of at least 32x32 (got {width}x{height})")
    config = resolve_config(args.config, {**engine_overrides(args), "stream": {"fps": args.fps}})
    out = args.out or Path("runs") / time.strftime("server-load-%Y%m%d-%H%M%S")
    with output_folder(out, "server-load"):
        return _load(args, levels, (width, height), config, out)


def _load(args: argparse.Namespace, levels: list[int], size: tuple[int, int], config, out: Path) -> int:
    from rich.console import Console
    from rich.progress import Progress

    width, height = size
    console = Console(stderr=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection otherwise
    server_thread = None
    url, token, model_name = args.url, args.token, None
    if args.model:
        from core.loading import open_engine
        from core.remote.server import InferenceServer, ServerThread

        with console.status(f"loading model {args.model}"):
            # The server's engine: a cache slot per client of the largest level, decode steps batched
            # (or, with --serial, one chunk on the model at a time: the server before batching).
            engine = open_engine(
                config, sessions=None if args.serial else max(levels), batched=not args.serial
            )
        model_name = engine.model.name
        server = InferenceServer(engine, max_sessions=max(levels), budget=args.latency_budget)
        server_thread = ServerThread(server)
        url, token = server_thread.url, None
    report_levels = []
    try:
        for clients in levels:
            if server_thread is not None:  # the previous level's sessions are closed before the next
                deadline = time.monotonic() + 10
                while server.sessions and time.monotonic() < deadline:
                    time.sleep(0.05)
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"{clients} clients", total=clients * args.seconds)
                results = run_load(
                    url,
                    clients=clients,
                    seconds=args.seconds,
                    token=token,
                    frame_size=(height, width),
                    fps=args.fps,
                    content=args.content,
                    on_chunk=functools.partial(progress.advance, task),
                )
            for r in results:
                r.warmup = args.warmup
            starved = [r.client for r in results if r.served_share < args.min_served or r.error]
            report_levels.append(
                {
                    "clients": clients,
                    "summary": level_summary(results),
                    "per_client": client_rows(results),
                    "starved": starved,
                    "chunks": {r.client: r.records for r in results},
                }
            )
            s = report_levels[-1]["summary"]
            spread = f", clients per replica {s['replicas']}" if s["replicas"] else ""
            console.print(
                f"{clients} clients: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, {s['skipped']} skipped, "
                f"{s['stream_s_per_s']} stream-s per s{spread}"
            )
    finally:
        if server_thread is not None:
            server_thread.stop()
    from core.provenance import git_revision, package_version

    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "token"},
        "model": model_name,
        "url": url,
        "server_pid": os.getpid() if server_thread is not None else None,
        "git": git_revision(),
        "versions": {p: package_version(p) for p in ("torch", "transformers", "websockets")},
        "levels": report_levels,
        "starved": {str(level["clients"]): level["starved"] for level in report_levels if level["starved"]},
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    header = (
        f"{', '.join(map(str, levels))} clients x {args.seconds} s at {args.fps:g} FPS, {width}x{height} "
        f"{args.content} frames (JPEG), model {model_name or url}, latency budget {args.latency_budget:g} s"
    )
    table = markdown(report_levels, header)
    (out / "summary.md").write_text(table)
    plot(report_levels, out / "latency.png")
    print(table, flush=True)
    console.print(f"results in {out}")
    if report["starved"]:
        where = "; ".join(f"{n} clients: {ids}" for n, ids in report["starved"].items())
        print(
            f"error: starved (an error, or commentary for < {args.min_served:.0%} of answered chunks): {where}",
            file=sys.stderr,
        )
        return 1
    return 0
