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


_SPOKEN_CATEGORIES = ("L", "N", "Sc", "Sm")


def speakable(text: str) -> bool:
    """Whether an engine says anything for `text` (cleaned for speech): it has a letter, a digit or a
    symbol such as $, % or +. Punctuation, spaces and accents alone ("." "?!" "---") synthesize to silence."""
    return any(unicodedata.category(char).startswith(_SPOKEN_CATEGORIES) for char in text)


def _is_abbreviation(token: str) -> bool:
    """Whether `token` (the word before a dot, without the dot) makes the dot a non-end."""
    word = token.lstrip(_OPENERS)
    return word.casefold() in ABBREVIATIONS or bool(_DOTTED.fullmatch(word)) or bool(_INITIAL.fullmatch(word))


_MARK_CHARS = ".!?…。！？"


class _FragmentEnd:
    """Finds where the fragment that starts at `start` of a growing text ends (the rules of
    `_next_cut`), resuming where the last call stopped. Every position is decided once, from the text
    up to one character after it, so feeding a reply token by token costs about what the whole reply
    does (rescanning the unfinished fragment on every token made it quadratic: 2000 characters of
    "Dr. " took seconds on the event loop)."""

    def __init__(self, start: int, clause_words: int = 0, max_words: int = 0) -> None:
        self.start = start
        self.clause_words = clause_words
        self.max_words = max_words
        self._sentence_from = start
        """Sentence ends starting before this are decided (all false ends)."""
        self._first_alnum: int | None = None
        self._alnum_from = start
        """No letter or digit in text[start:_alnum_from] (while _first_alnum is None)."""
        self._first_visible: int | None = None
        # Word counting for the first fragment's early cuts, one character at a time.
        self._chars_from = start
        self._token_start: int | None = None
        self._token_is_word = False
        self._words = 0
        self._clause_from: int | None = None
        """Where the clause_words-th word's first letter ends: a clause end from here on may cut."""
        self._max_cut: int | None = None
        """End of the first complete token that reaches max_words (not an abbreviation)."""

    def _has_alnum_before(self, text: str, end: int) -> bool:
        if self._first_alnum is None:
            for index in range(self._alnum_from, end):
                if text[index].isalnum():
                    self._first_alnum = index
                    break
            else:
                self._alnum_from = max(self._alnum_from, end)
                return False
        return self._first_alnum < end

    def _false_end(self, text: str, match: re.Match[str]) -> bool:
        """`_false_end`, looking only at the token before the mark and at what is known of the fragment."""
        mark = match.group()
        if mark == "\n":
            return False
        if not self._has_alnum_before(text, match.end()):
            return True
        if mark.rstrip(_CLOSER_CHARS) != ".":
            return False
        token_start = token_end = match.start()
        while token_start > self.start and not text[token_start - 1].isspace():
            token_start -= 1
        if token_start == token_end:
            return False
        token = text[token_start:token_end]
        if _is_abbreviation(token):
            return True
        if not (token.isdigit() and len(token) <= 3):
            return False
        if self._first_visible is None:
            index = self.start
            while text[index].isspace():
                index += 1
            self._first_visible = index
        return self._first_visible == token_start

    def _sentence_end(self, text: str) -> int | None:
        for match in _SENTENCE_END.finditer(text, self._sentence_from):
            if not self._false_end(text, match):
                return match.end()
            self._sentence_from = match.end()
        # Only a run of end marks (and closers) touching the end of the text may still become an end.
        index = len(text)
        while index > self._sentence_from and text[index - 1] in _CLOSER_CHARS:
            index -= 1
        marks = index
        while marks > self._sentence_from and text[marks - 1] in _MARK_CHARS:
            marks -= 1
        self._sentence_from = marks if marks < index else len(text)
        return None

    def _count_words(self, text: str) -> None:
        for index in range(self._chars_from, len(text)):
            char = text[index]
            if char.isspace():
                if self._token_start is not None:
                    token = text[self._token_start : index]
                    if (
                        self.max_words > 0
                        and self._max_cut is None
                        and self._words >= self.max_words
                        and not (token.endswith(".") and _is_abbreviation(token[:-1]))
                    ):
                        self._max_cut = index
                    self._token_start = None
                continue
            if self._token_start is None:
                self._token_start, self._token_is_word = index, False
            if not self._token_is_word and char.isalnum():
                self._token_is_word = True
                self._words += 1
                if self._words == self.clause_words and self._clause_from is None:
                    self._clause_from = index + 1
        self._chars_from = len(text)

    def cut(self, text: str) -> int | None:
        """End index of the fragment in `text` (which only ever grows), or None while undecided."""
        best = self._sentence_end(text)
        if self.clause_words <= 0 and self.max_words <= 0:
            return best
        self._count_words(text)
        limit = best if best is not None else len(text)
        if self.clause_words > 0 and self._clause_from is not None and self._clause_from < limit:
            match = _CLAUSE_END.search(text, self._clause_from, limit)
            if match is not None:
                best = limit = match.end()
            elif best is None:
                # Nothing before the end of the text; only a mark touching it may still become a clause end.
                index = len(text)
                while index > self._clause_from and text[index - 1] in _CLOSER_CHARS:
                    index -= 1
                if index > self._clause_from and text[index - 1] in ",;:":
                    index -= 1
                self._clause_from = index
        if self._max_cut is not None and self._max_cut < limit:
            best = self._max_cut
        return best


def _next_cut(text: str, start: int, clause_words: int, max_words: int) -> int | None:
    """End index of the first decidable fragment of text[start:], or None while undecided.
    `clause_words` > 0 allows a cut at a comma once the fragment holds that many words; `max_words` > 0
    forces a cut at the first space after that many words (both for the first fragment of a reply).
    A sentence end mark is no end after an abbreviation, an initial, or a list number at the start of
    the fragment ("1. Preheat..."), nor when the "sentence" has nothing speakable in it (it is kept with
    the next one)."""
    return _FragmentEnd(start, clause_words, max_words).cut(text)


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
        self._scan = self._scan_from(0)

    def _clean(self, raw: str) -> str | None:
        spoken = " ".join(clean_for_speech(raw).split("\n"))
        if not speakable(spoken):
            return None
        self.fragments += 1
        return spoken

    def _scan_from(self, start: int) -> _FragmentEnd:
        first = self.fragments == 0
        return _FragmentEnd(start, self.first_min_words if first else 0, self.first_max_words if first else 0)

    def _cuts(self) -> Iterator[str]:
        # The scan of the unfinished fragment is kept across feeds: it resumes where it stopped.
        start = 0
        while (end := self._scan.cut(self._pending)) is not None:
            raw, start = self._pending[start:end], end
            spoken = self._clean(raw)
            self._scan = self._scan_from(end)
            if spoken is not None:
                yield spoken
        if start:
            self._pending = self._pending[start:]
            self._scan = self._scan_from(0)

    def feed(self, piece: str) -> Iterator[str]:
        """Add `piece`; yield the fragments it completes."""
        self._pending += self._fences.feed(piece)
        yield from self._cuts()

    def flush(self) -> Iterator[str]:
        """The end of the text: yield what is left."""
        yield from self._end(cut_off=False)

    def cut_off(self) -> Iterator[str]:
        """The text stopped at a length limit (llm.max_reply_chars), maybe in the middle of a word: the
        fragments complete within it are spoken; the unfinished rest only when nothing was said yet, and
        then cut at its last word boundary, never mid-word. The one reply-length rule of the service."""
        yield from self._end(cut_off=True)

    def _end(self, *, cut_off: bool) -> Iterator[str]:
        self._pending += self._fences.flush()
        yield from self._cuts()
        rest, self._pending = self._pending, ""
        self._scan = self._scan_from(0)
        if cut_off:
            if self.fragments:
                return
            # Whitespace at the very end means the last word was complete; otherwise it may not be.
            boundary = max(rest.rfind(" "), rest.rfind("\n"), rest.rfind("\t"))
            rest = rest[:boundary] if boundary > 0 else ""
        spoken = self._clean(rest)
        if spoken is not None:
            yield spoken


def speech_fragments(text: str, first_min_words: int = 0, first_max_words: int = 0) -> list[str]:
    """The fragments `SpeechSplitter` gives for the whole of `text` (what /tts speaks)."""
    splitter = SpeechSplitter(first_min_words, first_max_words)
    return [*splitter.feed(text), *splitter.flush()]
