"""Text handling shared by the services: clean-up before synthesis and sentence splitting.

Sentences are the unit of streaming: the TTS pipeline speaks (and can stop) sentence by sentence,
and an LLM reply arriving token by token is cut into sentences by `SentenceBuffer` as it comes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets) and then whitespace;
# a blank line or a line break ends one too. Abbreviations like "e.g." may split early: harmless for speech.
_SENTENCE_END = re.compile(r"""[.!?…]+["')\]»”’]*(?=\s)|\n""")
_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MARKDOWN_MARKS = re.compile(r"(\*{1,3}|_{2,3}|`{1,3}|^#{1,6}\s*|^\s*[-*+]\s+|^\s*>\s?)", re.MULTILINE)
_SPACES = re.compile(r"[ \t\f\v]+")


def clean_for_speech(text: str) -> str:
    """Text as it should be spoken: Unicode-normalised (NFC), markdown marks, emoji and control
    characters removed, runs of spaces collapsed. Line breaks are kept (they end sentences)."""
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


def _cut(text: str) -> list[str]:
    """`text` cut after every sentence end; the last part is whatever follows the last end."""
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        parts.append(text[start : match.end()])
        start = match.end()
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
