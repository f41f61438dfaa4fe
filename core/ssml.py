"""The SSML subset every TTS protocol accepts, parsed into plain text runs and exact pauses.

Tags: `speak`, `p` and `s` (sentence ends), `break` (`time`, `strength`: an exact silence), `prosody`
(`rate`: a speed factor, nested ones multiply), `voice` (`name`), `say-as` (`interpret-as` characters,
digits, cardinal), `sub` (`alias`) and `emphasis` (spoken plainly). Any other tag is spoken as its text
and reported in `warnings`: markup is never read aloud.

The markup is parsed by a real XML parser (defusedxml over the standard library's expat) that refuses
DTDs, entity declarations and external references, so neither an entity expansion bomb nor a file
reference can get in; malformed markup is refused with the line and column where it broke.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

from core.errors import InvalidSsml

BREAK_STRENGTHS_MS = {"none": 0, "x-weak": 100, "weak": 250, "medium": 500, "strong": 750, "x-strong": 1000}
"""The pause of `<break strength=...>` (a `<break/>` without attributes is medium, as the SSML spec says)."""

RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
"""The speed factor of `<prosody rate=...>` keywords; a percentage (`150%`, `+20%`, `-10%`) or a plain
number (`1.2`) is accepted too."""

SAY_AS = ("characters", "spell-out", "digits", "cardinal", "number")

_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*$")
_PERCENT = re.compile(r"^\s*([+-]?)(\d+(?:\.\d+)?)\s*%\s*$")
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
_SPACES = re.compile(r"\s+")
_GROUPED = re.compile(r"(?<=\d)[,\u00a0\u202f ](?=\d{3}\b)")
SENTENCE_END = "\n"
"""What `p` and `s` put between sentences: a line break ends a sentence for core.text's splitter."""


@dataclass(frozen=True)
class SpokenText:
    """A run of text spoken with one voice at one speed."""

    text: str
    rate: float = 1.0
    """Speed factor from `prosody rate`, applied to the request's speed."""
    voice: str | None = None
    """From `<voice name>`; None: the request's voice."""


@dataclass(frozen=True)
class Pause:
    """An exact silence."""

    ms: int


SsmlItem = SpokenText | Pause


@dataclass(frozen=True)
class SsmlDocument:
    items: tuple[SsmlItem, ...]
    warnings: tuple[str, ...]
    """Unsupported tags and attributes, said once each (their text was spoken as it is)."""

    @property
    def text(self) -> str:
        """The words spoken, without the markup."""
        return " ".join(item.text.replace(SENTENCE_END, " ") for item in self.items if isinstance(item, SpokenText))


def looks_like_ssml(text: str) -> bool:
    """Text given without `text_format` is SSML when it starts with `<speak`, an XML declaration or a
    DOCTYPE (refused by the parser, not read aloud)."""
    head = text.lstrip()
    return head.startswith(("<speak", "<?xml")) or head[:9].upper() == "<!DOCTYPE"


@dataclass
class _Context:
    rate: float = 1.0
    voice: str | None = None


@dataclass
class _Builder:
    max_break_ms: int
    items: list[SsmlItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _parts: list[str] = field(default_factory=list)
    _context: _Context = field(default_factory=_Context)

    def say(self, text: str | None, context: _Context) -> None:
        if not text:
            return
        if context != self._context:
            self._flush()
            self._context = context
        self._parts.append(_SPACES.sub(" ", text))

    def sentence_end(self) -> None:
        self._parts.append(SENTENCE_END)

    def pause(self, ms: int) -> None:
        self._flush()
        if self.items and isinstance(self.items[-1], Pause):
            ms += self.items.pop().ms  # two breaks in a row: one silence of both lengths
        self.items.append(Pause(ms))

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def _flush(self) -> None:
        text = "\n".join(line.strip() for line in "".join(self._parts).split(SENTENCE_END))
        text = re.sub(r"\n+", SENTENCE_END, text).strip()
        self._parts = []
        if text:
            self.items.append(SpokenText(text, self._context.rate, self._context.voice))

    def finish(self) -> SsmlDocument:
        self._flush()
        return SsmlDocument(tuple(self.items), tuple(self.warnings))


def parse_ssml(markup: str, max_break_ms: int) -> SsmlDocument:
    """The runs of text and the pauses of `markup`, or InvalidSsml saying what is wrong and where."""
    root = _parse_xml(markup)
    if _local(root.tag) != "speak":
        raise InvalidSsml(f"SSML must have <speak> as its root element, not <{_local(root.tag)}>", line=1, column=1)
    builder = _Builder(max_break_ms)
    _walk(root, _Context(), builder)
    return builder.finish()


def _parse_xml(markup: str) -> Element:
    try:
        return defusedxml.ElementTree.fromstring(markup, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise InvalidSsml(f"the SSML is not well-formed XML: {reason}", line=line, column=column + 1) from None
    except defusedxml.DefusedXmlException as exc:
        line, column = _position(markup, markup.find("<!"))
        raise InvalidSsml(
            f"the SSML declares a DTD or entities ({type(exc).__name__}); they are refused: write the text itself",
            line=line,
            column=column,
        ) from None


def _position(text: str, index: int) -> tuple[int | None, int | None]:
    """1-based (line, column) of `index` in `text`; (None, None) when it is not found."""
    if index < 0:
        return None, None
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _local(tag: object) -> str:
    """A tag without its namespace (`{http://www.w3.org/2001/10/synthesis}speak` is `speak`)."""
    return str(tag).rpartition("}")[2]


def _walk(element: Element, context: _Context, builder: _Builder) -> None:
    """Speak `element` (its text, children and their tails) in `context`; not its own tail."""
    tag = _local(element.tag)
    if tag in ("p", "s"):
        builder.sentence_end()
        _children(element, context, builder)
        builder.sentence_end()
    elif tag == "break":
        builder.pause(_break_ms(element, builder.max_break_ms))
        _children(element, context, builder)
    elif tag == "prosody":
        _children(element, _prosody(element, context, builder), builder)
    elif tag == "voice":
        name = element.get("name")
        if not name:
            builder.warn("<voice> without a name: the voice around it speaks its text")
        _children(element, _Context(context.rate, name or context.voice), builder)
    elif tag == "say-as":
        builder.say(_say_as(element, builder), context)
    elif tag == "sub":
        alias = element.get("alias")
        if alias is None:
            builder.warn("<sub> without an alias: its text is spoken")
            _children(element, context, builder)
        else:
            builder.say(alias, context)
    else:
        if tag not in ("speak", "emphasis"):
            builder.warn(f"<{tag}> is not supported: its text is spoken as it is")
        _children(element, context, builder)


def _children(element: Element, context: _Context, builder: _Builder) -> None:
    builder.say(element.text, context)
    for child in element:
        _walk(child, context, builder)
        builder.say(child.tail, context)


def _break_ms(element: Element, max_break_ms: int) -> int:
    time, strength = element.get("time"), element.get("strength")
    if time is not None:
        match = _TIME.match(time)
        if match is None:
            raise InvalidSsml(f"<break time={time!r}>: give a time such as '500ms' or '2s'")
        ms = round(float(match[1]) * (1 if match[2] == "ms" else 1000))
        if ms > max_break_ms:
            raise InvalidSsml(f"<break time={time!r}> is longer than the {max_break_ms / 1000:g} s allowed (tts.max_break_s)")
        return ms
    if strength is None:
        return BREAK_STRENGTHS_MS["medium"]
    if strength not in BREAK_STRENGTHS_MS:
        raise InvalidSsml(f"<break strength={strength!r}>: allowed strengths are {', '.join(BREAK_STRENGTHS_MS)}")
    return min(BREAK_STRENGTHS_MS[strength], max_break_ms)


def _prosody(element: Element, context: _Context, builder: _Builder) -> _Context:
    for attribute in sorted(set(element.keys()) - {"rate"}):
        builder.warn(f"<prosody {attribute}> is not supported: ignored (only rate is)")
    rate = element.get("rate")
    if rate is None:
        return context
    return _Context(context.rate * _rate(rate), context.voice)


def _rate(value: str) -> float:
    if value in RATES:
        return RATES[value]
    percent = _PERCENT.match(value)
    if percent is not None:
        sign, number = percent[1], float(percent[2]) / 100
        factor = 1 + number if sign == "+" else 1 - number if sign == "-" else number
    elif _NUMBER.match(value):
        factor = float(value)
    else:
        factor = 0.0
    if factor <= 0:
        raise InvalidSsml(
            f"<prosody rate={value!r}>: give {', '.join(RATES)}, a percentage such as '120%' or '-10%', "
            "or a positive number"
        )
    return factor


def _say_as(element: Element, builder: _Builder) -> str:
    text = "".join(element.itertext())
    kind = element.get("interpret-as")
    if kind in ("characters", "spell-out", "digits"):
        return " ".join(char for char in text if not char.isspace())
    if kind in ("cardinal", "number"):
        return _GROUPED.sub("", text.strip())
    builder.warn(f"<say-as interpret-as={kind!r}> is not supported (only {', '.join(SAY_AS)}): its text is spoken")
    return text
