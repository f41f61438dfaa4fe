"""Text handling shared by the services: clean-up before synthesis and sentence splitting.

Sentences are the unit of streaming: the TTS pipeline speaks (and can stop) fragment by fragment,
and an LLM reply arriving token by token is cut into fragments by `SpeechSplitter` as it comes.

The one rule that keeps streamed and whole-text speech identical: every cut is decided from the
text up to one character after it, never from how the text was cut into tokens. So feeding a reply
token by token gives exactly the fragments that `speech_fragments(reply)` gives for the whole
reply, and `/tts` and `/tts/stream` speak the same audio, sample for sample.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

# Characters that may follow an end mark and still belong to the sentence: closing quotes and
# brackets, and markdown emphasis (`**Sure!** Next` ends after the `**`).
_CLOSER_CHARS = "\"')]»”’*_`"
_CLOSERS = "[" + re.escape(_CLOSER_CHARS) + "]"
# A sentence ends at . ! ? … (optionally followed by closers) and then whitespace; at CJK full-width
# marks with or without a space; a line break ends one too. The lookahead needs one character past
# the end, so a mark at the very end of streamed text ("3." may become "3.5") is not decided yet.
_SENTENCE_END = re.compile(rf"""[.!?…]+{_CLOSERS}*(?=\s)|[。！？]+{_CLOSERS}*(?=[\s\S])|\n""")
# Where the first fragment of a reply may end early: a comma, semicolon or colon and then whitespace.
_CLAUSE_END = re.compile(rf"""[,;:]{_CLOSERS}*(?=\s)""")
_TOKEN = re.compile(r"\S+")
_LAST_TOKEN = re.compile(r"(\S+)$")
_OPENERS = "\"'([«“‘*_`"
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g, i.e, U.S, a.m (the final dot is the mark itself)
_INITIAL = re.compile(r"[A-HJ-Z]")  # "J. R. R. Tolkien"; "I." ends a sentence ("Neither am I.")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs mt ft gen gov sen rep capt lt col sgt fig approx cf".split()
)
"""Words that end with a dot without ending the sentence ("Dr. Smith"), lower case, without the dot.
Ambiguous ones that often end a sentence ("etc.", "Inc.", "No.") are left out on purpose."""

_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MARKDOWN_MARKS = re.compile(r"(\*{1,3}|_{2,3}|`{1,3}|^#{1,6}\s*|^\s*[-*+]\s+|^\s*>\s?)", re.MULTILINE)
_SPACES = re.compile(r"[ \t\f\v]+")
_FENCE = re.compile(r"`{3,}")


def clean_for_speech(text: str) -> str:
    """Text as it should be spoken: Unicode-normalised (NFC), markdown marks, emoji and control
    characters removed, runs of spaces collapsed. Line breaks are kept (they end sentences).
    Fenced code blocks are removed by `strip_code_fences` (or `SpeechSplitter`), not here."""
    text = unicodedata.normalize("NFC", text)
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _MARKDOWN_MARKS.sub("", text)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char == "\n":
            kept.append(char)
        elif category in ("Cc", "Cf", "Cs", "Co", "Cn") or category == "So":
            # Control and format characters, and symbols such as emoji, are not speakable.
            kept.append(" " if category == "Cc" else "")
        else:
            kept.append(char)
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(kept).split("\n"))
    return "\n".join(line for line in lines if line)


def _is_word(token: str) -> bool:
    return any(char.isalnum() for char in token)


def _count_words(text: str) -> int:
    return sum(1 for match in _TOKEN.finditer(text) if _is_word(match.group()))


def _is_abbreviation(token: str) -> bool:
    """Whether `token` (the word before a dot, without the dot) makes the dot a non-end."""
    word = token.lstrip(_OPENERS)
    return word.casefold() in ABBREVIATIONS or bool(_DOTTED.fullmatch(word)) or bool(_INITIAL.fullmatch(word))


def _false_end(text: str, start: int, match: re.Match[str]) -> bool:
    """A match of _SENTENCE_END that does not end a sentence: a lone dot after an abbreviation, an
    initial, or a list number at the start of the fragment ("1. Preheat..."); or a "sentence" with
    nothing speakable in it (it is kept with the next one)."""
    mark = match.group()
    if mark == "\n":
        return False
    if not any(char.isalnum() for char in text[start : match.end()]):
        return True
    if mark.rstrip(_CLOSER_CHARS) != ".":
        return False
    before = text[start : match.start()]
    last = _LAST_TOKEN.search(before)
    if last is None:
        return False
    token = last.group(1)
    if _is_abbreviation(token):
        return True
    return token.isdigit() and len(token) <= 3 and before.strip() == token


def _next_cut(text: str, start: int, clause_words: int, max_words: int) -> int | None:
    """End index of the first decidable fragment of text[start:], or None while undecided.
    `clause_words` > 0 allows a cut at a comma once the fragment holds that many words; `max_words` > 0
    forces a cut at the first space after that many words (both for the first fragment of a reply)."""
    best: int | None = None
    for match in _SENTENCE_END.finditer(text, start):
        if not _false_end(text, start, match):
            best = match.end()
            break
    if clause_words > 0:
        for match in _CLAUSE_END.finditer(text, start, best if best is not None else len(text)):
            if _count_words(text[start : match.start()]) >= clause_words:
                best = match.end()
                break
    if max_words > 0:
        count = 0
        for match in _TOKEN.finditer(text, start, best if best is not None else len(text)):
            if match.end() >= len(text):
                break  # the word may still grow
            token = match.group()
            if _is_word(token):
                count += 1
            if count >= max_words and not (token.endswith(".") and _is_abbreviation(token[:-1])):
                best = match.end()
                break
    return best


def _cut(text: str) -> list[str]:
    """`text` cut after every sentence end; the last part is whatever follows the last end."""
    parts, start = [], 0
    while (end := _next_cut(text, start, 0, 0)) is not None:
        parts.append(text[start:end])
        start = end
    parts.append(text[start:])
    return parts


def split_sentences(text: str) -> list[str]:
    """Non-empty, stripped sentences of `text`, in order."""
    return [part.strip() for part in _cut(text) if part.strip()]


def truncate_at_sentence(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at the last sentence end inside the limit when there
    is one, else at the last space, else hard."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [match.end() for match in _SENTENCE_END.finditer(head + " ")]
    if ends:
        return head[: ends[-1]].rstrip()
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip()


class SentenceBuffer:
    """Collects streamed text (LLM tokens) and hands out each sentence once it is complete."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, piece: str) -> Iterator[str]:
        """Add `piece`; yield the sentences it completes."""
        self._pending += piece
        parts = _cut(self._pending)
        # The last part may still grow; everything before it is a finished sentence. A sentence end
        # mark right at the end of the buffer is not final yet ("3." may become "3.5").
        self._pending = parts.pop()
        for part in parts:
            if part.strip():
                yield part.strip()

    def flush(self) -> Iterator[str]:
        """Yield what is left (the last sentence, which may lack its end mark)."""
        rest, self._pending = self._pending.strip(), ""
        if rest:
            yield rest


class CodeFenceFilter:
    """Drops fenced code blocks (``` ... ```) from streamed text, even when a fence is split across
    tokens: a run of backticks touching the end of the text so far is held back until it is complete.
    A block is replaced by a line break (it ends the sentence before it); an unclosed block is dropped
    to the end of the text."""

    def __init__(self) -> None:
        self._held = ""
        self.in_fence = False

    def feed(self, piece: str) -> str:
        text = self._held + piece
        out: list[str] = []
        position = 0
        for match in _FENCE.finditer(text):
            if match.end() == len(text):
                break  # the run may still grow: decide when the next character is known
            if not self.in_fence:
                out.append(text[position : match.start()])
                out.append("\n")
            self.in_fence = not self.in_fence
            position = match.end()
        # Hold back a trailing run of backticks (it may become a fence), pass on or drop the rest.
        tail = text[position:]
        kept = len(tail) - len(tail.rstrip("`"))
        self._held = tail[len(tail) - kept :] if kept else ""
        if not self.in_fence:
            out.append(tail[: len(tail) - kept])
        return "".join(out)

    def flush(self) -> str:
        held, self._held = self._held, ""
        if self.in_fence or _FENCE.fullmatch(held):
            return ""
        return held


def strip_code_fences(text: str) -> str:
    """`text` without its fenced code blocks (see CodeFenceFilter)."""
    fences = CodeFenceFilter()
    return fences.feed(text) + fences.flush()


class SpeechSplitter:
    """Streamed LLM text in, speakable fragments out, each as soon as it is complete.

    Code fences are dropped (CodeFenceFilter), the text is cut into sentences, and each fragment is
    cleaned (`clean_for_speech`: no markdown, emoji or control characters); fragments with nothing left
    to say are skipped. The first fragment may end early to start speaking sooner: at a comma,
    semicolon or colon once it holds `first_min_words` words, or at the first space after
    `first_max_words` words (0 turns either rule off). The result never depends on how the text was
    cut into pieces."""

    def __init__(self, first_min_words: int = 0, first_max_words: int = 0) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self._fences = CodeFenceFilter()
        self._pending = ""
        self.fragments = 0
        """Fragments handed out so far."""

    def _clean(self, raw: str) -> str | None:
        spoken = " ".join(clean_for_speech(raw).split("\n"))
        if not spoken:
            return None
        self.fragments += 1
        return spoken

    def _cuts(self) -> Iterator[str]:
        start = 0
        while True:
            first = self.fragments == 0
            end = _next_cut(
                self._pending,
                start,
                self.first_min_words if first else 0,
                self.first_max_words if first else 0,
            )
            if end is None:
                break
            raw, start = self._pending[start:end], end
            spoken = self._clean(raw)
            if spoken is not None:
                yield spoken
        self._pending = self._pending[start:]

    def feed(self, piece: str) -> Iterator[str]:
        """Add `piece`; yield the fragments it completes."""
        self._pending += self._fences.feed(piece)
        yield from self._cuts()

    def flush(self) -> Iterator[str]:
        """The end of the text: yield what is left."""
        self._pending += self._fences.flush()
        yield from self._cuts()
        rest, self._pending = self._pending, ""
        spoken = self._clean(rest)
        if spoken is not None:
            yield spoken

    @property
    def pending_chars(self) -> int:
        return len(self._pending)


def speech_fragments(text: str, first_min_words: int = 0, first_max_words: int = 0) -> list[str]:
    """The fragments `SpeechSplitter` gives for the whole of `text` (what /tts speaks)."""
    splitter = SpeechSplitter(first_min_words, first_max_words)
    return [*splitter.feed(text), *splitter.flush()]
