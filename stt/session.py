"""One live /ws/stt connection: audio -> VAD -> utterances -> the shared transcription pool.

The protocol layer (server.py) hands messages in and supplies `send`; this class owns the order
of results (one worker per session, so transcripts arrive in speaking order) and the cleanup.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio import CapacityLimiter
from anyio.abc import TaskGroup

from core.audio import StreamResampler, pcm16_to_float32
from core.config import SttSettings
from core.logging import get_logger
from stt import protocol
from stt.engine import WhisperEngine
from stt.metrics import SttMetrics
from stt.partials import PartialStabilizer
from stt.protocol import ConfigMessage
from stt.stream import (
    SAMPLE_RATE,
    BufferLimitReached,
    Event,
    NoSpeech,
    SegmenterLimits,
    SpeechEnded,
    SpeechStarted,
    Utterance,
    UtteranceSegmenter,
)
from stt.vad import WINDOW_SAMPLES, StreamingVad

log = get_logger(__name__)

class Send(Protocol):
    """Sends one message; `still_valid` is checked once it is this message's turn on the wire."""

    def __call__(
        self, message: dict[str, Any], still_valid: Callable[[], bool] | None = None
    ) -> Awaitable[None]: ...


@dataclass(frozen=True)
class _Job:
    """An utterance (or a no-speech acknowledgement) waiting for the session's worker."""

    epoch: int
    item: Utterance | NoSpeech
    speech_end: float
    language: str | None
    word_timestamps: bool


class ModelUnavailable(Exception):
    pass


class ModelHolder:
    """The process's one engine, loaded in the background so /health answers during a download."""

    def __init__(self) -> None:
        self.engine: WhisperEngine | None = None
        self.error: str | None = None
        self._settled = anyio.Event()

    @property
    def loading(self) -> bool:
        return not self._settled.is_set()

    def loaded(self, engine: WhisperEngine) -> None:
        self.engine = engine
        self._settled.set()

    def failed(self, reason: str) -> None:
        self.error = reason
        self._settled.set()

    async def wait(self) -> WhisperEngine:
        await self._settled.wait()
        if self.engine is None:
            raise ModelUnavailable(self.error or "the speech model is not loaded")
        return self.engine


class SttSession:
    def __init__(
        self,
        settings: SttSettings,
        model: ModelHolder,
        transcribe_limiter: CapacityLimiter,
        vad_limiter: CapacityLimiter,
        send: Send,
        metrics: SttMetrics,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._model = model
        self._transcribe_limiter = transcribe_limiter
        self._vad_limiter = vad_limiter
        self._send = send
        self.language = settings.language
        self.word_timestamps = False
        self.partials = settings.partial_interval_ms > 0
        self.tasks: TaskGroup | None = None
        """Where partial transcriptions run; set by the server (no partials without it)."""
        self._partial_running = False
        self._last_partial_at = 0.0
        self._utterance_seq = 0
        self._stabilizer = PartialStabilizer()
        self._last_speech_at = 0.0
        self.segmenter = UtteranceSegmenter(SegmenterLimits.from_settings(settings))
        self._vad = StreamingVad()
        self._resampler = StreamResampler(settings.sample_rate, SAMPLE_RATE)
        # Utterances are bounded by the segmenter's buffer accounting; the item cap also bounds
        # no-speech acknowledgements, which carry no audio.
        shortest = max(settings.min_speech_ms / 1000, 0.032)
        self._queue_items = int(math.ceil(settings.max_buffer_seconds / shortest)) + 16
        self._queue_in, self._queue_out = anyio.create_memory_object_stream[_Job](self._queue_items)
        self._holding: Utterance | None = None
        self._epoch = 0
        self._stopping = threading.Event()
        self._worker_done = anyio.Event()
        self.fatal: str | None = None
        self.on_fatal: Callable[[], None] = lambda: None
        self.utterances = 0

    async def feed_audio(self, pcm16: bytes) -> None:
        samples = self._resampler.process(pcm16_to_float32(pcm16))
        self._metrics.audio_received.inc(len(pcm16) / 2 / self._settings.sample_rate)
        if self._vad.pending_samples + len(samples) < WINDOW_SAMPLES:
            self._vad.process(samples)  # not a whole window yet: only buffers, no model call, no thread hop
            return
        result = await anyio.to_thread.run_sync(self._vad.process, samples, limiter=self._vad_limiter)
        if len(result.probabilities) and result.probabilities.max() >= self._settings.vad_threshold:
            self._last_speech_at = time.perf_counter()
        await self._dispatch(self.segmenter.push(result.windows, result.probabilities))
        self._maybe_partial()

    async def end(self) -> None:
        self._last_speech_at = time.perf_counter()  # push-to-talk: speech ends when the client says so
        await self._dispatch(self.segmenter.end(self._vad.take_pending()))

    async def reset(self) -> None:
        self._epoch += 1
        dropped = self.segmenter.reset() + self._vad.pending_samples / SAMPLE_RATE
        self._vad.reset()
        while True:
            try:
                job = self._queue_out.receive_nowait()
            except anyio.WouldBlock:
                break
            if isinstance(job.item, Utterance):
                dropped += job.item.duration
                self.segmenter.transcribed(job.item)
        if self._holding is not None:
            # Taken by the worker but not started: it sees the new epoch and drops it.
            dropped += self._holding.duration
        self._new_utterance()
        log.info("session_reset", dropped_seconds=round(dropped, 3))
        await self._send(protocol.reset_done(round(dropped, 3)))

    async def configure(self, message: ConfigMessage) -> None:
        given = message.model_fields_set
        if "language" in given:
            self.language = message.language
        if "word_timestamps" in given:
            self.word_timestamps = message.word_timestamps
        if "partials" in given:
            self.partials = message.partials and self._settings.partial_interval_ms > 0
        await self._send(protocol.config_applied(self.language, self.word_timestamps, self.partials))

    async def drain(self) -> None:
        """The service is shutting down: take no more input, transcribe the utterance being spoken
        (when it holds speech; silence is dropped without a message) and return once the worker has
        sent every pending result. The caller bounds the wait."""
        if self.segmenter.in_speech:
            await self._dispatch(self.segmenter.end(self._vad.take_pending()))
        self._queue_in.close()
        await self._worker_done.wait()

    def abandon(self) -> None:
        """Shutdown ran out of time: the transcription in progress stops at its next segment
        boundary and nothing more is sent."""
        self._stopping.set()

    def close(self) -> None:
        """Stop work in progress at the next segment boundary; drop everything queued."""
        self._stopping.set()
        self._queue_in.close()
        self._queue_out.close()

    async def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, BufferLimitReached):
                log.warning(
                    "buffer_limit_reached", held_seconds=event.duration, limit=self._settings.max_buffer_seconds
                )
                self._metrics.buffer_limit_reached.inc()
                await self._send(protocol.buffer_limit_reached(event.duration, self._settings.max_buffer_seconds))
                continue
            if isinstance(event, SpeechStarted):
                await self._send(protocol.speech_started(event.at))
                continue
            if isinstance(event, SpeechEnded):
                # Partials of this utterance are void from here on, also one already waiting to be sent.
                self._new_utterance()
                await self._send(protocol.speech_ended(event.at, event.reason))
                continue
            speech_end = time.perf_counter()
            if isinstance(event, Utterance):
                self._new_utterance()
                if event.reason == "silence":
                    speech_end = self._last_speech_at
            # Options are taken now: a config sent later applies to later utterances only.
            job = _Job(self._epoch, event, speech_end, self.language, self.word_timestamps)
            try:
                self._queue_in.send_nowait(job)
            except anyio.WouldBlock:
                if isinstance(event, Utterance):
                    self.segmenter.transcribed(event)
                await self._send(
                    protocol.error(
                        "too_many_pending", f"more than {self._queue_items} results are pending; this one was dropped"
                    )
                )

    async def run_worker(self) -> None:
        try:
            await self._work()
        finally:
            self._worker_done.set()

    async def _work(self) -> None:
        async for job in self._queue_out:
            if isinstance(job.item, NoSpeech):
                if job.epoch == self._epoch:
                    await self._send(protocol.no_speech(job.item.duration))
                continue
            self._holding = job.item
            try:
                await self._transcribe(job)
            except ModelUnavailable as exc:
                self.fatal = str(exc)
                self.on_fatal()
                return
            except Exception as exc:  # CUDA out of memory, a CTranslate2 error: this utterance is lost, not the session
                log.exception("transcription_failed", audio_seconds=round(job.item.duration, 3))
                await self._send(protocol.error("transcription_failed", f"this utterance could not be transcribed: {exc}"))
            finally:
                # The one place an utterance stops counting against the buffer, whatever became of it.
                self._holding = None
                self.segmenter.transcribed(job.item)

    def _current(self, job: _Job) -> bool:
        return job.epoch == self._epoch and not self._stopping.is_set()

    async def _transcribe(self, job: _Job) -> None:
        utterance = job.item
        assert isinstance(utterance, Utterance)
        queued_at = time.perf_counter()
        engine = await self._model.wait()
        async with self._transcribe_limiter:
            if not self._current(job):
                return  # reset or closed while it waited: the worker goes to someone who needs it
            self._holding = None
            waited = time.perf_counter() - queued_at
            with self._metrics.workers_busy.track_inprogress():
                result = await anyio.to_thread.run_sync(
                    engine.transcribe, utterance.audio, job.language, self._stopping.is_set, job.word_timestamps
                )
        self.utterances += 1
        metrics = self._metrics
        metrics.transcribe_seconds.observe(result.transcribe_seconds)
        metrics.real_time_factor.observe(result.real_time_factor)
        metrics.queue_wait.observe(waited)
        metrics.utterance_audio.observe(result.duration)
        metrics.utterances.labels(utterance.reason).inc()
        latency = time.perf_counter() - job.speech_end
        log.info(
            "utterance_transcribed",
            audio_seconds=round(result.duration, 3),
            transcribe_seconds=round(result.transcribe_seconds, 3),
            rtf=round(result.real_time_factor, 3),
            queue_wait_seconds=round(waited, 3),
            speech_end_to_transcript_seconds=round(latency, 3),
            reason=utterance.reason,
            language=result.language,
            characters=len(result.text),
        )
        if not self._current(job):
            return
        if result.text:
            metrics.final_latency.observe(latency)
            timings = {
                "speech_end_to_transcript_s": round(latency, 3),
                "queue_wait_s": round(waited, 3),
                "transcribe_s": round(result.transcribe_seconds, 3),
                "real_time_factor": round(result.real_time_factor, 3),
            }
            await self._send(protocol.transcript(result, utterance, timings))
        else:
            # Whisper heard no words: every utterance still ends with exactly one result message.
            await self._send(protocol.no_speech(utterance.duration))

    def _new_utterance(self) -> None:
        """Partials in flight belong to the utterance just closed: they are dropped, not sent."""
        self._utterance_seq += 1
        self._stabilizer = PartialStabilizer()

    def _maybe_partial(self) -> None:
        if not (self.partials and self.tasks and self.segmenter.speech_confirmed) or self._partial_running:
            return
        if self.segmenter.in_trailing_silence:
            return  # the final may be due any moment: a partial now would only compete with it for the CPU
        now = time.perf_counter()
        if now - self._last_partial_at < self._settings.partial_interval_ms / 1000:
            return
        engine = self._model.engine
        if engine is None:
            return
        self._last_partial_at = now
        limiter = self._transcribe_limiter
        # Partials never queue and never take the last free worker: that one is kept for finals.
        # With stt.max_concurrent 1 there are therefore no partials.
        token = object()
        if limiter.borrowed_tokens + 1 >= limiter.total_tokens:
            self._metrics.partials.labels("skipped").inc()
            return
        try:
            limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            self._metrics.partials.labels("skipped").inc()
            return
        self._partial_running = True
        self.tasks.start_soon(self._partial, engine, self.segmenter.current_audio(), self._utterance_seq, token)

    async def _partial(self, engine: WhisperEngine, audio: object, utterance_seq: int, token: object) -> None:
        try:
            with self._metrics.workers_busy.track_inprogress():
                text = await anyio.to_thread.run_sync(engine.transcribe_partial, audio, self.language)
        except Exception:
            log.warning("partial_failed", exc_info=True)  # a partial is a preview: skip it, the final will come
            return
        finally:
            self._transcribe_limiter.release_on_behalf_of(token)
            self._partial_running = False
        if utterance_seq != self._utterance_seq or self._stopping.is_set():
            return
        shown = self._stabilizer.update(text)
        if shown is not None:
            self._metrics.partials.labels("sent").inc()
            await self._send(
                protocol.partial(shown.stable, shown.unstable),
                still_valid=lambda: utterance_seq == self._utterance_seq,
            )
