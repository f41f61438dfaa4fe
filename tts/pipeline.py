"""text -> optional LLM reply -> sentences -> engine -> audio, with the service's limits.

Protocol-free. Every route validates with `check_request`, then either
- speaks the whole text at once: `reply_text` (the LLM's whole answer) and `speak` (POST /tts), or
- streams a turn: `run_turn` reads the LLM reply as it is written, cuts it into fragments
  (core.text.SpeechSplitter) and synthesizes each one as soon as it is complete, handing out
  `ReplyText` and `AudioPiece` events in order (POST /tts/stream, SSE, WS /ws/tts).

Both paths cut the text the same way, so they speak the same audio. Synthesis runs in a bounded
worker pool: at most tts.max_concurrent at once; the others wait in arrival order for up to
tts.queue_timeout_s, then get EngineBusy (503 with Retry-After). `speak` holds one worker for the
whole text; `run_turn` takes a worker per fragment, so a streaming turn holds none while it waits
for the LLM; only its first fragment can get EngineBusy (later ones wait their turn without the
timeout, so a turn that has started speaking is never cut off mid-reply). A cancelled turn (client gone, `Turn.cancel`) stops its LLM request at once and its
synthesis before the next sentence: its worker is free within one sentence's synthesis.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from core.audio import float32_to_pcm16, resample
from core.config import Settings
from core.llm import LLMError, LLMModelNotFound, LlmStats, LLMTimeout, LLMUnavailable, OllamaClient
from core.logging import get_logger
from core.text import SpeechSplitter, speech_fragments
from tts.engines import Engine, create_engine
from tts.engines.base import AudioChunk
from tts.errors import (
    EmptyText,
    EngineBusy,
    EngineLoading,
    EngineStartError,
    EngineUnavailable,
    InvalidSpeed,
    LlmError,
    LlmModelNotFound,
    LlmTimeout,
    LlmUnavailable,
    TextTooLong,
)

log = get_logger(__name__)

EngineFactory = Callable[..., Engine]


@dataclass
class EngineState:
    """Which engine speaks, and why the service is degraded if it is."""

    configured: str
    """The engine named in tts.engine."""
    engine: Engine | None = None
    """The engine that serves requests (None while loading, or when nothing could start)."""
    loading: bool = True
    fallback: bool = False
    """True when the fallback engine serves because the configured one failed."""
    error: str | None = None
    """Why the configured engine is not serving, with how to fix it."""


@dataclass(frozen=True)
class Speech:
    """The spoken answer to one request."""

    samples: np.ndarray
    """Mono float32 samples."""
    sample_rate: int
    pcm16: bytes
    """The same samples as little-endian PCM16, ready for the wire."""
    text: str
    """The words spoken (the LLM reply, or the request's text)."""
    voice: str
    engine: str
    sentences: int
    synthesis_s: float
    """Seconds spent synthesizing in the worker."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


class Cancelled(Exception):
    """The client went away or cancelled; the synthesis stopped early."""


@dataclass
class _Counters:
    waiting: int = 0
    """Requests or fragments waiting for a worker now."""
    running: int = 0
    """Syntheses running in a worker now."""
    served: int = 0
    """Requests and turns completed."""
    rejected_busy: int = 0
    cancelled: int = 0
    """Requests and turns stopped early (client gone or cancelled)."""
    turns: int = 0
    """Streaming turns in progress now."""


@dataclass(frozen=True)
class TurnRequest:
    """A checked request (see TtsPipeline.check_request)."""

    text: str
    voice: str
    speed: float
    reply: bool
    """Speak the LLM's reply to `text` (True) or `text` itself (False)."""


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
OnEvent = Callable[[TurnEvent], Awaitable[None]]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


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
    finished_at: float | None = None

    def _since(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.started

    @property
    def time_to_first_audio_s(self) -> float | None:
        return self._since(self.first_audio_at)

    @property
    def first_fragment_s(self) -> float | None:
        return self._since(self.first_fragment_at)

    @property
    def queue_wait_s(self) -> float:
        return sum(self.queue_waits)

    @property
    def synthesis_s(self) -> float:
        return sum(seconds for seconds, _ in self.syntheses)

    @property
    def audio_s(self) -> float:
        return sum(audio for _, audio in self.syntheses)

    @property
    def real_time_factor(self) -> float | None:
        return self.synthesis_s / self.audio_s if self.audio_s else None

    @property
    def total_s(self) -> float | None:
        return self._since(self.finished_at)

    def as_dict(self) -> dict[str, Any]:
        """The timings by stage, in seconds (the shape of generation_complete's and SSE metrics' `timings`)."""
        llm = self.llm
        return {
            "llm": None
            if llm is None
            else {
                "time_to_first_token_s": _round(llm.time_to_first_token_s),
                "tokens": llm.tokens,
                "tokens_per_s": _round(llm.tokens_per_s, 2),
                "total_s": _round(None if self.llm_done_at is None else self.llm_done_at - llm.started),
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

    def server_timing(self) -> str:
        """A Server-Timing header value (milliseconds), for the stages known so far."""
        parts = []
        if self.llm is not None:
            if self.llm.time_to_first_token_s is not None:
                parts.append(f'llm_ttft;dur={_ms(self.llm.time_to_first_token_s)};desc="LLM time to first token"')
            if self.llm_done_at is not None:
                parts.append(f'llm;dur={_ms(self.llm_done_at - self.llm.started)};desc="LLM reply"')
        if self.queue_waits:
            parts.append(f'queue;dur={_ms(self.queue_wait_s)};desc="Waiting for a worker"')
        if self.syntheses:
            parts.append(f'tts;dur={_ms(self.synthesis_s)};desc="Synthesis"')
        if self.first_audio_at is not None:
            parts.append(f'ttfa;dur={_ms(self.time_to_first_audio_s)};desc="Time to first audio"')
        if self.finished_at is not None:
            parts.append(f'total;dur={_ms(self.total_s)}')
        return ", ".join(parts)


class Turn:
    """One streaming turn: its cancel switch, its timings and what it has spoken so far."""

    def __init__(self) -> None:
        self.cancel_event = threading.Event()
        """Seen by the worker thread between sentences."""
        self.timings = TurnTimings()
        self.fragments: list[str] = []
        self.chunks = 0
        """Audio pieces handed out."""
        self.sample_rate: int | None = None
        self.admitted = False
        """True once a fragment got a worker: later fragments wait for one without tts.queue_timeout_s."""
        self.failure: BaseException | None = None
        self._scope: anyio.CancelScope | None = None

    @property
    def text(self) -> str:
        return " ".join(self.fragments)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        """Stop the turn: the LLM request at once, the synthesis before its next sentence. Safe from any
        task of the event loop; `run_turn` then raises Cancelled once the worker is free."""
        self.cancel_event.set()
        if self._scope is not None:
            self._scope.cancel()


_FRAGMENT_QUEUE = 64
"""Fragments cut from the reply but not yet synthesized, per turn (the reply itself is bounded by
llm.max_reply_chars; this only bounds how far the LLM may run ahead of synthesis)."""


class TtsPipeline:
    def __init__(
        self,
        settings: Settings,
        llm: OllamaClient,
        *,
        engine_factory: EngineFactory = create_engine,
        engine_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.state = EngineState(configured=settings.tts.engine)
        self._factory = engine_factory
        self._engine_options = engine_options or {}
        tts = settings.tts
        # Admission: who may synthesize now (FIFO, so waiting requests are served in arrival order).
        self.limiter = anyio.CapacityLimiter(tts.max_concurrent)
        # The threads themselves; never contended, since admission already bounds them.
        self._threads = anyio.CapacityLimiter(tts.max_concurrent)
        self.counters = _Counters()

    # -- engine start-up ------------------------------------------------------------------------

    async def start_engine(self) -> None:
        """Start the configured engine (in a worker thread: it may download and load models), or the
        fallback when it cannot start. Never raises: failures are recorded in `state`."""
        tts = self.settings.tts
        name = tts.engine
        started = time.perf_counter()
        try:
            engine = await anyio.to_thread.run_sync(self._start, name, False, abandon_on_cancel=True)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, EngineStartError) else f"{exc.__class__.__name__}: {exc}"
            self.state.error = f"the {name} engine cannot start: {reason}"
            if isinstance(exc, EngineStartError):
                log.error("engine_start_failed", engine=name, reason=reason)
            else:
                log.exception("engine_start_failed", engine=name)
            # The fallback runs even when it is the configured engine: as the fallback, espeak uses its own
            # default voice (tts.espeak.voice), which rescues a tts.voice meant for another engine.
            if tts.fallback_engine != "none":
                try:
                    engine = await anyio.to_thread.run_sync(
                        self._start, tts.fallback_engine, True, abandon_on_cancel=True
                    )
                except Exception as fallback_exc:
                    log.error("fallback_engine_failed", engine=tts.fallback_engine, reason=str(fallback_exc))
                    self.state.error += f"; the fallback {tts.fallback_engine} engine failed too: {fallback_exc}"
                    self.state.loading = False
                    return
                self.state.fallback = True
                log.error(
                    "engine_fallback",
                    engine=tts.fallback_engine,
                    configured=name,
                    reason=reason,
                    fix=f"fix the {name} engine (see reason) and restart; until then {tts.fallback_engine} speaks",
                )
            else:
                self.state.loading = False
                return
        self.state.engine = engine
        self.state.loading = False
        log.info(
            "engine_ready",
            engine=engine.name,
            voice=engine.default_voice,
            fallback=self.state.fallback,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _start(self, name: str, as_fallback: bool) -> Engine:
        engine = self._factory(name, self.settings, as_fallback=as_fallback, **self._engine_options.get(name, {}))
        engine.start()
        return engine

    def configured_voice(self) -> str:
        """The default voice the configured engine would use (for reports while it is not serving)."""
        tts = self.settings.tts
        own = {"piper": tts.piper.voice, "espeak": tts.espeak.voice, "xtts": tts.xtts.speaker, "groq": tts.groq.voice}
        return tts.voice or own[tts.engine]

    def engine(self) -> Engine:
        """The serving engine, or the 503 that explains why there is none."""
        if self.state.engine is not None:
            return self.state.engine
        if self.state.loading:
            raise EngineLoading(
                f"the {self.state.configured} engine is still starting (loading or downloading its voice); "
                "try again shortly",
                self.settings.tts.retry_after_s,
            )
        raise EngineUnavailable(
            f"{self.state.error}. Fix it and restart the service, or set tts.fallback_engine to espeak"
        )

    def close(self) -> None:
        if self.state.engine is not None:
            self.state.engine.close()

    # -- validation -----------------------------------------------------------------------------

    def check_request(self, text: str, voice: str | None, speed: float | None) -> tuple[str, str, float]:
        """The text, resolved voice and speed of a request, or the error that says what is wrong."""
        tts = self.settings.tts
        if not text or not text.strip():
            raise EmptyText("text is empty; send the words to speak (or to answer) in 'text'")
        if len(text) > tts.max_text_length:
            raise TextTooLong(
                f"text has {len(text)} characters; the limit is {tts.max_text_length} (tts.max_text_length)"
            )
        speed = 1.0 if speed is None else speed
        if not (math.isfinite(speed) and tts.min_speed <= speed <= tts.max_speed):
            raise InvalidSpeed(
                f"speed {speed!r} is outside the allowed range {tts.min_speed:g} to {tts.max_speed:g} "
                "(tts.min_speed, tts.max_speed); 1.0 is normal speed"
            )
        engine = self.engine()
        return text, engine.resolve_voice(voice), speed

    # -- LLM ------------------------------------------------------------------------------------

    async def reply_text(self, text: str, timings: TurnTimings | None = None) -> str:
        """The assistant's answer to the user's words, with LLM failures as service errors."""
        stats = LlmStats()
        if timings is not None:
            timings.llm = stats
        try:
            reply = await self.llm.reply(text, stats)
        except LLMError as exc:
            raise _llm_error(exc) from None
        finally:
            if timings is not None:
                timings.llm_done_at = time.perf_counter()
        if not reply.strip():
            raise self._empty_reply()
        return reply

    def _empty_reply(self) -> LlmError:
        return LlmError(
            f"the model {self.settings.llm.model!r} returned an empty reply; try again or change llm.model"
        )

    def _unspeakable_reply(self) -> LlmError:
        # The model's fault, not the client's: its own text was fine (that would be EmptyText, 422).
        return LlmError(
            f"the model {self.settings.llm.model!r}'s reply had nothing speakable (only code or symbols); "
            "try again or adjust llm.system_prompt"
        )

    def fragments(self, text: str) -> list[str]:
        """What `speak` and `run_turn` say for `text`: cleaned fragments, cut the same way."""
        tts = self.settings.tts
        return speech_fragments(text, tts.first_fragment_min_words, tts.first_fragment_max_words)

    # -- synthesis ------------------------------------------------------------------------------

    async def speak(
        self,
        text: str,
        voice: str,
        speed: float,
        cancel: threading.Event | None = None,
        timings: TurnTimings | None = None,
        reply: bool = False,
    ) -> Speech:
        """Synthesize `text` in the worker pool, waiting for a free worker up to tts.queue_timeout_s.
        `reply`: the text is the LLM's answer, so nothing speakable in it is the model's failure."""
        engine = self.engine()
        sentences = self.fragments(text)
        if not sentences:
            raise self._unspeakable_reply() if reply else EmptyText(_NOTHING_SPEAKABLE)
        spoken = " ".join(sentences)
        cancel = cancel or threading.Event()
        waited = time.perf_counter()
        await self._acquire()
        if timings is not None:
            timings.queue_waits.append(time.perf_counter() - waited)
        try:
            self.counters.running += 1
            started = time.perf_counter()
            try:
                # Not abandoned on cancel: a cancelled request waits for its thread to stop (at the next
                # sentence), so the worker slot is only freed when the worker really is free.
                result = await anyio.to_thread.run_sync(
                    _synthesize, engine, sentences, voice, speed, cancel, limiter=self._threads
                )
            except anyio.get_cancelled_exc_class():
                self.counters.cancelled += 1
                log.info("synthesis_cancelled", reason="request cancelled")
                raise
            seconds = time.perf_counter() - started
        finally:
            self.counters.running -= 1
            self.limiter.release()
        if result is None:
            self.counters.cancelled += 1
            log.info("synthesis_cancelled", reason="client disconnected")
            raise Cancelled()
        samples, rate, pcm16 = result
        speech = Speech(samples, rate, pcm16, spoken, voice, engine.name, len(sentences), seconds)
        if timings is not None:
            timings.syntheses.append((seconds, speech.duration_s))
            timings.first_audio_at = time.perf_counter()
        self.counters.served += 1
        log.info(
            "synthesized",
            engine=engine.name,
            voice=voice,
            sentences=len(sentences),
            audio_s=round(speech.duration_s, 3),
            seconds=round(seconds, 3),
            rtf=round(seconds / speech.duration_s, 4) if speech.duration_s else None,
        )
        return speech

    # -- streaming ------------------------------------------------------------------------------

    async def run_turn(self, request: TurnRequest, on_event: OnEvent, turn: Turn | None = None) -> Turn:
        """Speak one turn as a stream: `await on_event(...)` with a ReplyText when each fragment is cut,
        an AudioPiece as soon as its audio is ready, and a final ReplyText(is_final=True). Events come
        from one task, in order. Raises Cancelled when `turn.cancel()` was called (after the worker is
        free), and the service errors of `speak` and `reply_text` (LLM failures, EngineBusy...)."""
        turn = turn or Turn()
        engine = self.engine()
        turn.timings.reply = request.reply
        failure: BaseException | None = None
        send, receive = anyio.create_memory_object_stream[str](_FRAGMENT_QUEUE)
        self.counters.turns += 1
        try:
            with anyio.CancelScope() as scope:
                turn._scope = scope
                if turn.cancelled:
                    scope.cancel()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._produce, request, send, turn)
                    try:
                        with receive:
                            async for fragment in receive:
                                await self._speak_fragment(engine, fragment, request, turn, on_event)
                        if turn.failure is not None:
                            raise turn.failure
                        await on_event(ReplyText(turn.text, True))
                    except Exception as exc:  # raised below, outside the task group (no exception group)
                        failure = exc
                        tasks.cancel_scope.cancel()
        finally:
            turn._scope = None
            self.counters.turns -= 1
            turn.timings.finished_at = time.perf_counter()
        if turn.cancelled:
            self.counters.cancelled += 1
            log.info("turn_cancelled", fragments=len(turn.fragments), chunks=turn.chunks)
            raise Cancelled()
        if failure is not None:
            raise failure
        self.counters.served += 1
        return turn

    async def _produce(self, request: TurnRequest, send: Any, turn: Turn) -> None:
        """Cut the text (or the LLM reply, as it streams) into fragments and queue them for synthesis.
        Failures are left in turn.failure for the consumer, which raises them in order after the
        fragments that came before."""
        tts = self.settings.tts
        splitter = SpeechSplitter(tts.first_fragment_min_words, tts.first_fragment_max_words)
        timings = turn.timings

        async def put(fragments: Iterable[str]) -> None:
            for fragment in fragments:
                if timings.first_fragment_at is None:
                    timings.first_fragment_at = time.perf_counter()
                await send.send(fragment)

        try:
            if request.reply:
                await self._produce_reply(request.text, splitter, put, timings)
            else:
                await put(splitter.feed(request.text))
                await put(splitter.flush())
            if splitter.fragments == 0:
                raise self._unspeakable_reply() if request.reply else EmptyText(_NOTHING_SPEAKABLE)
        except Exception as exc:
            turn.failure = exc
        finally:
            send.close()

    async def _produce_reply(
        self,
        text: str,
        splitter: SpeechSplitter,
        put: Callable[[Iterable[str]], Awaitable[None]],
        timings: TurnTimings,
    ) -> None:
        llm = self.settings.llm
        stats = LlmStats()
        timings.llm = stats
        limit = llm.max_reply_chars
        length = 0
        said_something = False
        truncated = False
        stream = self.llm.stream_reply(text, stats)
        try:
            with anyio.fail_after(llm.timeout_s):
                async for piece in stream:
                    said_something = said_something or bool(piece.strip())
                    if length + len(piece) > limit:
                        piece, truncated = piece[: limit - length], True
                    length += len(piece)
                    await put(splitter.feed(piece))
                    if truncated:
                        break
        except LLMError as exc:
            raise _llm_error(exc) from None
        except TimeoutError:
            raise _llm_error(self.llm.timeout_error()) from None
        finally:
            # Closing the stream closes the HTTP response: Ollama stops generating. Shielded, so it
            # happens even when the turn was cancelled.
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[attr-defined]
            timings.llm_done_at = time.perf_counter()
        if not said_something:
            raise self._empty_reply()
        if truncated:
            log.warning("llm_reply_truncated", chars=length, limit=limit)
            if splitter.fragments:
                return  # the unfinished sentence at the limit is not spoken
        await put(splitter.flush())

    async def _speak_fragment(
        self, engine: Engine, fragment: str, request: TurnRequest, turn: Turn, on_event: OnEvent
    ) -> None:
        timings = turn.timings
        turn.fragments.append(fragment)
        await on_event(ReplyText(turn.text, False))
        waited = time.perf_counter()
        # tts.queue_timeout_s is the turn's admission: only its first synthesis can be refused. Later
        # fragments queue like everyone else (FIFO) but wait without a timeout: a turn that has started
        # speaking is never cut off mid-reply with engine_busy because a later request took the worker
        # between two of its sentences. The wait stays bounded (each request ahead of it holds a worker
        # for one synthesis, and new arrivals still time out) and cancellable (Turn.cancel, client gone).
        await self._acquire(timeout=not turn.admitted)
        turn.admitted = True
        timings.queue_waits.append(time.perf_counter() - waited)
        try:
            self.counters.running += 1
            started = time.perf_counter()
            # Not abandoned on cancel: Turn.cancel sets the event first, the thread stops at its next
            # sentence, and only then is the worker slot given back.
            result = await anyio.to_thread.run_sync(
                _synthesize,
                engine,
                [fragment],
                request.voice,
                request.speed,
                turn.cancel_event,
                turn.sample_rate,
                limiter=self._threads,
            )
            seconds = time.perf_counter() - started
        finally:
            self.counters.running -= 1
            self.limiter.release()
        if result is None:
            raise Cancelled()
        samples, rate, pcm16 = result
        if turn.sample_rate is None:
            turn.sample_rate = rate
        audio_s = len(samples) / rate
        timings.syntheses.append((seconds, audio_s))
        log.debug("fragment_synthesized", chars=len(fragment), audio_s=round(audio_s, 3), seconds=round(seconds, 4))
        if not pcm16:
            return
        if timings.first_audio_at is None:
            timings.first_audio_at = time.perf_counter()
        piece = AudioPiece(turn.chunks, fragment, rate, pcm16, seconds)
        turn.chunks += 1
        await on_event(piece)

    async def _acquire(self, timeout: bool = True) -> None:
        """Wait for a worker in arrival order: up to tts.queue_timeout_s (then EngineBusy), or for as long
        as it takes when `timeout` is False (the later fragments of an admitted turn)."""
        tts = self.settings.tts
        if self.limiter.available_tokens < 1:
            log.warning(
                "TTS concurrent limit",
                max_concurrent=tts.max_concurrent,
                waiting=self.counters.waiting + 1,
                queue_timeout_s=tts.queue_timeout_s,
            )
        self.counters.waiting += 1
        try:
            with anyio.move_on_after(tts.queue_timeout_s if timeout else math.inf) as scope:
                await self.limiter.acquire()
        finally:
            self.counters.waiting -= 1
        if scope.cancelled_caught:
            self.counters.rejected_busy += 1
            raise EngineBusy(
                f"all {tts.max_concurrent} speech workers stayed busy for {tts.queue_timeout_s:g} s "
                "(tts.max_concurrent, tts.queue_timeout_s); try again later",
                tts.retry_after_s,
            )


_NOTHING_SPEAKABLE = "the text has nothing speakable (only symbols, emoji, markup or code)"


def _llm_error(exc: LLMError) -> LlmError:
    if isinstance(exc, LLMModelNotFound):
        return LlmModelNotFound(str(exc))
    if isinstance(exc, LLMTimeout):
        return LlmTimeout(str(exc))
    if isinstance(exc, LLMUnavailable):
        return LlmUnavailable(str(exc))
    return LlmError(str(exc))


def _synthesize(
    engine: Engine,
    sentences: list[str],
    voice: str,
    speed: float,
    cancel: threading.Event,
    rate: int | None = None,
) -> tuple[np.ndarray, int, bytes] | None:
    """Runs in a worker thread: the assembled audio (at `rate`, default the first chunk's), or None when
    cancelled (checked before every sentence and after every chunk)."""
    chunks: list[AudioChunk] = []
    for sentence in sentences:
        if cancel.is_set():
            return None
        generator = engine.synthesize(sentence, voice, speed)
        try:
            for chunk in generator:
                chunks.append(chunk)
                if cancel.is_set():
                    return None
        finally:
            close = getattr(generator, "close", None)
            if close:
                close()
    return _assemble(chunks, rate)


_EMPTY_RATE = 22050
"""Sample rate reported for a synthesis that produced no audio at all."""


def _assemble(chunks: list[AudioChunk], rate: int | None = None) -> tuple[np.ndarray, int, bytes]:
    """One array at `rate` (default: the first chunk's), and its PCM16 bytes (built here, in the worker,
    not on the loop)."""
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate or _EMPTY_RATE, b""
    rate = rate or chunks[0].sample_rate
    parts = [
        chunk.samples if chunk.sample_rate == rate else resample(chunk.samples, chunk.sample_rate, rate)
        for chunk in chunks
    ]
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    return samples, rate, float32_to_pcm16(samples)
