"""Documents: lists of blocks, each plain text or SSML with its own voice, engine, speed and pause after
it, checked into the segments one turn speaks (tts/runner.py) one after the other.

A block's text is cut into sentences like any text, so a chapter pasted as one block (or as a
document's `text`) is spoken sentence by sentence; voices of other sample rates are resampled to the
first voice's rate (the runner), and the adapter encodes the turn at the output rate it was asked for.
Protocol-free: the HTTP adapter (tts/documents_api.py) and the job workers (tts/jobs.py) share it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from core.errors import EmptyText, InvalidRequest, RequestTooLarge, ServiceError
from core.ssml import Pause, SsmlDocument, parse_ssml
from tts.segments import Segment
from tts.turn import TurnRequest

if TYPE_CHECKING:
    from tts.service import TtsService


@dataclass(frozen=True)
class Block:
    text: str
    ssml: bool = False
    """The text is SSML (core.ssml)."""
    voice: str | None = None
    engine: str | None = None
    speed: float | None = None
    pause_after_ms: int | None = None
    """Silence after the block (None: the document's default)."""


@dataclass(frozen=True)
class Document:
    blocks: tuple[Block, ...]
    voice: str | None = None
    """The defaults of the blocks that do not say."""
    engine: str | None = None
    speed: float | None = None
    pause_after_ms: int = 0

    @property
    def chars(self) -> int:
        return sum(len(block.text) for block in self.blocks)


@dataclass(frozen=True)
class CheckedDocument:
    request: TurnRequest
    """All of it as one turn (POST /v1/speech)."""
    blocks: list[tuple[Segment, ...]]
    """The segments of each block (a job's parts are cut from them)."""


async def check_document(
    service: TtsService, document: Document, max_chars: int, limit_name: str, hint: str = ""
) -> CheckedDocument:
    """The document checked (its blocks' voices resolved, speeds and pauses allowed), or the error
    naming the block at fault. `max_chars` bounds all its text (`limit_name` is the setting)."""
    tts = service.settings.tts
    if not document.blocks:
        raise InvalidRequest("the document has no blocks; send at least one block with text or ssml", param="blocks")
    if len(document.blocks) > tts.max_blocks:
        raise RequestTooLarge(
            f"the document has {len(document.blocks)} blocks; the limit is {tts.max_blocks} (tts.max_blocks)"
        )
    if document.chars > max_chars:
        raise RequestTooLarge(
            f"the document has {document.chars} characters; the limit is {max_chars} ({limit_name}){hint}"
        )
    blocks: list[tuple[Segment, ...]] = []
    warnings: list[str] = []
    for index, block in enumerate(document.blocks):
        try:
            block_segments, block_warnings = await _block_segments(service, document, block)
        except ServiceError as exc:
            exc.message = f"block {index}: {exc.message}"
            exc.args = (exc.message,)
            raise
        blocks.append(tuple(block_segments))
        warnings.extend(f"block {index}: {warning}" for warning in block_warnings)
    segments = [segment for block_segments in blocks for segment in block_segments]
    if not any(segment.text for segment in segments):
        raise EmptyText("the document has no words to speak (only pauses)")
    first = segments[0]
    text = " ".join(segment.text.replace("\n", " ") for segment in segments if segment.text)
    request = TurnRequest(
        text, first.voice, first.speed, False, first.speaker, engine=first.engine,
        segments=tuple(segments),
        warnings=tuple(warnings),
    )
    return CheckedDocument(request, blocks)


async def _block_segments(
    service: TtsService, document: Document, block: Block
) -> tuple[list[Segment], tuple[str, ...]]:
    engine = service.engines.slot(block.engine if block.engine is not None else document.engine).name
    voice, speaker = await service.check_voice(block.voice if block.voice is not None else document.voice, None, engine)
    speed = service.check_speed(block.speed if block.speed is not None else document.speed)
    pause = block.pause_after_ms if block.pause_after_ms is not None else document.pause_after_ms
    check_pause(pause, service.settings.tts.max_break_s)
    base = Segment("", voice, speed, speaker, pause, engine)
    if block.ssml:
        parsed = parse_ssml(block.text, round(service.settings.tts.max_break_s * 1000))
        return list(await ssml_segments(service, parsed, base)), parsed.warnings
    return [replace(base, text=block.text)], ()


def check_pause(ms: int, max_break_s: float) -> None:
    if not 0 <= ms <= max_break_s * 1000:
        raise InvalidRequest(
            f"pause_after_ms {ms} is outside 0 to {max_break_s * 1000:g} (tts.max_break_s)", param="pause_after_ms"
        )


async def ssml_segments(service: TtsService, document: SsmlDocument, base: Segment) -> tuple[Segment, ...]:
    """The runs of a parsed SSML text as segments, its voices resolved and speeds checked; `base` holds
    the voice, speaker and speed around the markup, and its pause_after_ms goes after it."""
    segments: list[Segment] = []
    voices: dict[str, tuple[str, str | None]] = {}
    for item in document.items:
        if isinstance(item, Pause):
            if segments:
                last = segments[-1]
                segments[-1] = replace(last, pause_after_ms=last.pause_after_ms + item.ms)
            else:
                segments.append(replace(base, pause_after_ms=item.ms))
            continue
        voice, speaker = base.voice, base.speaker
        if item.voice is not None:
            if item.voice not in voices:
                voices[item.voice] = await service.check_voice(item.voice, None, base.engine)
            voice, speaker = voices[item.voice]
        speed = service.check_speed(base.speed * item.rate, f" (speed {base.speed:g} times <prosody rate> {item.rate:g})")
        segments.append(Segment(item.text, voice, speed, speaker, engine=base.engine))
    if not any(segment.text for segment in segments):
        raise EmptyText("the SSML has no words to speak (only markup and pauses)")
    last = segments[-1]
    segments[-1] = replace(last, pause_after_ms=last.pause_after_ms + base.pause_after_ms)
    return tuple(segments)
