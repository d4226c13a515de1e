"""A remote session's record of what was said: bounded however long the stream (core/remote/client.py)."""

from __future__ import annotations

import numpy as np

import core.remote.client as client
from conftest import SMALL_STREAM
from core.engine import StreamingEngine
from core.remote.client import ELLIPSIS, RemoteSession, _shorten
from serverhelpers import GREEDY, RunningServer


def test_a_remote_session_keeps_a_bounded_record_of_what_was_said(tiny_model, monkeypatch):
    """A remote session kept every line it received, for the text a resumed session starts from: a list
    that grew with the stream. It keeps the latest lines, and of that text the start and the end it is
    cut to, which stay what the whole list gave."""
    monkeypatch.setattr(client, "RECENT_LINES", 3)
    monkeypatch.setattr(client, "RESUME_HEAD_CHARS", 20)  # a short text to cut, so 40 chunks pass it
    monkeypatch.setattr(client, "RESUME_TAIL_CHARS", 60)
    server = RunningServer(StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY))
    rng = np.random.default_rng(2)
    received, resumes = [], []  # every line, and the resumed text after each chunk with its line count
    try:
        with RemoteSession(server.url, previous_text="  Cup final ", seed=0, image_format="png") as remote:
            for k in range(40):
                received += remote.push([rng.integers(0, 255, (56, 56, 3), np.uint8)] * 2, k, k + 1)
                resumes.append((len(received), remote.resume_text))
                assert len(remote.commentary) <= 3
                assert len(remote._said._start) + len("".join(remote._said._end)) < 2 * 80 + 60
    finally:
        server.stop()
    assert len(received) > 10, "the tiny model said too little to pass the bound"
    assert list(remote.commentary) == received[-3:]
    for count, resumed in resumes:
        assert resumed == _shorten(" ".join(["Cup final", *(line.text for line in received[:count])]), 80)
    last = resumes[-1][1]
    assert ELLIPSIS in last and last.startswith("Cup final") and last.endswith(received[-1].text)
