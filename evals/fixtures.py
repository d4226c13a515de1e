"""Tiny datasets in each benchmark's published format, and a scripted OpenAI-compatible judge server.

`make_fixtures(root)` (or `python -m evals make-fixtures DIR`) draws a few seconds-long synthetic
football clips (core/synthetic.py) and writes, beside them, the annotation files each benchmark
reads: Inf-Streams-Eval metadata and score windows, a LiveSports-3K CC jsonl export, OVO-Bench's
`ovo_bench_new.json` with every task type, and VLMEvalKit's TSV files for Video-MME, MVBench and
LongVideoBench. Every benchmark then runs end to end in seconds with the tiny model; the numbers
mean nothing, the plumbing is what is exercised.

`ScriptedChatServer` is a stdlib HTTP server on loopback that speaks the chat-completions protocol
and answers from a script (a function of the request), for tests and for smoke runs without a key.
"""

from __future__ import annotations

import argparse
import csv
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from core.cli_args import number, path_arg
from core.paths import make_output_folder
from core.synthetic import write_clip

SECONDS, WIDTH, HEIGHT, FPS = 12, 112, 64, 4
WORDS = "the ball goes wide and red press high blue break away shot saved corner".split()


def make_fixtures(root: Path, videos: int = 2, seconds: int = SECONDS) -> dict[str, Path]:
    """Write every benchmark's fixture under `root`; returns each benchmark's --data path."""
    root.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(videos):
        path = root / "videos" / f"match{i}.mp4"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            write_clip(path, seconds=seconds, width=WIDTH, height=HEIGHT, fps=FPS, seed=i)
        clips.append(path)
    return {
        "inf-stream": _inf_stream(root / "inf-stream", clips, seconds),
        # Each folder is named after its benchmark, so the README's `--data DIR/<benchmark>` holds.
        "livesports-cc": _livesports(root / "livesports-cc", clips, seconds),
        "ovobench": _ovobench(root / "ovobench", clips),
        **{
            f"vqa:{name}": _vqa(root / "vqa", clips, name)
            for name in ("Video-MME", "MVBench", "LongVideoBench")
        },
    }


def _link(folder: Path, clips: list[Path], sub: str = "videos") -> list[str]:
    """Videos placed in the benchmark's folder (symlinks), named as its annotations refer to them."""
    (folder / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for clip in clips:
        target = folder / sub / clip.name
        if not target.exists():
            target.symlink_to(clip.resolve())
        names.append(clip.name)
    return names


def _words(seconds: int, offset: int) -> list[list]:
    """One word every 0.5 s: [start, end, word]."""
    return [[k / 2, k / 2 + 0.4, WORDS[(k + offset) % len(WORDS)]] for k in range(2 * seconds - 1)]


def _inf_stream(folder: Path, clips: list[Path], seconds: int) -> Path:
    names = _link(folder, clips)
    with (
        open(folder / "eval_all_metadata.jsonl", "w") as meta,
        open(folder / "windows.jsonl", "w") as windows,
    ):
        for i, name in enumerate(names):
            words = _words(seconds, i)
            meta.write(json.dumps({"video": name, "content": words}) + "\n")
            for lo in range(0, seconds, 4):  # 4-s score windows of sentences
                content = [[s, e, w] for s, e, w in words if lo <= s < lo + 4]
                windows.write(json.dumps({"video": name, "title": f"Match {i}", "content": content,
                                          "preasr": " ".join(w for s, _, w in words if s < lo)}) + "\n")  # fmt: skip
    return folder


def _livesports(folder: Path, clips: list[Path], seconds: int) -> Path:
    names = _link(folder, clips)
    rows = []
    for i, name in enumerate(names):
        for j, (begin, end) in enumerate([(2, 6), (6, min(10, seconds))]):
            words = _words(seconds, i + j)
            rows.append({
                "video": name, "video_id": f"vid{i}", "event_id": j, "begin": begin, "end": end,
                "event_title": f"Match {i}: attack {j}",
                "preasr_text": " ".join(w for s, _, w in words if s < begin),
                "event_asr_text": " ".join(w for s, _, w in words if begin <= s < end),
            })  # fmt: skip
    (folder / "livesports_cc_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def ovo_items(names: list[str]) -> list[dict]:
    """One item of each OVO-Bench task type, in ovo_bench_new.json's format."""
    a, b = (f"src_videos/{n}" for n in (names + names)[:2])
    choice = {"question": "What colour is the ball?", "options": ["white", "red", "blue", "green"], "gt": 0}
    items = [
        {"id": i, "task": task, "video": a if i % 2 == 0 else b, "realtime": 4 + i % 5, **choice}
        for i, task in enumerate(["OCR", "ACR", "ATR", "STU", "FPD", "OJR", "EPM", "ASI", "HLD"])
    ]
    items += [
        {"id": 20, "task": "REC", "video": a, "activity": "pass the ball",
         "test_info": [{"realtime": 3, "count": 1}, {"realtime": 6, "count": 2}]},
        {"id": 21, "task": "SSR", "video": b,
         "test_info": [{"realtime": 3, "step": "kick off", "type": 1}, {"realtime": 7, "step": "score a goal", "type": 0}]},
        {"id": 22, "task": "CRR", "video": a, "question": "Who scores the goal?", "answer": "red", "ask_time": 2,
         "test_info": [{"realtime": 5, "type": 0}, {"realtime": 9, "type": 1}]},
    ]  # fmt: skip
    return items


def _ovobench(folder: Path, clips: list[Path]) -> Path:
    (folder / "src_videos").mkdir(parents=True, exist_ok=True)
    for clip in clips:
        target = folder / "src_videos" / clip.name
        if not target.exists():
            target.symlink_to(clip.resolve())
    (folder / "ovo_bench_new.json").write_text(json.dumps(ovo_items([c.name for c in clips]), indent=1))
    return folder


def _vqa(folder: Path, clips: list[Path], benchmark: str) -> Path:
    """VLMEvalKit's local layout (what its own download step leaves): `<benchmark>.tsv` beside the videos
    its dataset classes open: Video-MME `video/<video>.mp4`, MVBench `<prefix>/<video>`, LongVideoBench
    `<video_path>`."""
    names = _link(folder, clips, "video" if benchmark == "Video-MME" else "videos")
    rows = []
    for i, name in enumerate(names * 2):
        opts = ["white", "red", "blue", "green"]
        if benchmark == "Video-MME":
            rows.append({"index": i, "video": Path(name).stem, "video_path": f"./video/{name}", "duration": "short",
                         "domain": "Sports Competition", "candidates": str([f"{chr(65 + k)}. {o}" for k, o in enumerate(opts)]),
                         "sub_category": "Football", "task_type": "Object Recognition" if i % 2 else "Counting Problem",
                         "subtitle_path": f"./subtitle/{Path(name).stem}.srt",
                         "question": "What colour is the ball?", "answer": "ABCD"[i % 4]})  # fmt: skip
        elif benchmark == "MVBench":
            rows.append({"index": i, "task_type": "Moving Direction", "prefix": "./videos", "data_type": "video",
                         "bound": "True" if i % 2 else "False", "start": 1.0, "end": 5.0, "video": name,
                         "question": "Where does the ball go?", "answer": ["left", "right", "up"][i % 3],
                         "candidates": str(["left", "right", "up"])})  # fmt: skip
        else:
            rows.append({"index": i, "video": Path(name).stem, "video_path": f"./videos/{name}", "duration": 12, "duration_group": 15,
                         "question": "What colour is the ball?", "candidates": str(opts), "correct_choice": i % 4,
                         "question_category": "T2O", "subtitle_path": f"{Path(name).stem}.json",
                         "starting_timestamp_for_subtitles": 0})  # fmt: skip
    with open(folder / f"{benchmark}.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return folder


# -- a scripted judge ------------------------------------------------------------------------------

Script = Callable[[dict], "tuple[int, str] | str"]  # request body -> (HTTP status, reply text) or text


class ScriptedChatServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 answering from `script`.

    The script may return a reply text (HTTP 200), or (status, text) to refuse; a status of 0 means
    "never answer" (the request hangs until the client times out). Requests are recorded.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                result = server.script(body)
                status, text = result if isinstance(result, tuple) else (200, result)
                if status == 0:
                    time.sleep(30)
                    return
                if status == 200:
                    payload = {
                        "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                        "model": body.get("model", ""),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }  # fmt: skip
                else:
                    payload = {"error": {"message": text, "type": "scripted", "code": status}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=path_arg, help="folder to write the fixtures into")
    parser.add_argument("--videos", type=number(1, 100, integer=True), default=2)
    parser.add_argument("--seconds", type=number(1, 3600, integer=True), default=SECONDS)


def run(args: argparse.Namespace) -> int:
    make_output_folder(args.path, "the fixtures folder")
    for name, path in make_fixtures(args.path, args.videos, args.seconds).items():
        print(f"{name:22s} --data {path}")
    return 0
