"""core.text: what the pipeline speaks and how it cuts it into sentences."""

from __future__ import annotations

from core.text import SpeechSplitter, clean_for_speech, split_sentences, truncate_at_sentence


def test_split_sentences_keeps_closing_quotes_and_numbers() -> None:
    text = 'Hello there. How are you? I am "fine." Pi is 3.14 today!\nA new line'
    assert split_sentences(text) == ["Hello there.", "How are you?", 'I am "fine."', "Pi is 3.14 today!", "A new line"]


def test_split_sentences_of_blank_text_is_empty() -> None:
    assert split_sentences("  \n\n ") == []


def test_clean_for_speech_drops_markdown_emoji_and_controls() -> None:
    assert clean_for_speech("**Bold** answer 😀 with [a link](http://x.y)\x00 and  spaces\n# Title\n- item") == (
        "Bold answer with a link and spaces\nTitle\nitem"
    )


def test_the_splitter_hands_out_complete_sentences_as_tokens_arrive() -> None:
    splitter = SpeechSplitter()
    out: list[str] = []
    for token in ["Hel", "lo. Ho", "w are", " you? It is 3.", "5 degrees", "."]:
        out += list(splitter.feed(token))
    assert out == ["Hello.", "How are you?"]
    assert list(splitter.flush()) == ["It is 3.5 degrees."]
    assert list(splitter.flush()) == []


def test_a_reply_cut_off_at_its_limit_keeps_only_complete_fragments() -> None:
    text = "First point is this. Then call Dr. Smith about it tomorrow."
    splitter = SpeechSplitter(4, 12)
    assert [*splitter.feed(text[:45]), *splitter.cut_off()] == ["First point is this."]


def test_a_reply_cut_off_before_any_fragment_end_is_cut_at_a_word_boundary() -> None:
    for cut in ("Call Dr. Smith t", "Call Dr. Smith "):
        splitter = SpeechSplitter(4, 12)
        assert [*splitter.feed(cut), *splitter.cut_off()] == ["Call Dr. Smith"]
    splitter = SpeechSplitter()
    assert [*splitter.feed("Supercalifragilistic"), *splitter.cut_off()] == []  # one word, maybe cut: nothing


def test_truncate_at_sentence() -> None:
    assert truncate_at_sentence("One two. Three four five.", 20) == "One two."
    assert truncate_at_sentence("One two three four five six", 12) == "One two"
    assert truncate_at_sentence("short", 20) == "short"
    assert truncate_at_sentence("abcdefghij", 4) == "abcd"


# -- streaming: sentence edge cases, code fences, the first fragment, and token-split invariance --------

import random  # noqa: E402

import pytest  # noqa: E402

import core.text as text_module  # noqa: E402
from core.text import CodeFenceFilter, speech_fragments, strip_code_fences  # noqa: E402


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        # abbreviations, initials and dotted abbreviations do not end a sentence
        (
            "Dr. Smith met Mr. J. R. R. Tolkien in the U.S. on Friday. It was late.",
            ["Dr. Smith met Mr. J. R. R. Tolkien in the U.S. on Friday.", "It was late."],
        ),
        ("Use e.g. salt. Or i.e. pepper.", ["Use e.g. salt.", "Or i.e. pepper."]),
        ("Neither am I. Fine.", ["Neither am I.", "Fine."]),
        # numbers: decimals, prices and list numbers
        ("Pi is 3.14. It costs $3.50. Done.", ["Pi is 3.14.", "It costs $3.50.", "Done."]),
        ("1. Preheat the oven. 2. Bake it.", ["1. Preheat the oven.", "2. Bake it."]),
        ("I counted to 3. Then stopped.", ["I counted to 3.", "Then stopped."]),
        # ellipses and stacked marks
        ("Wait... what?! Really… yes.", ["Wait...", "what?!", "Really…", "yes."]),
        # quotes and brackets stay with their sentence
        ("He said \u201cStop.\u201d Then (quietly.) left", ["He said \u201cStop.\u201d", "Then (quietly.)", "left"]),
        # (an end mark inside quotes ends the sentence even before a lower-case word: deciding that
        # would wait for one more token on every sentence)
        ("'Yes!' she said. \u00abOui.\u00bb Bon.", ["'Yes!'", "she said.", "\u00abOui.\u00bb", "Bon."]),
        # unicode: accents, Spanish marks, CJK full-width ends (no space needed)
        ("\u00bfQu\u00e9 tal? \u00a1Muy bien! \u00c7a va.", ["\u00bfQu\u00e9 tal?", "\u00a1Muy bien!", "\u00c7a va."]),
        ("\u4f60\u597d\u3002\u4e16\u754c\uff01\u518d\u89c1", ["\u4f60\u597d\u3002", "\u4e16\u754c\uff01", "\u518d\u89c1"]),
        # a "sentence" with nothing speakable is kept with the next one
        ("Hello! ... Okay.", ["Hello!", "... Okay."]),
    ],
)
def test_split_sentences_edge_cases(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_code_fences_are_not_spoken_even_when_split_across_tokens() -> None:
    reply = "Try this:\n```python\nprint('Hello. World!')\n```\nIt prints a greeting. ``inline`` stays."
    assert strip_code_fences(reply) == "Try this:\n\n\nIt prints a greeting. ``inline`` stays."
    assert speech_fragments(reply) == ["Try this:", "It prints a greeting.", "inline stays."]
    fences = CodeFenceFilter()
    pieces = ["Try this:\n`", "`", "`py", "thon\nprint('Hello. World!')\n`", "``\nIt prints a greeting."]
    assert "".join(fences.feed(piece) for piece in pieces) + fences.flush() == "Try this:\n\n\nIt prints a greeting."
    # An unclosed fence (the reply was cut off) drops everything after it.
    assert speech_fragments("Here:\n```\ncode. more code.") == ["Here:"]


def test_markdown_and_emoji_are_cleaned_per_fragment() -> None:
    assert speech_fragments("**Sure!** Here you go \U0001f600\n# Title\n- item one\n- [a link](http://x.y).") == [
        "Sure!",
        "Here you go",
        "Title",
        "item one",
        "a link.",
    ]


def test_first_fragment_ends_early_at_a_comma_or_after_max_words() -> None:
    text = "Sure, I can help with that, it is easy. Later, commas do not cut."
    assert speech_fragments(text, first_min_words=3) == [
        "Sure, I can help with that,",  # "Sure," alone has fewer than 3 words
        "it is easy.",
        "Later, commas do not cut.",
    ]
    assert speech_fragments(text, first_min_words=1) == [
        "Sure,",
        "I can help with that, it is easy.",
        "Later, commas do not cut.",
    ]
    long = "One two three four five six seven eight nine ten. Eleven twelve."
    assert speech_fragments(long, first_max_words=4) == ["One two three four", "five six seven eight nine ten.", "Eleven twelve."]
    # never right after an abbreviation
    assert speech_fragments("We met Dr. Who today.", first_max_words=3) == ["We met Dr. Who", "today."]
    assert speech_fragments(long) == ["One two three four five six seven eight nine ten.", "Eleven twelve."]


STREAMED_TEXTS = [
    'Hello there. How are you? I am "fine." Pi is 3.14 today!\nA new line',
    "Dr. Smith met Mr. J. R. R. Tolkien in the U.S. on Friday. It was 3 p.m. Then they left...",
    "**Sure!** Here you go \U0001f600 ```python\nprint('x. y')\n``` And that's it.",
    "Sure, I can help with that, it is easy. Second sentence here, with a comma.",
    "\u4f60\u597d\u3002\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002",
    "1. Preheat the oven.\n2. Bake it for 20 min. at 180\u00b0C.\n\n> Enjoy!",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen.",
    "Text with ``inline`` code, a fence ```\nunclosed code. more",
]


@pytest.mark.parametrize("text", STREAMED_TEXTS)
def test_fragments_do_not_depend_on_how_the_text_was_cut_into_tokens(text: str) -> None:
    whole = speech_fragments(text, 3, 8)
    rng = random.Random(text)
    cuts = [[1] * len(text)] + [[rng.randint(1, 7) for _ in range(len(text))] for _ in range(40)]
    for sizes in cuts:
        splitter = SpeechSplitter(3, 8)
        fragments: list[str] = []
        position = 0
        for size in sizes:
            if position >= len(text):
                break
            fragments += splitter.feed(text[position : position + size])
            position += size
        fragments += splitter.flush()
        assert fragments == whole


def test_splitter_hands_out_each_fragment_as_soon_as_it_is_decided() -> None:
    splitter = SpeechSplitter(first_min_words=2)
    assert list(splitter.feed("Well, I")) == []  # "Well," has one word: no early cut
    assert list(splitter.feed(" think so,")) == []  # the comma needs the next character
    assert list(splitter.feed(" yes")) == ["Well, I think so,"]
    assert list(splitter.feed(". It is 3.")) == ["yes."]  # "3." may still become "3.5"
    assert list(splitter.feed("5 now. ")) == ["It is 3.5 now."]
    assert list(splitter.flush()) == []


# Replies that are one long run of undecided sentence ends: every "Dr." and "J." is a false end, and
# "!!!" with nothing speakable before it is kept with the next sentence, so none of them is ever cut.
LONG_UNDECIDED = ["Dr. " * 500, "J. " * 666, "!!! " * 500]


@pytest.mark.parametrize("text", LONG_UNDECIDED, ids=["dr", "initials", "marks"])
def test_streaming_a_long_undecided_fragment_looks_at_each_mark_once(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counts calls of our own helper (not a mock: it still runs) to measure the work per mark. Rescanning
    # the unfinished fragment on every token made it quadratic: ~125,000 checks for 500 "Dr." tokens.
    calls = 0
    real = text_module._is_abbreviation

    def counting(token: str) -> bool:
        nonlocal calls
        calls += 1
        return real(token)

    monkeypatch.setattr(text_module, "_is_abbreviation", counting)
    splitter = SpeechSplitter(4, 12)
    fragments: list[str] = []
    for token in text.split(" "):
        fragments += splitter.feed(token + " ")
    fragments += splitter.flush()
    marks = text.count(".") + text.count("!")
    assert calls <= 2 * marks
    # One fragment, or none for the marks: punctuation alone speaks as nothing.
    assert fragments == speech_fragments(text, 4, 12) == ([text.strip()] if text_module.speakable(text) else [])


