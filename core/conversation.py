"""The streaming conversation layout, as token pieces shared by the engine and the trainer.

The StreamingVLM checkpoint was trained on exactly this layout (Qwen's chat format):

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{context}<|im_end|>\\n
    <|im_start|>user\\nTime=0.0-1.0s<|vision_start|>{video pads}<|vision_end|>{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n\\n word word ...<|im_end|>\\n
    <|im_start|>user\\nTime=1.0-2.0s <|vision_start|>{video pads}<|vision_end|><|im_end|>\\n
    <|im_start|>assistant\\n\\n ...<|im_end|>\\n                       (a silent second)
    <|im_start|>user\\nTime=2.0-3.0s {question}<|vision_start|>{video pads}<|vision_end|><|im_end|>\\n
    <|im_start|>assistant\\n{answer}\\n word ...<|im_end|>\\n           (a question asked in that second)

Where the published training and inference code disagree we follow training, since that is
what the weights saw: the reply opens with a newline after the assistant header (so the prompt
ends in the tokenizer's merged double newline), later user turns carry a space after the time
label, and the previous-text turn keeps the first `sink` and last `window` tokens of its
content. The instruction, which training never shows, goes after the first chunk's video as the
published inference does. Each piece is tokenized on its own; special tokens are written as ids,
so no text is ever parsed for special tokens.

Questions follow the trainer's QA samples (trainer/data/builder.py builds them with this class): at most
one a round, its text right after the time label, and the reply opens with the answer and a newline
before the round's words. Inference prompts a question's round with the answered turn's header up to
where the answer starts (`answer_open`), so the model writes `{answer}\\n words ...` as it was trained to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from core.errors import StreamVLMError
from core.positions import piece_positions
from core.spec import DEFAULT_SYSTEM_PROMPT, ModelSpec
from core.types import one_line

MARKER = " ..."  # every reply ends with it; the engine removes it at token level
PREVIOUS_TEXT_ROLE = "previous text"
# A question is part of its round's text, which a pool slot reserves room for (core.pool.ROUND_TEXT_TOKENS):
# the longest question, the turn headers and the longest time label together fit in it.
MAX_QUESTION_TOKENS = 24


class QuestionError(StreamVLMError, ValueError):
    """A question that cannot be asked (empty, or longer than a round has room for)."""


class Part(enum.Enum):
    """What a run of tokens is, which decides how long the cache keeps it."""

    SYSTEM = "system"  # the system turn: kept forever
    PREV_OPEN = "prev_open"  # <|im_start|>previous text\n: kept forever
    PREV_CONTENT = "prev_content"  # previous text: sink kept forever, the rest a sliding window
    PREV_CLOSE = "prev_close"  # <|im_end|>\n: kept forever
    TURN_OPEN = "turn_open"  # <|im_start|>user\n: kept while any of its round is kept
    TIME_LABEL = "time_label"  # Time=a.a-b.bs (+ question): kept with the reply
    VISION = "vision"  # <|vision_start|> pads <|vision_end|>: the vision window
    PROMPT_CLOSE = "prompt_close"  # instruction + <|im_end|>\n: kept while any of its round is kept
    ASSISTANT_OPEN = "assistant_open"  # <|im_start|>assistant\n\n (+ answer): kept with the reply
    REPLY = "reply"  # the words: the text window, then moved into the previous text
    REPLY_CLOSE = "reply_close"  # ' ...<|im_end|>\n': kept with the reply


@dataclass(frozen=True)
class Piece:
    """A run of tokens of one part. Vision pieces hold the pad id once per vision token."""

    part: Part
    ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)


def time_label(t_start: float, t_end: float) -> str:
    return f"Time={t_start:.1f}-{t_end:.1f}s"


def split_answer(text: str) -> tuple[str, str]:
    """(answer, words) of an asked round's reply text, `{answer}\\n words`: the answer is everything
    before the first newline (all of it when the model wrote none)."""
    answer, _, words = text.partition("\n")
    return answer, words


class Conversation:
    """Builds the pieces of the layout above for one tokenizer."""

    def __init__(self, spec: ModelSpec, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> None:
        self.special = spec.special
        self._encode = spec.encode
        self.system_prompt = system_prompt
        nl = self._encode("\n")
        self.newline = tuple(nl)
        self.marker = tuple(self._encode(MARKER))
        self.turn_end = (self.special.im_end, *nl)
        self.assistant_open = (self.special.im_start, *self._encode("assistant\n\n"))
        # An answered turn's header up to its answer: the prompt of a round with a question, and where
        # the trainer's labels of such a turn begin.
        self.answer_open = (self.special.im_start, *self._encode("assistant\n"))

    def check_question(self, text: str) -> str:
        """The question as it is asked (one line), or QuestionError saying what is wrong with it."""
        question = one_line(text)
        if not question:
            raise QuestionError("a question needs some text; it was empty")
        tokens = len(self._encode(question))
        if tokens > MAX_QUESTION_TOKENS:
            raise QuestionError(
                f"a question is at most {MAX_QUESTION_TOKENS} tokens and this one is {tokens} "
                f"({question[:40]!r}...); ask it in fewer words"
            )
        return question

    def _turn_open(self, role: str) -> tuple[int, ...]:
        return (self.special.im_start, *self._encode(f"{role}\n"))

    def _vision(self, vision_tokens: int) -> tuple[int, ...]:
        return (
            self.special.vision_start,
            *([self.special.video_pad] * vision_tokens),
            self.special.vision_end,
        )

    # -- the fixed prefix ---------------------------------------------------------------------

    def preamble(self, previous_text: str, sink_tokens: int, window_tokens: int) -> list[Piece]:
        """System turn and previous-text turn, the content cut to its first `sink` + last `window` tokens."""
        system = self._turn_open("system") + tuple(self._encode(self.system_prompt)) + self.turn_end
        content = cut_middle(
            self._encode(previous_text.strip()) if previous_text else [], sink_tokens, window_tokens
        )
        pieces = [Piece(Part.SYSTEM, system), Piece(Part.PREV_OPEN, self._turn_open(PREVIOUS_TEXT_ROLE))]
        if content:
            pieces.append(Piece(Part.PREV_CONTENT, tuple(content)))
        pieces.append(Piece(Part.PREV_CLOSE, self.turn_end))
        return pieces

    # -- one round ------------------------------------------------------------------------------

    def user_turn(
        self,
        t_start: float,
        t_end: float,
        vision_tokens: int,
        *,
        first: bool,
        instruction: str | None = None,
        question: str = "",
    ) -> list[Piece]:
        """The user turn of one chunk and the assistant header that prompts its reply (with a
        `question`, the answered turn's header up to its answer: `answer_open`)."""
        # Training writes 'Time=...s' + question on the first turn and 'Time=...s ' + question after.
        label = time_label(t_start, t_end) + ("" if first else " ") + question
        vision = self._vision(vision_tokens)
        close = tuple(self._encode(instruction)) if (first and instruction) else ()
        return [
            Piece(Part.TURN_OPEN, self._turn_open("user")),
            Piece(Part.TIME_LABEL, tuple(self._encode(label))),
            Piece(Part.VISION, vision),
            Piece(Part.PROMPT_CLOSE, close + self.turn_end),
            Piece(Part.ASSISTANT_OPEN, self.answer_open if question else self.assistant_open),
        ]

    def offline_question(self, vision_tokens: int, question: str, answer_prefix: str) -> list[Piece]:
        """A question about a whole clip in Qwen's plain chat layout (offline QA benchmarks):

        <|im_start|>system\n{system}<|im_end|>\n
        <|im_start|>user\n<|vision_start|>{video pads}<|vision_end|>{question}<|im_end|>\n
        <|im_start|>assistant\n{answer prefix}
        """
        system = self._turn_open("system") + tuple(self._encode(self.system_prompt)) + self.turn_end
        return [
            Piece(Part.SYSTEM, system),
            Piece(Part.TURN_OPEN, self._turn_open("user")),
            Piece(Part.VISION, self._vision(vision_tokens)),
            Piece(Part.PROMPT_CLOSE, tuple(self._encode(question)) + self.turn_end),
            Piece(Part.ASSISTANT_OPEN, self._turn_open("assistant") + tuple(self._encode(answer_prefix))),
        ]

    def reply(self, words: str, answer: str = "", *, asked: bool = False) -> list[Piece]:
        """A whole reply as the trainer writes it: words of this second, then the marker and turn end.

        `words` is the text spoken in the second, each word prefixed by one space (empty when silent).
        A round with a question (`asked`, or an `answer`) brings its own header, with the answer in it.
        """
        pieces = []
        if answer or asked:
            # A QA answer precedes the commentary: 'assistant\n{answer}\n words ...'. The header then
            # differs from the plain one, so the whole turn is tokenized as the template writes it.
            header = (self.special.im_start, *self._encode(f"assistant\n{answer}\n"))
            pieces.append(Piece(Part.ASSISTANT_OPEN, header))
        if words:
            pieces.append(Piece(Part.REPLY, tuple(self._encode(words))))
        pieces.append(Piece(Part.REPLY_CLOSE, self.marker + self.turn_end))
        return pieces

    def close_reply(self, generated: list[int]) -> tuple[list[int], list[int], list[int]]:
        """Split generated ids into (words, generated closing ids, ids still to feed).

        The model ends a reply with the marker and <|im_end|>; whatever part of ' ...<|im_end|>\\n'
        it did not generate (cut at max tokens, or no marker) is fed before the next turn so the
        cache always holds the trained layout.
        """
        ids = list(generated)
        closing: list[int] = []
        if ids and ids[-1] == self.special.im_end:
            closing = [ids.pop()]
        marker = list(self.marker)
        if marker and ids[-len(marker) :] == marker:
            closing = ids[-len(marker) :] + closing
            ids = ids[: -len(marker)]
        if not closing:
            to_feed = marker + list(self.turn_end)
        elif closing[-1] == self.special.im_end:
            to_feed = list(self.newline)
        else:
            to_feed = list(self.turn_end)
        return ids, closing, to_feed


def cut_middle(ids: list[int], head: int, tail: int) -> list[int]:
    """Keep the first `head` and the last `tail` ids (all of them when there are no more than that)."""
    if len(ids) <= head + tail:
        return list(ids)
    return list(ids[:head]) + (list(ids[-tail:]) if tail else [])


def layout_positions(
    pieces: list[Piece],
    grids: list[tuple[int, int, int]],
    dt: float,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Contiguous positions [3, L] from 0 of a whole sequence of pieces, the k-th vision piece on
    merged grid `grids[k]`: what the engine's cache reserves for the same pieces with nothing evicted."""
    positions, cursor, vision = [], 0.0, iter(grids)
    for piece in pieces:
        placed, extent = piece_positions(
            cursor, len(piece), next(vision) if piece.part is Part.VISION else None, dt, device
        )
        positions.append(placed)
        cursor += extent
    return torch.cat(positions, dim=1) if positions else torch.empty(3, 0, device=device)
