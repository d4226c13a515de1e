"""Questions over the remote protocol (version 2): a remote session answers a question with the same tokens
as a local one (greedy, float32), a malformed or unaskable question closes only its own connection, an
older client is refused with the reason, and a question in flight when the connection drops is asked
again by the new session."""

from __future__ import annotations

import numpy as np
import pytest
from test_questions import answering_config
from test_server_hostile import TOKEN, assert_closed, chunk, close_of, hello

from conftest import SMALL_STREAM, random_frames
from core.config import CachePolicy
from core.engine import StreamingEngine
from core.media.reconnect import Backoff
from core.remote import protocol as p
from core.remote.client import RemoteSession
from core.remote.server import InferenceServer, ServerThread
from serverhelpers import RunningServer, no_sessions_left

POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
QUESTION = "Who is winning?"


@pytest.fixture(scope="module")
def answering(tiny_model):
    return answering_config(tiny_model)


def chunks(seed: int = 0, n: int = 4) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [random_frames(rng, 56, 84) for _ in range(n)]


def stream_asking(session, frames: list[list[np.ndarray]], asked_before: int) -> list:
    """Push every chunk; the question is asked just before chunk `asked_before`."""
    out = []
    for k, chunk_frames in enumerate(frames):
        if k == asked_before:
            session.ask(QUESTION)
        out.append(session.push(chunk_frames, k, k + 1))
    return out


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_a_remote_session_answers_a_question_with_the_same_tokens_as_a_local_one(
    tiny_model, answering, batched
):
    frames = chunks()
    local_engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=answering)
    with local_engine.start(seed=0) as local:
        expected = stream_asking(local, frames, asked_before=2)
    assert [[line.question for line in lines] for lines in expected] == [[None], [None], [QUESTION], [None]]

    options = dict(sessions=2, batched=True) if batched else {}
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=answering, **options)
    running = RunningServer(engine, token=TOKEN, budget=30.0)
    try:
        with RemoteSession(running.url, token=TOKEN, seed=0, image_format="png") as remote:
            got = stream_asking(remote, frames, asked_before=2)
            assert remote.questions_waiting == 0
        assert got == expected  # the answer's text and its question, and every line around it
        assert no_sessions_left(running)
    finally:
        running.stop()


@pytest.fixture
def server(tiny_model, answering):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering)
    running = RunningServer(engine, token=TOKEN, max_sessions=2, budget=30.0)
    yield running
    running.stop()


BAD_QUESTIONS = [
    (p.encode("question"), "needs the field 'text'"),
    (p.encode("question", text=5), "wrong type"),
    (p.encode("question", text=None), "wrong type"),
    ('{"type":"question","text":"\\ud800"}', "not valid Unicode"),
    (p.encode("questions", text="Who?"), "expected a message of type chunk or question"),
]


def test_bad_question_messages_close_only_their_connection(server):
    rng = np.random.default_rng(0)
    with RemoteSession(server.url, token=TOKEN) as steady:
        steady.push(random_frames(rng, 56, 56), 0, 1)
        for message, words in BAD_QUESTIONS:
            assert_closed(close_of(server, message), p.CLOSE_MALFORMED, words)
        # A question where a frame was due is a text message out of place.
        assert_closed(close_of(server, chunk(), p.encode("question", text="Who?")), p.CLOSE_UNSUPPORTED)
        steady.ask(QUESTION)  # the other session goes on, and is answered
        lines = steady.push(random_frames(rng, 56, 56), 1, 2)
        assert [line.question for line in lines] == [QUESTION]
    assert no_sessions_left(server)


def test_an_older_client_is_refused_with_the_reason(server):
    close = close_of(server, hello(version=1), session=False)
    assert_closed(close, p.CLOSE_BAD_VERSION, f"this server speaks protocol {p.VERSION}, the client 1")


def test_a_question_too_long_for_the_model_is_refused_and_the_stream_goes_on(server):
    """The client cannot count the model's tokens: the server refuses such a question with its reason
    (`question_refused`), asks nothing, and the session streams on and answers the next question."""
    rng = np.random.default_rng(0)
    with RemoteSession(server.url, token=TOKEN) as session:
        with pytest.raises(ValueError, match="empty"):
            session.ask("  ")  # refused here, before it is sent
        long = "why " * 40
        session.ask(long)
        lines = session.push(random_frames(rng, 56, 56), 0, 1)
        assert not any(line.is_answer for line in lines)
        [(question, reason)] = session.refused
        assert question == long.strip() and "a question is at most" in reason
        session.ask(QUESTION)
        lines = session.push(random_frames(rng, 56, 56), 1, 2)
        assert [line.question for line in lines if line.is_answer] == [QUESTION]
        assert session.reconnects == 0
    assert no_sessions_left(server)


class FailingOnceServer(InferenceServer):
    """Fails (1011) on the first chunk that comes after a question: the client's connection drops with
    the question sent but not yet asked by any chunk."""

    failed = False

    async def _ask(self, ws, session, text: str) -> None:
        self.questions.append(text)
        await super()._ask(ws, session, text)

    async def _chunk(self, ws, session) -> None:
        if not self.failed and session.questions_waiting:
            self.failed = True
            raise RuntimeError("a failure of the server's")
        await super()._chunk(ws, session)


def test_a_question_in_flight_when_the_connection_drops_is_asked_by_the_new_session(tiny_model, answering):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering)
    server = FailingOnceServer(engine, budget=30.0)
    server.questions = []  # every question message it got
    running = ServerThread(server)
    rng = np.random.default_rng(0)
    quick = Backoff(initial=0.05, cap=0.1, give_up_after=5.0)
    try:
        with RemoteSession(running.url, reconnect=quick) as session:
            session.push(random_frames(rng, 56, 56), 0, 1)
            session.ask(QUESTION)
            lines = session.push(random_frames(rng, 56, 56), 1, 2)
            assert session.reconnects == 1
            assert [line.question for line in lines] == [QUESTION]
            # Asked once more by the new session, and no more after it was answered.
            session.push(random_frames(rng, 56, 56), 2, 3)
        assert server.failed and server.questions == [QUESTION, QUESTION]
    finally:
        running.stop()
