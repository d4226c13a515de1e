"""The conversation layout equals what the checkpoint was trained on: the chat template's tokens."""

from __future__ import annotations

import pytest

from core.conversation import MARKER, Conversation, Part, cut_middle, time_label


@pytest.fixture(scope="module")
def conv(tiny_model):
    return Conversation(tiny_model.spec)


def template_ids(model, messages, vision_tokens: list[int], add_generation_prompt=False) -> list[int]:
    """Tokens of the processor's own chat template, video pads expanded as the processor would."""
    text = model.processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    pad = "<|video_pad|>"
    parts = text.split(pad)
    assert len(parts) == len(vision_tokens) + 1
    expanded = parts[0] + "".join(pad * n + rest for n, rest in zip(vision_tokens, parts[1:]))
    return model.tokenizer(expanded, add_special_tokens=False)["input_ids"]


def ids_of(pieces) -> list[int]:
    return [i for p in pieces for i in p.ids]


def test_training_layout_equals_the_chat_template(tiny_model, conv):
    """The trainer's sample: previous text, then per second a time label, video and the words said."""
    previous = "Golden State against Cleveland, game six."
    seconds = [(0.0, 1.0, 3, " Curry for three"), (1.0, 2.0, 4, ""), (2.0, 3.0, 3, " and it is in")]
    messages = [{"role": "previous text", "content": previous}]
    for k, (t0, t1, _, words) in enumerate(seconds):
        label = time_label(t0, t1) + ("" if k == 0 else " ")
        messages.append({"role": "user", "content": [{"type": "text", "text": label}, {"type": "video"}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "\n" + words + MARKER}]})
    ours = conv.preamble(previous, 512, 512)
    for k, (t0, t1, n, words) in enumerate(seconds):
        turn = conv.user_turn(t0, t1, n, first=k == 0)
        ours += turn[:-1]  # the trainer writes the assistant header with the reply
        ours += [turn[-1]] + conv.reply(words.strip() and words)
    assert ids_of(ours) == template_ids(tiny_model, messages, [n for *_, n, _ in seconds])


def test_inference_prompt_puts_the_instruction_after_the_first_video(tiny_model, conv):
    messages = [
        {"role": "previous text", "content": "A title."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Time=0.0-1.0s"},
                {"type": "video"},
                {"type": "text", "text": "Commentate on this match"},
            ],
        },
    ]
    ours = conv.preamble("A title.", 512, 512) + conv.user_turn(
        0, 1, 5, first=True, instruction="Commentate on this match"
    )
    want = template_ids(tiny_model, messages, [5], add_generation_prompt=True)
    # The template's generation prompt ends 'assistant\n'; ours adds the reply's leading newline, which
    # the tokenizer merges into one double-newline token as it did in training.
    assert ids_of(ours)[: len(want) - 1] == want[:-1]
    assert tiny_model.tokenizer.convert_ids_to_tokens(ids_of(ours)[-1]) == "ĊĊ"


def test_later_turns_ignore_the_instruction(conv):
    assert ids_of(conv.user_turn(1, 2, 2, first=False, instruction="X")) == ids_of(
        conv.user_turn(1, 2, 2, first=False)
    )


def test_user_turn_parts_in_order(conv, tiny_model):
    turn = conv.user_turn(3.0, 4.0, 6, first=False, question="Who scored?")
    assert [p.part for p in turn] == [
        Part.TURN_OPEN,
        Part.TIME_LABEL,
        Part.VISION,
        Part.PROMPT_CLOSE,
        Part.ASSISTANT_OPEN,
    ]
    special = tiny_model.special
    vision = turn[2].ids
    assert vision[0] == special.vision_start and vision[-1] == special.vision_end
    assert vision[1:-1] == (special.video_pad,) * 6
    assert tiny_model.decode(list(turn[1].ids)) == "Time=3.0-4.0s Who scored?"


def test_previous_text_is_cut_to_sink_and_window(conv, tiny_model):
    text = " ".join(f"w{i}" for i in range(300))
    full = tiny_model.encode(text)
    assert len(full) > 20
    pieces = conv.preamble(text, 8, 5)
    content = next(p for p in pieces if p.part is Part.PREV_CONTENT).ids
    assert list(content) == full[:8] + full[-5:]


def test_empty_previous_text_keeps_the_turn(conv):
    pieces = conv.preamble("", 512, 512)
    assert [p.part for p in pieces] == [Part.SYSTEM, Part.PREV_OPEN, Part.PREV_CLOSE]


def test_marker_is_the_tokenizers_own(conv, tiny_model):
    assert list(conv.marker) == tiny_model.encode(" ...")


@pytest.mark.parametrize(
    "generated,words,closing,to_feed",
    [
        # (names stand for ids: w words, M marker, E <|im_end|>, N newline)
        ("w w M E", "w w", "M E", "N"),  # the normal ending
        ("M E", "", "M E", "N"),  # a silent second
        ("w w E", "w w", "E", "N"),  # no marker: nothing can be inserted before a cached <|im_end|>
        ("w w w", "w w w", "", "M E N"),  # cut at max tokens
        ("w w M", "w w", "M", "E N"),  # cut right after the marker
        ("E", "", "E", "N"),
        ("w M w", "w M w", "", "M E N"),  # a marker inside a reply is just text
    ],
)
def test_close_reply(conv, tiny_model, generated, words, closing, to_feed):
    w = tiny_model.encode(" goal")[0]
    names = {"w": [w], "M": list(conv.marker), "E": [tiny_model.special.im_end], "N": list(conv.newline)}

    def ids(text):
        return [i for name in text.split() for i in names[name]]

    assert conv.close_reply(ids(generated)) == (ids(words), ids(closing), ids(to_feed))


@pytest.mark.parametrize(
    "n,head,tail,want",
    [
        (5, 2, 2, [0, 1, 3, 4]),
        (4, 2, 2, [0, 1, 2, 3]),
        (6, 0, 2, [4, 5]),
        (6, 3, 0, [0, 1, 2]),
        (0, 2, 2, []),
    ],
)
def test_cut_middle(n, head, tail, want):
    assert cut_middle(list(range(n)), head, tail) == want
