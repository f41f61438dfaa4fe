"""core.text: what the pipeline speaks and how it cuts it into sentences."""

from __future__ import annotations

from core.text import SentenceBuffer, clean_for_speech, split_sentences, truncate_at_sentence


def test_split_sentences_keeps_closing_quotes_and_numbers() -> None:
    text = 'Hello there. How are you? I am "fine." Pi is 3.14 today!\nA new line'
    assert split_sentences(text) == ["Hello there.", "How are you?", 'I am "fine."', "Pi is 3.14 today!", "A new line"]


def test_split_sentences_of_blank_text_is_empty() -> None:
    assert split_sentences("  \n\n ") == []


def test_clean_for_speech_drops_markdown_emoji_and_controls() -> None:
    assert clean_for_speech("**Bold** answer 😀 with [a link](http://x.y)\x00 and  spaces\n# Title\n- item") == (
        "Bold answer with a link and spaces\nTitle\nitem"
    )


def test_sentence_buffer_hands_out_complete_sentences_as_tokens_arrive() -> None:
    buffer = SentenceBuffer()
    out: list[str] = []
    for token in ["Hel", "lo. Ho", "w are", " you? It is 3.", "5 degrees", "."]:
        out += list(buffer.feed(token))
    assert out == ["Hello.", "How are you?"]
    assert list(buffer.flush()) == ["It is 3.5 degrees."]
    assert list(buffer.flush()) == []


def test_truncate_at_sentence() -> None:
    assert truncate_at_sentence("One two. Three four five.", 20) == "One two."
    assert truncate_at_sentence("One two three four five six", 12) == "One two"
    assert truncate_at_sentence("short", 20) == "short"
    assert truncate_at_sentence("abcdefghij", 4) == "abcd"
