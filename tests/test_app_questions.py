"""Questions in the app (issue 19), driven as a person would (pytest-qt, real widgets offscreen): the question
box opens while a run streams, local or remote; a typed question (Enter or Ask) shows in the log as asked,
and its answer comes back marked 'A: ' in the log (in its own style) and over the video; a question the
session refuses is said in one sentence under the box while the run goes on.

The tiny model has random weights: the generation config of test_questions (greedy, no token that could
end or empty an answer) makes every reply to a question an answer.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtGui import QFont  # noqa: E402
from test_questions import answering_config  # noqa: E402

from app.run_state import Phase  # noqa: E402
from app.window import MainWindow  # noqa: E402
from clihelpers import CLIP  # noqa: E402
from conftest import SMALL_STREAM  # noqa: E402
from core.config import EngineConfig  # noqa: E402
from core.conversation import MAX_QUESTION_TOKENS  # noqa: E402
from core.types import Commentary  # noqa: E402

QUESTION = "Who is winning?"


@pytest.fixture(scope="module")
def answering(tiny_model) -> EngineConfig:
    return EngineConfig(generation=answering_config(tiny_model))


@pytest.fixture
def window(qtbot, tmp_path, answering):
    win = MainWindow(
        settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), config=answering
    )
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def log_lines(win) -> list[str]:
    return [line for line in win.log.toPlainText().splitlines() if line.strip()]


def log_format(win, text: str):
    """The character format the log shows the line starting with `text` in."""
    document = win.log.document()
    for k in range(document.blockCount()):
        block = document.findBlockByNumber(k)
        if text in block.text():
            return next(iter(block.begin())).fragment().charFormat()
    raise AssertionError(f"{text!r} is not in the log")


def stream(qtbot, win, model: str) -> None:
    win.source_box.setCurrentText(str(CLIP))
    win.model_edit.setText(model)
    qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.run.phase is Phase.STREAMING and win.frame is not None, timeout=60_000)


def type_question(qtbot, win, text: str) -> None:
    """Typed into the box and asked with Enter."""
    qtbot.keyClicks(win.question_edit, text)
    qtbot.keyClick(win.question_edit, Qt.Key.Key_Return)


def answered(qtbot, win, question: str):
    """The answer to `question`, once it came (the next chunk after it was asked)."""
    qtbot.waitUntil(lambda: any(line.question == question for line in win.lines), timeout=60_000)
    return next(line for line in win.lines if line.question == question)


def test_a_typed_question_is_logged_as_asked_and_its_answer_marked_in_the_log_and_over_the_video(
    qtbot, window, tiny_dir
):
    assert not window.question_edit.isEnabled() and not window.ask_button.isEnabled()  # nothing streams
    stream(qtbot, window, str(tiny_dir))
    assert window.question_edit.isEnabled() and not window.ask_button.isEnabled()  # no question yet
    type_question(qtbot, window, f"  {QUESTION}  ")
    assert window.question_edit.text() == "" and not window.question_note.isVisible()
    (asked,) = [line for line in log_lines(window) if "Q: " in line]
    assert asked.endswith(f"] Q: {QUESTION}")  # as asked: one line, at the picture's time
    answer = answered(qtbot, window, QUESTION)
    assert answer.text and answer.marked == "A: " + answer.text
    shown = f"[{answer.start // 60:02.0f}:{answer.start % 60:04.1f} - "
    (logged,) = [line for line in log_lines(window) if line.startswith(shown) and "A: " in line]
    assert logged.endswith(f"] A: {answer.text}")
    assert log_lines(window).index(asked) < log_lines(window).index(logged)
    # Told apart in the log: the answer bold, the question italic, commentary in neither.
    assert log_format(window, "A: " + answer.text).fontWeight() == QFont.Weight.Bold
    assert log_format(window, "Q: " + QUESTION).fontItalic()
    # (greedy, the tiny model's commentary may be silent: a line as the worker would send it, after the answer)
    window.worker.commentary.emit(Commentary(answer.end, answer.end + 1, "plain commentary"))
    qtbot.waitUntil(lambda: any(line.text == "plain commentary" for line in window.lines), timeout=10_000)
    plain = log_format(window, "plain commentary")
    assert plain.fontWeight() != QFont.Weight.Bold and not plain.fontItalic()
    assert ("A: " + answer.text) in [text for text, _ in window.overlay.lines_at(answer.end)]

    # A second question with Ask; the button is the box's other way in.
    qtbot.keyClicks(window.question_edit, "And now?")
    assert window.ask_button.isEnabled()
    qtbot.mouseClick(window.ask_button, Qt.MouseButton.LeftButton)
    assert answered(qtbot, window, "And now?").is_answer
    window.stop()
    qtbot.waitUntil(lambda: window.thread is None, timeout=20_000)
    assert not window.question_edit.isEnabled() and not window.ask_button.isEnabled()


def test_a_refused_question_is_said_in_one_sentence_under_the_box_and_the_run_goes_on(
    qtbot, window, tiny_dir
):
    stream(qtbot, window, str(tiny_dir))
    too_long = " ".join(["why"] * (MAX_QUESTION_TOKENS + 10))
    window.question_edit.setText(too_long)
    qtbot.mouseClick(window.ask_button, Qt.MouseButton.LeftButton)
    note = window.question_note.text()
    assert window.question_note.isVisible() and note.startswith(
        f"A question is at most {MAX_QUESTION_TOKENS}"
    )
    assert note.endswith(".") and note.count(". ") == 0 and "fewer words" in note
    assert window.question_edit.text() == too_long  # kept, to be shortened
    assert not any("Q: " in line for line in log_lines(window))
    assert window.message.text() == "" and not window.errors.isVisible()  # not a failure of the run
    chunks = window.runlog.chunks
    qtbot.waitUntil(lambda: window.runlog.chunks >= chunks + 2, timeout=60_000)
    assert window.run.phase is Phase.STREAMING
    # Shortened, it is asked, and the note goes.
    window.question_edit.setText(QUESTION)
    qtbot.keyClick(window.question_edit, Qt.Key.Key_Enter)
    assert not window.question_note.isVisible()
    assert answered(qtbot, window, QUESTION).is_answer
    window.stop()
    qtbot.waitUntil(lambda: window.thread is None, timeout=20_000)


def test_a_remote_session_takes_typed_questions_too(qtbot, window, tiny_model, answering):
    from core.engine import StreamingEngine
    from core.remote.server import InferenceServer, ServerThread

    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=answering.generation)
    running = ServerThread(InferenceServer(engine))
    try:
        stream(qtbot, window, running.url)
        assert window.question_edit.isEnabled()
        # Too long for the model: the client cannot count its tokens, so the server refuses it with the
        # reason, which shows under the box; the run goes on.
        type_question(qtbot, window, " ".join(["why"] * (MAX_QUESTION_TOKENS + 10)))
        qtbot.waitUntil(window.question_note.isVisible, timeout=60_000)
        assert f"at most {MAX_QUESTION_TOKENS}" in window.question_note.text()
        assert window.run.phase is Phase.STREAMING and not window.errors.isVisible()
        type_question(qtbot, window, QUESTION)
        answer = answered(qtbot, window, QUESTION)
        assert any(line.endswith(f"] A: {answer.text}") for line in log_lines(window))
        window.stop()
        qtbot.waitUntil(lambda: window.thread is None, timeout=20_000)
    finally:
        running.stop()
