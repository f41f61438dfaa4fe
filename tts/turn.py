"""One turn of the TTS service core: its request, its typed events, its timings, and the handle an
adapter holds while the turn runs.

A turn is `text -> (the LLM's reply) -> fragments -> audio`. The adapter iterates the handle
(`async for event in turn`): `ReplyText` each time a fragment is cut, `AudioPiece` as soon as its audio
is ready, then `ReplyText(is_final=True)`. A failure is raised by the iteration at the point it happened,
after everything that came before it; a cancelled turn raises `Cancelled`. `turn.cancel()` stops the LLM
request at once and the synthesis before its next sentence; `await turn.aclose()` also waits until the
turn's worker is free. That is the one cancellation mechanism of every protocol.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from core.errors import ServiceError, TextTooLong
from core.llm import LlmStats
from tts.segments import Segment

EVENT_BUFFER = 8
"""Events a turn may run ahead of a slow client; then synthesis waits (bounded memory per turn)."""


class Cancelled(Exception):
    """The turn was cancelled (client gone, barge-in, shutdown) and has stopped."""


@dataclass(frozen=True)
class TurnRequest:
    """A checked request (TtsService.check_request)."""

    text: str
    voice: str
    speed: float
    reply: bool
    """Speak the LLM's reply to `text` (True) or `text` itself (False)."""
    speaker: str | None = None
    """The speaker of a multi-speaker voice (None: its default)."""
    text_stream: AsyncIterable[str] | None = None
    """When set, the text arrives piece by piece from the client (streamed like a reply); `text` is unused."""
    conversation_id: str | None = None
    """The conversation this turn continues (replies only): its earlier turns go to the LLM, and the
    turn is recorded in it once it ends."""
    early_first: bool | None = None
    """Let the first fragment end early (tts.first_fragment_*) to start speaking sooner; None: for replies
    and streamed text, whose first sentence is still being written."""
    engine: str | None = None
    """The engine that speaks it (None: the default engine)."""
    segments: tuple[Segment, ...] | None = None
    """When set (SSML, a document), the runs spoken in turn, each with its voice, speed and pause after
    it; `text` is then only what is said, without markup."""
    warnings: tuple[str, ...] = ()
    """What of the request was not understood and so spoken plainly (unsupported SSML tags)."""


@dataclass(frozen=True)
class ReplyText:
    """The words of the turn so far (cleaned, as they are spoken); `is_final` on the last one."""

    text: str
    is_final: bool


@dataclass(frozen=True)
class AudioPiece:
    """The audio of one fragment, as mono little-endian PCM16."""

    index: int
    """0, 1, 2... in speaking order."""
    text: str
    """The fragment this audio speaks."""
    sample_rate: int
    """The same for every piece of a turn (the first piece's rate; later ones are resampled to it)."""
    pcm16: bytes
    synthesis_s: float

    @property
    def samples(self) -> int:
        return len(self.pcm16) // 2


TurnEvent = ReplyText | AudioPiece

TEXT_STREAM_BUFFER = 256
"""Pieces of streamed text a client may send ahead of the turn reading them; then sending waits."""


class TextStream:
    """Text arriving piece by piece from a client (Wyoming's synthesize-chunk), read by its turn as it
    comes, bounded by tts.max_text_length over the whole stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.length = 0
        self._send, self._receive = anyio.create_memory_object_stream[str](TEXT_STREAM_BUFFER)

    async def send(self, text: str) -> None:
        """Add a piece; TextTooLong past the limit (nothing of that piece is taken)."""
        if self.length + len(text) > self.limit:
            raise TextTooLong(
                f"the streamed text has more than {self.limit} characters (tts.max_text_length); "
                f"{self.length} were taken"
            )
        self.length += len(text)
        try:
            await self._send.send(text)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the turn has ended (failed or cancelled): iterating it says why

    def close(self) -> None:
        """The end of the text."""
        self._send.close()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._receive.__aiter__()


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class TurnTimings:
    """Per-stage timings of one turn, all measured in this process with perf_counter()."""

    started: float = field(default_factory=time.perf_counter)
    reply: bool = False
    llm: LlmStats | None = None
    """LLM timings (None when the text was spoken as it is)."""
    llm_done_at: float | None = None
    first_fragment_at: float | None = None
    """When the first fragment was complete (cut from the reply) and handed to synthesis."""
    first_audio_at: float | None = None
    """When the first audio was ready to send."""
    queue_waits: list[float] = field(default_factory=list)
    """Seconds waited for a worker, per synthesis."""
    syntheses: list[tuple[float, float]] = field(default_factory=list)
    """(seconds in the worker, seconds of audio) per synthesis."""
    paused_s: float = 0.0
    """Seconds of silence put in for pauses (SSML breaks, pauses after document blocks)."""
    finished_at: float | None = None
    engine_load_s: float | None = None
    voice_load_s: float | None = None
    """Seconds its voice took to load again (unloaded after tts.idle_unload_s while its engine stayed loaded)."""
    """Seconds this turn's engine took to load first (it was not loaded, or unloaded after tts.idle_unload_s)."""

    def _since(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started

    @property
    def time_to_first_audio_s(self) -> float | None:
        return self._since(self.first_audio_at)

    @property
    def first_fragment_s(self) -> float | None:
        return self._since(self.first_fragment_at)

    @property
    def llm_total_s(self) -> float | None:
        return None if self.llm is None or self.llm_done_at is None else self.llm_done_at - self.llm.started

    @property
    def queue_wait_s(self) -> float:
        return sum(self.queue_waits)

    @property
    def synthesis_s(self) -> float:
        return sum(seconds for seconds, _ in self.syntheses)

    @property
    def synthesized_s(self) -> float:
        return sum(audio for _, audio in self.syntheses)

    @property
    def audio_s(self) -> float:
        """Seconds of audio made, pauses included."""
        return self.synthesized_s + self.paused_s

    @property
    def real_time_factor(self) -> float | None:
        return self.synthesis_s / self.synthesized_s if self.synthesized_s else None

    @property
    def total_s(self) -> float | None:
        return self._since(self.finished_at)

    def as_dict(self) -> dict[str, Any]:
        """The timings by stage, in seconds (generation_complete's and the SSE metrics' `timings`)."""
        llm = self.llm
        return {
            "llm": None
            if llm is None
            else {
                "time_to_first_token_s": _round(llm.time_to_first_token_s),
                "tokens": llm.tokens,
                "tokens_per_s": _round(llm.tokens_per_s, 2),
                "total_s": _round(self.llm_total_s),
                "attempts": llm.attempts,
            },
            "tts": {
                "first_fragment_s": _round(self.first_fragment_s),
                "time_to_first_audio_s": _round(self.time_to_first_audio_s),
                "first_synthesis_s": _round(self.syntheses[0][0] if self.syntheses else None),
                "synthesis_s": _round(self.synthesis_s),
                "audio_s": _round(self.audio_s),
                "real_time_factor": _round(self.real_time_factor),
                "syntheses": len(self.syntheses),
            },
            "queue": {
                "wait_s": _round(self.queue_wait_s),
                "first_wait_s": _round(self.queue_waits[0] if self.queue_waits else None),
                "max_wait_s": _round(max(self.queue_waits) if self.queue_waits else None),
            },
            "engine_load_s": _round(self.engine_load_s),
            "voice_load_s": _round(self.voice_load_s),
            "total_s": _round(self.total_s),
        }

    def log_fields(self) -> dict[str, Any]:
        """Flat key-values for a log line."""
        flat: dict[str, Any] = {}
        for stage, values in self.as_dict().items():
            if isinstance(values, dict):
                flat.update({f"{stage}_{key}": value for key, value in values.items()})
            elif values is not None:
                flat[stage] = values
        return flat


@dataclass(frozen=True)
class _Failure:
    error: ServiceError


PLAYED_SLACK_S = 0.05
"""Played this close to the end of the audio sent counts as all of it (clients measure on their own clocks)."""


class Turn:
    """The handle of one running turn: an async iterator of its events, with cancel and close."""

    def __init__(
        self,
        request: TurnRequest,
        engine: str,
        started: float | None = None,
        on_end: Callable[[Turn], Awaitable[None]] | None = None,
    ) -> None:
        self.request = request
        self.engine = engine
        """Name of the engine that speaks it."""
        self.cancel_event = threading.Event()
        """Seen by the worker thread between sentences."""
        self.timings = TurnTimings(reply=request.reply)
        if started is not None:
            self.timings.started = started
        self.fragments: list[str] = []
        self.chunks = 0
        """Audio pieces made."""
        self.history: list[tuple[str, str]] = []
        """The conversation's earlier turns (user, assistant), sent to the LLM with this one."""
        self._pieces: list[tuple[str, float]] = []
        """(text, seconds of audio) of each piece made."""
        self._delivered = 0
        """Pieces the adapter has taken (sent on to its client)."""
        self._played_s: float | None = None
        self.recorded: Any = None
        """The ConversationTurn recorded for it, once it is (kept to amend it when playback is cut later)."""
        self.sent_at_end = False
        """The adapter sends the audio only once the turn has ended well (POST /tts): a cut turn sent none."""
        self.sample_rate: int | None = None
        self.pending_pause_ms = 0
        """Pauses asked for since the last audio, put in as silence before the next (or at the end)."""
        self.outcome = "running"
        """ok, cancelled, or the error code, once the turn has ended."""
        self._send, self._receive = anyio.create_memory_object_stream[TurnEvent | _Failure](EVENT_BUFFER)
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._on_end = on_end
        """Awaited once, when the turn has ended and its adapter has taken all it will of it (at the end
        of its events, or at aclose), before the adapter tells its client about the end."""

    @property
    def text(self) -> str:
        return " ".join(self.fragments)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop the turn: the LLM request at once, the synthesis before its next sentence. Safe from any
        task of the event loop; iterating the turn then raises Cancelled once its worker is free."""
        self.cancel_event.set()
        if self._scope is not None:
            self._scope.cancel()

    async def aclose(self) -> None:
        """Cancel the turn unless it has ended, and wait until it has stopped (its worker is free)."""
        if not self._done.is_set():
            self.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()
        self._receive.close()
        await self._ended()

    async def _ended(self) -> None:
        hook, self._on_end = self._on_end, None
        if hook is not None:
            with anyio.CancelScope(shield=True):
                await hook(self)

    def __aiter__(self) -> Turn:
        return self

    async def __anext__(self) -> TurnEvent:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            await self._ended()
            if self.cancelled:
                raise Cancelled() from None
            raise StopAsyncIteration from None
        if isinstance(item, _Failure):
            raise item.error
        if isinstance(item, AudioPiece):
            self._delivered += 1
        return item

    def played(self, seconds: float) -> None:
        """How much of the turn's audio the client says it played (barge-in, cancel with played_ms)."""
        self._played_s = max(0.0, seconds)

    def heard(self) -> tuple[str, bool]:
        """(the words the user heard, whether the reply was cut short): of the fragments whose audio was
        sent to the client, those whose audio began within what it played, when it said."""
        if self.sent_at_end:
            sent = self._pieces if self.outcome == "ok" else []
        else:
            sent = self._pieces[: self._delivered]
        if self._played_s is None:
            heard = [text for text, _ in sent]
        else:
            heard, start = [], 0.0
            for text, seconds in sent:
                if start >= self._played_s:
                    break
                heard.append(text)
                start += seconds
        cut = self.outcome != "ok" or len(heard) < len(self._pieces)
        if self._played_s is not None:
            # Playback stopped before the audio sent ran out: the last fragment heard was cut in its middle.
            cut = cut or self.cancelled or self._played_s < sum(seconds for _, seconds in sent) - PLAYED_SLACK_S
        return " ".join(heard), cut

    # -- the runner's side ---------------------------------------------------------------------

    async def emit(self, event: TurnEvent) -> None:
        if isinstance(event, AudioPiece):
            self._pieces.append((event.text, event.samples / event.sample_rate))
        await self._send.send(event)

    def can_emit(self, events: int = 1) -> bool:
        """Whether `emit` would hand `events` events on at once (the client is keeping up)."""
        stats = self._send.statistics()
        return stats.current_buffer_used + events <= stats.max_buffer_size

    async def fail(self, error: ServiceError) -> None:
        self.outcome = error.code
        await self._send.send(_Failure(error))

    def started(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        if self.cancelled:
            scope.cancel()

    def finished(self) -> None:
        self._scope = None
        self.timings.finished_at = time.perf_counter()
        if self.cancelled:
            self.outcome = "cancelled"
        elif self.outcome == "running":
            self.outcome = "ok"
        self._send.close()
        self._done.set()
