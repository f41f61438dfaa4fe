"""One live /ws/stt connection: audio -> VAD -> utterances -> the shared transcription pool.

The protocol layer (server.py) hands messages in and supplies `send`; this class owns the order
of results (one worker per session, so transcripts arrive in speaking order) and the cleanup.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

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

Send = Callable[[dict[str, Any]], Awaitable[None]]


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
        self._queue_in, self._queue_out = anyio.create_memory_object_stream[
            tuple[int, Utterance | NoSpeech, float]
        ](self._queue_items)
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
                _, item, _ = self._queue_out.receive_nowait()
            except anyio.WouldBlock:
                break
            if isinstance(item, Utterance):
                dropped += item.duration
                self.segmenter.transcribed(item)
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
                await self._send(protocol.speech_ended(event.at, event.reason))
                continue
            speech_end = time.perf_counter()
            if isinstance(event, Utterance):
                self._new_utterance()
                if event.reason == "silence":
                    speech_end = self._last_speech_at
            try:
                self._queue_in.send_nowait((self._epoch, event, speech_end))
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
        async for epoch, item, speech_end in self._queue_out:
            if epoch != self._epoch:
                continue
            if isinstance(item, NoSpeech):
                await self._send(protocol.no_speech(item.duration))
                continue
            try:
                await self._transcribe(epoch, item, speech_end)
            except ModelUnavailable as exc:
                self.fatal = str(exc)
                self.on_fatal()
                return

    async def _transcribe(self, epoch: int, utterance: Utterance, speech_end: float) -> None:
        queued_at = time.perf_counter()
        engine = await self._model.wait()
        try:
            async with self._transcribe_limiter:
                waited = time.perf_counter() - queued_at
                with self._metrics.workers_busy.track_inprogress():
                    result = await anyio.to_thread.run_sync(
                        engine.transcribe, utterance.audio, self.language, self._stopping.is_set, self.word_timestamps
                    )
        finally:
            self.segmenter.transcribed(utterance)
        self.utterances += 1
        metrics = self._metrics
        metrics.transcribe_seconds.observe(result.transcribe_seconds)
        metrics.real_time_factor.observe(result.real_time_factor)
        metrics.queue_wait.observe(waited)
        metrics.utterance_audio.observe(result.duration)
        metrics.utterances.labels(utterance.reason).inc()
        latency = time.perf_counter() - speech_end
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
        if epoch != self._epoch or self._stopping.is_set():
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
        elif utterance.reason == "end":
            # Whisper judged the audio as no speech: acknowledge the client's end all the same.
            await self._send(protocol.no_speech(utterance.duration))

    def _new_utterance(self) -> None:
        """Partials in flight belong to the utterance just closed: they are dropped, not sent."""
        self._utterance_seq += 1
        self._stabilizer = PartialStabilizer()

    def _maybe_partial(self) -> None:
        if not (self.partials and self.tasks and self.segmenter.speech_confirmed) or self._partial_running:
            return
        now = time.perf_counter()
        if now - self._last_partial_at < self._settings.partial_interval_ms / 1000:
            return
        engine = self._model.engine
        if engine is None:
            return
        self._last_partial_at = now
        limiter = self._transcribe_limiter
        # Partials never queue: they run only on a free worker, and with two or more workers one is
        # always left for finals, so a final never waits behind a partial.
        reserve = 1 if limiter.total_tokens >= 2 else 0
        token = object()
        if limiter.borrowed_tokens + reserve >= limiter.total_tokens:
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
        finally:
            self._transcribe_limiter.release_on_behalf_of(token)
            self._partial_running = False
        if utterance_seq != self._utterance_seq or self._stopping.is_set():
            return
        shown = self._stabilizer.update(text)
        if shown is not None:
            self._metrics.partials.labels("sent").inc()
            await self._send(protocol.partial(shown.stable, shown.unstable))
