"""text -> optional LLM reply -> sentences -> engine -> audio, with the service's limits.

Protocol-free: the HTTP route (and later the streaming socket) validate with `check_request`, get
the words to speak from `reply_text`, and the audio from `speak`. Synthesis runs in a bounded worker
pool: at most tts.max_concurrent at once; the others wait in arrival order for up to
tts.queue_timeout_s, then get EngineBusy (503 with Retry-After). A request whose client has gone
sets its cancel event and synthesis stops before its next sentence.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from core.audio import float32_to_pcm16, resample
from core.config import Settings
from core.llm import LLMError, LLMModelNotFound, LLMTimeout, LLMUnavailable, OllamaClient
from core.logging import get_logger
from core.text import clean_for_speech, split_sentences
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
    """The client went away; the synthesis stopped early."""


@dataclass
class _Counters:
    waiting: int = 0
    running: int = 0
    served: int = 0
    rejected_busy: int = 0
    cancelled: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


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

    async def reply_text(self, text: str) -> str:
        """The assistant's answer to the user's words, with LLM failures as service errors."""
        try:
            reply = await self.llm.reply(text)
        except LLMModelNotFound as exc:
            raise LlmModelNotFound(str(exc)) from None
        except LLMTimeout as exc:
            raise LlmTimeout(str(exc)) from None
        except LLMUnavailable as exc:
            raise LlmUnavailable(str(exc)) from None
        except LLMError as exc:
            raise LlmError(str(exc)) from None
        if not reply.strip():
            raise LlmError(
                f"the model {self.settings.llm.model!r} returned an empty reply; try again or change llm.model"
            )
        return reply

    # -- synthesis ------------------------------------------------------------------------------

    async def speak(self, text: str, voice: str, speed: float, cancel: threading.Event | None = None) -> Speech:
        """Synthesize `text` in the worker pool, waiting for a free worker up to tts.queue_timeout_s."""
        engine = self.engine()
        spoken = clean_for_speech(text)
        sentences = split_sentences(spoken)
        if not sentences:
            raise EmptyText("the text has nothing speakable (only symbols, emoji or markup)")
        cancel = cancel or threading.Event()
        await self._acquire()
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

    async def _acquire(self) -> None:
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
            with anyio.move_on_after(tts.queue_timeout_s) as scope:
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


def _synthesize(
    engine: Engine, sentences: list[str], voice: str, speed: float, cancel: threading.Event
) -> tuple[np.ndarray, int, bytes] | None:
    """Runs in a worker thread: the assembled audio, or None when cancelled (checked before every sentence
    and after every chunk)."""
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
    return _assemble(chunks)


_EMPTY_RATE = 22050
"""Sample rate reported for a synthesis that produced no audio at all."""


def _assemble(chunks: list[AudioChunk]) -> tuple[np.ndarray, int, bytes]:
    """One array at the first chunk's rate, and its PCM16 bytes (built here, in the worker, not on the loop)."""
    if not chunks:
        return np.zeros(0, dtype=np.float32), _EMPTY_RATE, b""
    rate = chunks[0].sample_rate
    parts = [
        chunk.samples if chunk.sample_rate == rate else resample(chunk.samples, chunk.sample_rate, rate)
        for chunk in chunks
    ]
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    return samples, rate, float32_to_pcm16(samples)
