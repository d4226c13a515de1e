"""The remote engine: the real WebSocket server on loopback with the tiny model, `RemoteSession`."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading

import numpy as np
import pytest
from websockets.sync.client import connect

from conftest import SMALL_STREAM, random_frames
from core.engine import StreamingEngine
from core.errors import StreamVLMError
from core.remote import protocol as p
from core.remote.client import RemoteSession
from core.remote.server import InferenceServer
from serverhelpers import GREEDY, RunningServer, no_sessions_left


@pytest.fixture
def server(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
    running = RunningServer(engine, token="s3cret", max_sessions=2, budget=30.0)
    yield running
    running.stop()


def test_remote_commentary_equals_the_local_sessions(server, tiny_model):
    local = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY).start(
        previous_text="Final, second half"
    )
    rng = np.random.default_rng(3)
    chunks = [random_frames(rng, 56, 84) for _ in range(6)]
    # PNG: frames travel losslessly, so the remote session sees the local one's pixels (JPEG is the default).
    with RemoteSession(
        server.url, token="s3cret", previous_text="Final, second half", seed=0, image_format="png"
    ) as remote:
        for k, frames in enumerate(chunks):
            assert remote.push(frames, k, k + 1) == local.push(frames, k, k + 1)
            assert remote.last_latency is not None and remote.skipped == 0
    assert no_sessions_left(server)  # closing the client frees its session


@pytest.mark.parametrize(
    "token, words", [(None, "missing or wrong token"), ("nope", "missing or wrong token")]
)
def test_a_wrong_or_missing_token_is_refused(server, token, words):
    with pytest.raises(StreamVLMError, match=rf"closed the session: {words} \(code 1008\)"):
        RemoteSession(server.url, token=token)


def test_another_protocol_version_is_refused_with_a_clear_message(server):
    with connect(server.url) as ws:
        ws.send(p.encode("hello", version=99, token="s3cret"))
        with pytest.raises(Exception) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == p.CLOSE_BAD_VERSION
    assert f"this server speaks protocol {p.VERSION}, the client 99" in closed.value.rcvd.reason


def test_malformed_and_oversized_messages_close_only_their_connection(server):
    rng = np.random.default_rng(0)
    with RemoteSession(server.url, token="s3cret") as steady:
        steady.push(random_frames(rng, 56, 56), 0, 1)
        for bad in (
            "{not json",
            json.dumps({"type": "chunk", "t_start": "x"}),
            b"\x00" * (p.MAX_IMAGE_BYTES + 10),
        ):
            with connect(server.url, max_size=None) as ws:
                ws.send(p.encode("hello", version=p.VERSION, token="s3cret"))
                p.decode(ws.recv(timeout=10), ("ready",))
                ws.send(bad)
                with pytest.raises(Exception) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd.code in (p.CLOSE_MALFORMED, p.CLOSE_TOO_BIG)
        steady.push(random_frames(rng, 56, 56), 1, 2)  # the other client's stream went on
    assert no_sessions_left(server)


def test_more_clients_than_max_sessions_get_a_clear_refusal(server):
    first = RemoteSession(server.url, token="s3cret")
    second = RemoteSession(server.url, token="s3cret")
    with pytest.raises(StreamVLMError, match=r"the server is full: it has room for 2 sessions.*code 4002"):
        RemoteSession(server.url, token="s3cret")
    first.close()
    second.close()


def test_a_server_on_another_address_needs_a_token(tiny_model):
    from core.errors import ConfigError

    server = InferenceServer(StreamingEngine(tiny_model))
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without a token"):
        asyncio.run(server.serve("0.0.0.0", 0))


def test_cli_serve_and_run_against_it(tiny_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from clihelpers import CLIP, run_cli
    from livehelpers import free_port

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "token").write_text("abc123\n")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "serve",
            "--model",
            str(tiny_dir),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--token-file",
            str(tmp_path / "token"),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "serve.log").open("w"),  # a file: an unread pipe could block the server's logging
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert server.stdout.readline().startswith(f"serving {tiny_dir} at ws://127.0.0.1:{port}")
        url = f"ws://127.0.0.1:{port}"
        ok = run_cli(
            "run",
            "--source",
            str(CLIP),
            "--server",
            url,
            "--token",
            "abc123",
            "--jsonl",
            str(tmp_path / "o.jsonl"),
        )
        refused = run_cli("run", "--source", str(CLIP), "--server", url, "--token", "wrong")
    finally:
        server.kill()
        server.wait(10)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) >= 4
    assert refused.returncode == 2
    assert "error: the server at" in refused.stderr and "missing or wrong token (code 1008)" in refused.stderr


def test_killing_a_client_mid_stream_frees_its_session(server):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    client = textwrap.dedent(
        f"""
        import numpy as np
        from core.remote.client import RemoteSession
        session = RemoteSession({server.url!r}, token="s3cret")
        session.push([np.zeros((56, 56, 3), np.uint8)] * 2, 0, 1)
        print("streaming", flush=True)
        import time; time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", client],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
    )
    try:
        assert process.stdout.readline().strip() == b"streaming"
        assert server.server.sessions == 1
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
    assert no_sessions_left(server)


class RecordingEngine(StreamingEngine):
    """A real engine that remembers how each session was started."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[dict] = []

    def start(self, **kwargs):
        self.started.append(kwargs)
        return super().start(**kwargs)


def test_a_dropped_server_is_reconnected_with_the_commentary_so_far_as_previous_text(tiny_model):
    from livehelpers import free_port

    port = free_port()
    first = RunningServer(StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY), port)
    rng = np.random.default_rng(5)
    chunks = [random_frames(rng, 56, 84) for _ in range(5)]
    states = []
    remote = RemoteSession(
        first.url,
        previous_text="Cup final",
        seed=0,
        image_format="png",  # lossless, so the resumed session's replies can equal a local session's
        on_state=lambda s, m: states.append(s.value),
    )
    said = [remote.push(chunks[k], k, k + 1) for k in range(3)]
    assert any(said), "the tiny model said nothing; the resumed previous text would not be tested"
    first.stop()  # the server goes away (1001)
    second_engine = RecordingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
    second: list[RunningServer] = []
    timer = threading.Timer(1.0, lambda: second.append(RunningServer(second_engine, port)))
    timer.start()
    try:
        resumed = remote.push(chunks[3], 3, 4)  # waits for the new server, then sends this chunk there
        resumed += remote.push(chunks[4], 4, 5)
        previous = " ".join(["Cup final", *(c.text for events in said for c in events)])
        assert second_engine.started[0]["previous_text"] == previous
        assert remote.resume_text.startswith(previous)
        assert remote.reconnects == 1 and states[0] == "reconnecting" and states[-1] == "connected"
        # The resumed session is a fresh session with that previous text: the same as a local one.
        local = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY).start(
            previous_text=previous, seed=0
        )
        assert resumed == local.push(chunks[3], 3, 4) + local.push(chunks[4], 4, 5)
    finally:
        timer.join()
        remote.close()
        for running in second:
            running.stop()


def test_a_server_that_stays_away_ends_the_session_with_a_clear_error(tiny_model):
    from core.media.reconnect import Backoff

    running = RunningServer(StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY))
    remote = RemoteSession(running.url, reconnect=Backoff(initial=0.1, cap=0.2, give_up_after=1.0))
    remote.push(random_frames(np.random.default_rng(0), 56, 56), 0, 1)
    running.stop()
    with pytest.raises(StreamVLMError, match=r"could not be reached again for 1 s.*cannot reach the server"):
        remote.push(random_frames(np.random.default_rng(1), 56, 56), 1, 2)
    remote.close()


def test_a_refusal_is_not_retried(server):
    with pytest.raises(StreamVLMError, match="missing or wrong token"):
        RemoteSession(server.url, token="nope")
    assert no_sessions_left(server, timeout=1)


def test_killing_and_restarting_the_server_mid_stream(tiny_dir, tmp_path):
    """A SIGKILLed server process: the client waits, reconnects to its restart and goes on."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from livehelpers import free_port

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}

    def start_server(log_name: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "core", "serve", "--model", str(tiny_dir), "--device", "cpu"]
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=(tmp_path / log_name).open("w"),
            text=True,
            env=env,
            cwd=root,
        )
        assert process.stdout.readline().startswith("serving"), (tmp_path / log_name).read_text()
        return process

    rng = np.random.default_rng(2)
    server = start_server("first.log")
    try:
        remote = RemoteSession(f"ws://127.0.0.1:{port}", seed=0)
        for k in range(3):
            remote.push(random_frames(rng, 56, 56), k, k + 1)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        with pytest.raises(StreamVLMError):  # nothing listens: connections are refused at once
            RemoteSession(f"ws://127.0.0.1:{port}")
        result: dict = {}

        def push_during_the_outage() -> None:
            result["events"] = remote.push(random_frames(rng, 56, 56), 3, 4)
            result["at"] = time.monotonic()

        pushing = threading.Thread(target=push_during_the_outage)
        pushing.start()
        time.sleep(1.0)
        assert pushing.is_alive()  # the client is waiting for the server, not failing
        server = start_server("second.log")
        back = time.monotonic()
        pushing.join(30)
        assert "at" in result, "the client did not continue after the server came back"
        assert result["at"] - back < 5.0  # within a few seconds of the restart
        assert remote.reconnects == 1
        remote.push(random_frames(rng, 56, 56), 4, 5)  # and the stream goes on
        remote.close()
    finally:
        server.kill()
        server.wait(10)
