"""Questions mid-stream (issue 19): a question enters the next chunk's user turn in the trainer's QA layout,
the reply opens with the answer, and answers are marked wherever they go (subtitles, JSON lines, speech).

The layout test builds the trainer's own sample (trainer/data/builder.py, a QA item in the window) and
an engine session on the same frames, and compares the question's round token by token, so inference
and training cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import srt
import webvtt

from conftest import SMALL_STREAM, random_frames
from core.config import CachePolicy, EvictionMode, GenerationConfig, StreamConfig
from core.conversation import MAX_QUESTION_TOKENS, Conversation, Part, QuestionError
from core.engine import StreamingEngine, commentary
from core.errors import StreamVLMError
from core.media.subtitles import open_writers
from core.pipeline import Pipeline, ScriptedQuestions
from core.pool import ROUND_TEXT_TOKENS
from core.speech.clock import StreamClock
from core.speech.speaker import Speaker
from core.types import Commentary, Frame, one_line
from trainer.data import IGNORE_INDEX, FrameBudget, build_sample
from trainer.data.video import read_clip
from trainer.fixture import make_fixture

VIDEO = "videos/match_00.mp4"
QUESTION = "Who is winning?"


def wordless_tokens(model) -> list[str]:
    """The texts of the tokens that could end or empty an answer: those holding a newline (where an asked
    round's answer ends) and those with nothing printable (the random model likes control bytes)."""
    tokenizer, special = model.tokenizer, set(model.tokenizer.all_special_ids)
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special]
    return [text for text in texts if "\n" in text or not one_line(text)]


def answering_config(model) -> GenerationConfig:
    """Greedy, and none of those tokens ever sampled: the whole reply to a question is its answer, not empty."""
    suppress = tuple(wordless_tokens(model))
    assert "\n" in suppress and all(len(model.encode(text)) == 1 for text in suppress)
    return GenerationConfig(temperature=0.0, max_new_tokens=5, min_new_tokens=5, suppress=suppress)


@pytest.fixture(scope="module")
def answering(tiny_model) -> GenerationConfig:
    return answering_config(tiny_model)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa-fixture")
    make_fixture(path, videos=1, seconds=6.0, window=3.0, stride=3.0, clip=4.0)
    return path


def qa_line(question_time: float, answer: str = "Red.") -> list:
    """A trainer window of 0-3 s with one QA item asked at `question_time` and no commentary words."""
    element = {"type": "video", "video": VIDEO, "video_start": 0.0, "video_end": 3.0}
    stream = {"type": "text_stream", "text_stream": [], "qa_stream": [[0, question_time, QUESTION, answer]]}
    return [{"role": "user", "content": [element]}, {"role": "assistant", "content": [stream]}]


def round_ids(session, k: int, parts: tuple[Part, ...]) -> list[int]:
    return [i for span in session.cache.spans if span.round == k and span.part in parts for i in span.ids]


PROMPT_PARTS = (Part.TURN_OPEN, Part.TIME_LABEL, Part.VISION, Part.PROMPT_CLOSE, Part.ASSISTANT_OPEN)


@pytest.mark.parametrize("asked_in", [0, 1], ids=["first-chunk", "later-chunk"])
def test_an_asked_question_enters_the_next_chunk_exactly_as_the_trainer_lays_it_out(
    tiny_model, answering, data_dir, asked_in
):
    sample = build_sample(qa_line(asked_in + 0.5), data_dir, tiny_model, "x.jsonl:1")
    clip = read_clip(data_dir / VIDEO, 0.0, 3.0, FrameBudget())
    frames = clip.frames.permute(0, 2, 3, 1).numpy()
    engine = StreamingEngine(
        tiny_model, stream=StreamConfig(), cache=CachePolicy(mode=EvictionMode.NONE), generation=answering
    )
    with engine.start(instruction=None, trace=True) as session:
        lines = []
        for k in range(asked_in + 1):
            if k == asked_in:
                session.ask(f"  {QUESTION}\n")  # asked as one line
            lines += session.push(list(frames[2 * k : 2 * k + 2]), float(k), k + 1.0)
        asked = round_ids(session, asked_in, PROMPT_PARTS)
        time_label = tiny_model.decode(round_ids(session, asked_in, (Part.TIME_LABEL,)))

    # The trainer's round `asked_in`: from its user turn's <|im_start|> to where its labels begin.
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()
    starts = [i for i, t in enumerate(ids) if t == tiny_model.special.im_start]
    user = starts[2 + 2 * asked_in]  # system, previous text, then user/assistant pairs
    first_label = next(i for i in range(user, len(ids)) if labels[i] != IGNORE_INDEX)
    assert asked == ids[user:first_label]
    # ... which is where the answer starts: the trained turn goes on with 'Red.\n ...'.
    assert tiny_model.decode(ids[first_label : first_label + 3]).startswith("Red.")
    label = "Time=0.0-1.0s" if asked_in == 0 else "Time=1.0-2.0s "
    assert time_label == label + QUESTION
    # The reply to that chunk is the answer, marked with its question.
    answers = [line for line in lines if line.is_answer]
    assert len(answers) == 1 and answers[0].question == QUESTION and answers[0].start == asked_in
    assert answers[0].text and answers[0].marked == "A: " + answers[0].text


def test_one_question_a_chunk_and_later_ones_wait_for_the_next(tiny_model, answering, rng):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering)
    with engine.start() as session:
        session.ask("First?")
        session.ask("Second?")
        assert session.questions_waiting == 2
        replies = [session.push(random_frames(rng, 56, 56), k, k + 1.0) for k in range(3)]
        labels = [tiny_model.decode(round_ids(session, k, (Part.TIME_LABEL,))) for k in range(3)]
    assert labels == ["Time=0.0-1.0sFirst?", "Time=1.0-2.0s Second?", "Time=2.0-3.0s "]
    assert [[line.question for line in lines] for lines in replies] == [["First?"], ["Second?"], [None]]
    assert session.questions_waiting == 0


def test_a_question_waits_when_its_chunk_is_refused(tiny_model, answering, rng):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering)
    with engine.start() as session:
        session.push(random_frames(rng, 56, 56), 1, 2)
        session.ask(QUESTION)
        with pytest.raises(ValueError, match="forward in time"):
            session.push(random_frames(rng, 56, 56), 0, 1)
        assert session.questions_waiting == 1
        lines = session.push(random_frames(rng, 56, 56), 2, 3)
    assert [line.question for line in lines] == [QUESTION]


@pytest.mark.parametrize("text, words", [("", "empty"), (" \n\t ", "empty"), ("why " * 40, "at most")])
def test_a_question_that_cannot_be_asked_is_one_clear_error(tiny_model, answering, text, words):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering)
    with engine.start() as session:
        with pytest.raises(QuestionError, match=words) as error:
            session.ask(text)
        assert isinstance(error.value, StreamVLMError) and "\n" not in str(error.value)
        assert session.questions_waiting == 0


def test_the_longest_question_fits_the_round_text_a_pool_slot_reserves(tiny_model):
    """A question is round text: with the longest time label and reply closing, it fits ROUND_TEXT_TOKENS."""
    conv = Conversation(tiny_model.spec)
    question = "Why"
    while len(tiny_model.encode(question + " so")) <= MAX_QUESTION_TOKENS:
        question += " so"
    assert len(tiny_model.encode(question)) >= MAX_QUESTION_TOKENS - 2  # as long as one may be
    question = conv.check_question(question)
    late = 31_622_399.0  # the protocol's last chunk: the longest time label
    turn = conv.user_turn(late, late + 1, 0, first=False, question=question)
    text = sum(len(p) for p in turn) + len(conv.marker) + len(conv.turn_end)
    assert text <= ROUND_TEXT_TOKENS


def test_the_reply_to_a_question_is_its_answer_then_any_commentary(tiny_model, caplog):
    spec, enc = tiny_model.spec, tiny_model.encode
    assert commentary(spec, enc("Red.\n the ball goes wide"), 4, 5, "Q?") == [
        Commentary(4, 5, "Red.", question="Q?"),
        Commentary(4, 5, "the ball goes wide"),
    ]
    assert commentary(spec, enc(" The red team"), 4, 5, "Q?") == [Commentary(4, 5, "The red team", "Q?")]
    assert commentary(spec, enc(" The red team"), 4, 5) == [Commentary(4, 5, "The red team")]
    with caplog.at_level(logging.WARNING, logger="core.engine"):
        assert commentary(spec, enc("\n corner kick"), 4, 5, "Q?") == [Commentary(4, 5, "corner kick")]
    assert "no answer to 'Q?'" in caplog.text


# -- outputs ----------------------------------------------------------------------------------------------


def test_answers_are_marked_in_srt_vtt_and_jsonl(tmp_path):
    out = {ext: tmp_path / f"out.{ext}" for ext in ("srt", "vtt", "jsonl")}
    with open_writers(srt=out["srt"], vtt=out["vtt"], jsonl=out["jsonl"]) as writers:
        writers.write(Commentary(0.0, 1.0, "kick off"))
        writers.write(Commentary(1.0, 2.0, " Red <3 ", question="Who is winning?"))
    subs = list(srt.parse(out["srt"].read_text()))
    assert [s.content for s in subs] == ["kick off", "A: Red <3"]
    assert [c.text for c in webvtt.read(str(out["vtt"]))] == ["kick off", "A: Red &lt;3"]
    lines = [json.loads(x) for x in out["jsonl"].read_text().splitlines()]
    assert lines == [
        {"start": 0.0, "end": 1.0, "text": "kick off"},
        {"start": 1.0, "end": 2.0, "text": "Red <3", "question": "Who is winning?"},
    ]


class GatedVoice:
    """A voice that holds each line until released, so a test decides what is waiting meanwhile."""

    name, licence, sample_rate = "gated", "none", 8000

    def __init__(self) -> None:
        self.said: list[str] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def synthesize(self, text: str) -> np.ndarray:
        self.said.append(text)
        self.started.release()
        assert self.release.wait(10)
        return np.zeros(8, np.float32)


def test_answers_are_spoken_ahead_of_commentary_and_never_dropped():
    voice = GatedVoice()
    clock = StreamClock()
    clock.see(0.0)
    speaker = Speaker(voice, [lambda samples, rate, t: None], clock)
    speaker.say(Commentary(0, 1, "line 0"))
    assert voice.started.acquire(timeout=5)  # line 0 is being spoken
    speaker.say(Commentary(1, 2, "line 1"))
    speaker.say(Commentary(1, 2, "Red.", question="Who?"))
    speaker.say(Commentary(2, 3, "line 2"))  # replaces line 1 (newest wins)...
    speaker.say(Commentary(2, 3, "Ten.", question="How many?"))  # ...but no answer replaces another
    speaker.say(Commentary(3, 4, "line 3"))
    stats = speaker.stats()
    assert (stats.waiting, stats.dropped) == (3, 2)
    voice.release.set()
    speaker.close()
    assert voice.said == ["line 0", "Red.", "Ten.", "line 3"]
    assert speaker.stats().dropped == 2


# -- the pipeline's question input -------------------------------------------------------------------------


class RecordingSession:
    """A session that records what it was asked and pushed."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def ask(self, text: str) -> None:
        self.events.append(("ask", text))

    def push(self, frames, t_start, t_end):
        self.events.append(("push", t_start))
        return []

    def close(self) -> None:
        pass


def frames_for(seconds: int):
    return [Frame(np.zeros((28, 28, 3), np.uint8), k / 2) for k in range(2 * seconds)]


def test_scripted_questions_are_asked_in_the_chunk_that_reaches_their_time():
    session = RecordingSession()
    questions = [(2.5, "later"), (0.0, "at once"), (1.0, "end of the first"), (2.6, "same second")]
    pipeline = Pipeline(frames_for(4), session, StreamConfig(fps=2), live=False, questions=questions)
    list(pipeline.run())
    assert session.events == [
        ("ask", "at once"),
        ("ask", "end of the first"),  # 1.0 is in (0, 1]: the trainer's rule
        ("push", 0.0),
        ("push", 1.0),
        ("ask", "later"),
        ("ask", "same second"),
        ("push", 2.0),
        ("push", 3.0),
    ]


def test_pipeline_ask_reaches_the_session_and_one_without_questions_is_refused():
    session = RecordingSession()
    pipeline = Pipeline(frames_for(1), session, StreamConfig(fps=2), live=False)
    pipeline.ask("Typed?")
    assert session.events == [("ask", "Typed?")]

    class Mute:
        def push(self, frames, t_start, t_end):
            return []

    with pytest.raises(StreamVLMError, match="takes no questions"):
        Pipeline(frames_for(1), Mute(), StreamConfig(fps=2), live=False).ask("Hello?")
    with pytest.raises(StreamVLMError, match="takes no questions"):
        list(Pipeline(frames_for(1), Mute(), StreamConfig(fps=2), live=False, questions=[(0, "Q")]).run())


def test_scripted_questions_wrap_the_session_without_changing_what_it_returns(tiny_model, answering, rng):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering)
    with ScriptedQuestions(engine.start(), [(1.5, QUESTION)]) as session:
        replies = [session.push(random_frames(rng, 56, 56), k, k + 1.0) for k in range(3)]
    assert [[line.question for line in lines] for lines in replies] == [[None], [QUESTION], [None]]
