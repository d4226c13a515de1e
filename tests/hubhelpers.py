"""A local server that speaks the hub's file API, for the download tests (test_download.py, the app's).

`FakeHub` serves a folder as model `org/name` on loopback: the model info and file listing of the
hub's API, and `resolve/{revision}/{file}` with HEAD (the metadata huggingface_hub reads: commit,
ETag, size) and GET with byte ranges. It sends no xet headers, so huggingface_hub takes the plain
HTTP path. It counts the bytes of every file it sends, can claim a size a file does not have, can
send at a set pace, and can stop in the middle of a file until the test lets go.
`repository_files` is the tiny model as such a repository, its weights grown so that a download
can be cut in the middle.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

REPO = "org/name"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BIG = "model.safetensors"  # grown past the 10 MB huggingface_hub reads at a time: a cut leaves bytes on disk
PADDING = 24 * 1024 * 1024
CHUNK = 10 * 1024 * 1024  # huggingface_hub's constants.DOWNLOAD_CHUNK_SIZE
# A model repository's other files, which loading does not read: never fetched.
NOT_FETCHED = {
    "README.md": b"# org/name\n",
    "assets/demo.mp4": b"\0" * 50_000,
    "training_state/optimizer.pt": b"\0" * 60_000,
}


class FakeHub:
    def __init__(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repo_id, self.files = repo_id, files
        self.served: Counter[str] = Counter()  # body bytes sent per file
        self.asked: list[str] = []  # every request about the repository
        self.claimed: dict[str, int] = {}  # sizes to report instead of the true ones
        self.stall_after: dict[str, int] = {}  # send this many bytes of a file, then wait for `release`
        self.release = threading.Event()
        self.pace: float | None = None  # bytes a second a file is sent at (None: as fast as it goes)
        self.ranges = True  # False: answer a range request with the whole file, as some servers do
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def etag(name: str, data: bytes) -> str:
        # As the hub does: the sha256 of an LFS file (weights, media), the git blob id of the others.
        if name.endswith((".safetensors", ".mp4")):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def total(self) -> int:
        """The bytes of the files a checkpoint is read for."""
        return sum(len(d) for n, d in self.files.items() if n not in NOT_FETCHED)

    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        if path != "/api/agent-harnesses":  # huggingface_hub's user-agent lookup, not about the model
            self.asked.append(f"{request.command} {path}")
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.+))?)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = (api or resolve).group(1) if api or resolve else None
        if repo != self.repo_id:
            return self.send(
                request, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
            )
        if api and api.group(2) != "tree":
            info = {"id": self.repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in self.files]}
            return self.send(request, 200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        if api:  # the file listing, of the whole repository or of a folder in it
            under = (api.group(4) or "").rstrip("/")
            listing = [
                {"type": "file", "path": n, "size": len(d), "oid": self.etag(n, d)}
                for n, d in self.files.items()
                if not under or n.startswith(under + "/")
            ]
            if listing:
                return self.send(
                    request, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}
                )
        elif resolve.group(3) in self.files:
            return self.send_file(request, resolve.group(3), body)
        self.send(request, 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})

    def send_file(self, request: BaseHTTPRequestHandler, name: str, body: bool) -> None:
        data = self.files[name]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self.etag(name, data)}"', "Accept-Ranges": "bytes"}
        if not body:
            size = self.claimed.get(name, len(data))
            return self.send(request, 200, b"", {**headers, "Content-Length": str(size)}, length=size)
        start = 0
        if self.ranges and (ranged := re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))):
            start = int(ranged.group(1))
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        request.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            request.send_header(key, value)
        request.end_headers()
        stop = self.stall_after.get(name)
        try:
            for i in range(0, len(part), 1 << 16):
                if stop is not None and i >= stop:
                    self.release.wait(60)
                    request.close_connection = True
                    return
                block = part[i : i + (1 << 16)]
                request.wfile.write(block)
                with self.lock:
                    self.served[name] += len(block)
                if self.pace:
                    time.sleep(len(block) / self.pace)
        except OSError:
            request.close_connection = True  # the client went away

    def send(self, request, status: int, data: bytes, headers: dict, length: int | None = None) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        if "Content-Length" not in headers:
            request.send_header("Content-Length", str(len(data) if length is None else length))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)


def repository_files(tiny_dir: str | Path) -> dict[str, bytes]:
    """The tiny model as a repository on the hub has it, its weights file grown to 25 MB by an unused
    tensor (a download is cut in the middle of it), beside files a checkpoint is not read for."""
    from safetensors.numpy import load_file, save

    files = {p.name: p.read_bytes() for p in sorted(Path(tiny_dir).iterdir()) if p.is_file()}
    weights = load_file(Path(tiny_dir) / BIG)
    weights["unused.padding"] = np.random.default_rng(0).standard_normal(PADDING // 4, dtype=np.float32)
    files[BIG] = save(weights, metadata={"format": "pt"})
    return files | NOT_FETCHED


def point_hub_at(monkeypatch, url: str) -> None:
    """huggingface_hub in this process asks `url` (as HF_ENDPOINT does for a new process): its endpoint
    and the file URL template it derived from it at import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
