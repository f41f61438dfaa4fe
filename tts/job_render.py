"""The work of a job, in plain blocking functions that run in a worker thread (of the TTS service, or of a
`python -m tts.worker` process): a document cut into parts, a part rendered to PCM16, the parts joined
into the result in its format.

A part is spoken exactly as the live turn runner speaks it (tts/runner.py): sentence by sentence through
the same `synthesize`, voices of other rates resampled to the part's first rate, a pause put in as exact
silence before the next audio. So a job's audio equals POST /v1/speech's for the same document.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from core.audio import float32_to_pcm16, pcm16_to_float32, resample, wav_bytes
from core.encode import StreamEncoder
from core.text import SpeechSplitter
from tts.engines import Engine
from tts.runner import synthesize
from tts.segments import Fragment, Segment


class Stopped(Exception):
    """The part's job was cancelled, or its worker is stopping, before the part was done."""


@dataclass(frozen=True)
class Part:
    segments: tuple[Segment, ...]
    blocks: tuple[int, ...]
    """The document's blocks it speaks (of some only a share)."""


@dataclass(frozen=True)
class RenderedPart:
    rate: int | None
    """None when the part said nothing (its pause then has no rate yet: see pause_ms)."""
    pcm16: bytes
    pause_ms: int
    """A pause after the part not yet put in (a part without audio): the join adds it at the output rate."""


def sentences(text: str) -> list[str]:
    splitter = SpeechSplitter()
    return [*splitter.feed(text), *splitter.flush()]


def split_parts(blocks: list[tuple[Segment, ...]], per_part: int) -> list[Part]:
    """The blocks' segments in parts of at most `per_part` sentences, in order: a long block (a chapter
    pasted as one text) is spread over several parts, and so over the workers."""
    parts: list[Part] = []
    current: list[Segment] = []
    touched: list[int] = []
    count = 0

    def close() -> None:
        nonlocal current, touched, count
        if current:
            parts.append(Part(tuple(current), tuple(touched)))
        current, touched, count = [], [], 0

    for index, segments in enumerate(blocks):
        for segment in segments:
            said, position = sentences(segment.text), 0
            while True:
                if count == per_part:
                    close()
                taken = said[position : position + per_part - count]
                position += len(taken)
                last = position >= len(said)
                pause = segment.pause_after_ms if last else 0
                current.append(replace(segment, text="\n".join(taken), pause_after_ms=pause))
                if index not in touched:
                    touched.append(index)
                count += len(taken)
                if last:
                    break
    close()
    return parts


def render_part(
    engine: Callable[[str | None], Engine], part: Part, stop: Callable[[], bool], heartbeat: Callable[[float], None]
) -> RenderedPart:
    """The part's audio, each segment spoken by its engine (`engine(name)`); `stop` is asked before every
    sentence (Stopped), `heartbeat(audio_s)` told after."""
    rate: int | None = None
    pieces: list[bytes] = []
    pending = 0
    never = threading.Event()
    for segment in part.segments:
        for sentence in sentences(segment.text):
            if stop():
                raise Stopped()
            fragment = Fragment(sentence, segment.voice, segment.speed, segment.speaker)
            result = synthesize(engine(segment.engine), fragment, never, rate)
            assert result is not None  # `never` is never set
            samples, rate, pcm16 = result
            if pcm16 and pending:
                pieces.append(bytes(2 * round(pending * rate / 1000)))
                pending = 0
            pieces.append(pcm16)
            heartbeat(len(samples) / rate)
        pending += segment.pause_after_ms
    if pending and rate is not None:
        pieces.append(bytes(2 * round(pending * rate / 1000)))
        pending = 0
    return RenderedPart(rate, b"".join(pieces), pending)


def join_parts(parts: list[RenderedPart], fmt: str, sample_rate: int | None) -> tuple[bytes, int, float]:
    """The parts as one recording in `fmt` at `sample_rate` (default: the first part's rate): (bytes, rate,
    seconds). Parts at another rate are resampled whole, so a join adds and drops no sample."""
    first = next((part.rate for part in parts if part.rate is not None), None)
    rate = sample_rate or first or 22050
    audio: list[bytes] = []
    for part in parts:
        if part.rate is not None and part.rate != rate:
            audio.append(float32_to_pcm16(resample(pcm16_to_float32(part.pcm16), part.rate, rate)))
        else:
            audio.append(part.pcm16)
        if part.pause_ms:
            audio.append(bytes(2 * round(part.pause_ms * rate / 1000)))
    pcm = b"".join(audio)
    seconds = len(pcm) / 2 / rate
    if fmt == "wav":  # a file, not a stream: its header has the real sizes (the streaming one does not)
        return wav_bytes(pcm, rate), rate, seconds
    encoder = StreamEncoder(fmt, rate, rate)
    return encoder.encode(pcm) + encoder.finish(), rate, seconds


def part_bytes(part: RenderedPart) -> bytes:
    """A rendered part as stored between its render and the join: rate, pause, then the PCM16."""
    header = np.array([part.rate or 0, part.pause_ms], dtype="<i8").tobytes()
    return header + part.pcm16


def part_from_bytes(data: bytes) -> RenderedPart:
    rate, pause = (int(value) for value in np.frombuffer(data[:16], dtype="<i8"))
    return RenderedPart(rate or None, data[16:], pause)
