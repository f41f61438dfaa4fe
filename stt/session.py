"""One live speech-to-text session, protocol-free: audio in, typed events out (stt/events.py).

`async with service.open_session() as session:` owns the session's tasks (its transcription worker
and partials). A protocol feeds it (`feed_audio`, `end`, `reset`, `configure`) and forwards
`session.events()`. One worker per session keeps results in speaking order; transcriptions run in
the service's shared pool. Pauses may end a turn early (stt/turns.py, smart_turn) and start its final
before the turn ends (stt/speculation.py). `drain` (shutdown) transcribes what the session holds and ends the events.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import anyio
from anyio.abc import TaskGroup

from core.config import SttSettings
from core.errors import BadAudio, ModelUnavailable, TooManyPending, TranscriptionFailed
from core.logging import get_logger
from stt.batch_decode import FinalRequest
from stt.chain import AudioChain
from stt.engine import WhisperEngine
from stt.events import ConfigApplied, Heard, Partial, Refused, ResetDone, SessionEvent, Transcribed
from stt.finals import Final
from stt.metrics import SttMetrics
from stt.model import ModelHolder
from stt.partials import ArrivalPace, PartialStabilizer
from stt.pools import Pools
from stt.speculation import Speculation, Speculator
from stt.stream import (
    SAMPLE_RATE,
    BufferLimitReached,
    Event,
    NoSpeech,
    SpeechEnded,
    SpeechStarted,
    Utterance,
    UtteranceSegmenter,
)
from stt.turns import TurnModelHolder, TurnTaker

log = get_logger(__name__)

EVENT_BUFFER = 64
"""Events a session may hold for a slow client; then its audio intake waits (backpressure)."""


@dataclass(frozen=True)
class _Job:
    """An utterance (or a no-speech acknowledgement) waiting for the session's worker."""

    epoch: int
    item: Utterance | NoSpeech
    speech_end: float
    language: str | None
    word_timestamps: bool
    turn: dict[str, float | bool]
    """The transcript's timings of turn detection."""
    speculation: Speculation | None = None
    """A transcription of this utterance already started in its pause (stt/speculation.py)."""


class SttSession:
    def __init__(
        self,
        settings: SttSettings,
        model: ModelHolder,
        pools: Pools,
        metrics: SttMetrics,
        turn_models: TurnModelHolder,
        *,
        sample_rate: int | None = None,
        endpointing: bool = True,
        charge: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._settings = settings
        self._charge = charge
        """Counts each utterance's audio against the client's key (its audio seconds per minute)."""
        self.sample_rate = sample_rate or settings.sample_rate
        """Of the PCM16 this session is fed."""
        self._metrics = metrics
        self._model = model
        self._pools = pools
        self.language = settings.language
        self.word_timestamps = False
        self.partials = settings.partial_interval_ms > 0
        self.chain = AudioChain(settings, self.sample_rate, endpointing=endpointing)
        self.utterances = 0
        self._partial_running = False
        self._last_partial_at = 0.0
        self._pace = ArrivalPace()
        self._utterance_seq = 0
        self._stabilizer = PartialStabilizer()
        self._last_speech_at = 0.0
        # Utterances are bounded by the segmenter's buffer accounting; the item cap also bounds
        # no-speech acknowledgements, which carry no audio.
        shortest = max(settings.min_speech_ms / 1000, 0.032)
        self._queue_items = int(math.ceil(settings.max_buffer_seconds / shortest)) + 16
        self._queue_in, self._queue_out = anyio.create_memory_object_stream[_Job](self._queue_items)
        self._events_in, self._events_out = anyio.create_memory_object_stream[SessionEvent](EVENT_BUFFER)
        self._holding: Utterance | None = None
        self._epoch = 0
        self._stopping = threading.Event()
        self._turns = TurnTaker(settings, turn_models, endpointing=endpointing)
        self._speculator = Speculator(settings, pools.transcribe, metrics, self._stopping.is_set, endpointing=endpointing)
        self._worker_done = anyio.Event()
        self._stack = AsyncExitStack()
        self._tasks: TaskGroup | None = None

    async def __aenter__(self) -> SttSession:
        self._tasks = await self._stack.enter_async_context(anyio.create_task_group())
        self._tasks.start_soon(self._run_worker)
        self._pools.live.add(self.segmenter)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        """Stop work in progress at its next segment boundary; drop everything queued."""
        self._stopping.set()
        self._pools.live.discard(self.segmenter)
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        try:
            return await self._stack.__aexit__(*exc_info)
        finally:
            self._queue_in.close()
            self._queue_out.close()
            self._events_in.close()

    @property
    def segmenter(self) -> UtteranceSegmenter:
        return self.chain.segmenter

    # -- what the client does ---------------------------------------------------------------------

    async def feed_audio(self, pcm16: bytes) -> None:
        if len(pcm16) % 2:
            raise BadAudio(
                f"audio frame has an odd byte count ({len(pcm16)}); PCM16 needs 2 bytes per sample. Frame dropped"
            )
        self._metrics.audio_received.inc(len(pcm16) / 2 / self.sample_rate)
        if not self.chain.accept(pcm16):
            return  # not a whole window yet: only buffered, no model call, no thread hop
        # Scored in one batch with every other session waiting now (stt/vad_batch.py).
        result = await self._pools.vad_batch.score(self.chain.vad, self.chain.take_accepted())
        if self.chain.heard_speech(result):
            self._last_speech_at = time.perf_counter()
        await self._segmented(self.chain.segment(result))
        await self._judge_turn()
        self._maybe_partial()

    async def end(self) -> None:
        self._last_speech_at = time.perf_counter()  # push-to-talk: speech ends when the client says so
        await self._segmented(self.chain.end())

    async def reset(self) -> None:
        self._epoch += 1
        dropped = self.chain.reset()
        self._speculator.drop("reset")
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
        await self._emit(ResetDone(round(dropped, 3)))

    async def configure(self, **given: Any) -> None:
        """Change the options named (language, word_timestamps, partials); the others keep their values."""
        if "language" in given:
            self.language = given["language"]
        if "word_timestamps" in given:
            self.word_timestamps = bool(given["word_timestamps"])
        if "partials" in given:
            self.partials = bool(given["partials"]) and self._settings.partial_interval_ms > 0
        await self._emit(ConfigApplied(self.language, self.word_timestamps, self.partials))

    async def drain(self) -> None:
        """The service is shutting down: take no more input, transcribe the utterance being spoken
        (when it holds speech; silence is dropped without a message), and end the events once every
        pending result is out. The caller bounds the wait."""
        if self.segmenter.in_speech:
            await self._segmented(self.chain.end())
        self._queue_in.close()
        await self._worker_done.wait()
        self._events_in.close()

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Everything the client is to hear, in order; ends after `drain` (or when the session closes).
        A result of audio dropped by a `reset`, or a partial of an utterance that has ended, is dropped
        here, at its turn to be sent."""
        async for event in self._events_out:
            if isinstance(event, Partial) and event.utterance != self._utterance_seq:
                continue
            if isinstance(event, (Transcribed, Heard)) and event.epoch != self._epoch:
                continue
            yield event

    # -- inside ---------------------------------------------------------------------------------

    async def _emit(self, event: SessionEvent) -> None:
        try:
            await self._events_in.send(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the session is closing: nobody is listening any more

    async def _segmented(self, events: list[Event]) -> None:
        """What the segmenter made of the audio, then the speculative final of the pause being heard, if any."""
        await self._dispatch(self._turns.annotate(events))
        self._speculator.prune(self.segmenter)
        assert self._tasks is not None, "audio is fed only inside `async with session`"
        self._speculator.maybe_start(self.segmenter, self._model.engine, self._tasks, self.language, self.word_timestamps)

    async def _judge_turn(self) -> None:
        """With smart_turn, ask the end-of-turn model once per pause; a complete turn ends here and now."""
        model = self._turns.model_due(self.segmenter)
        if model is None:
            return
        mark = self.segmenter.speech_mark
        # The VAD pool: short onnxruntime calls, bounded apart from the transcription workers.
        verdict = await anyio.to_thread.run_sync(model.judge, self.segmenter.current_audio(), limiter=self._pools.vad)
        self._turns.judged(mark, verdict)
        self._metrics.turns.labels("complete" if verdict.complete else "incomplete").inc()
        log.info(
            "turn_judged", complete=verdict.complete, probability=verdict.probability, model_seconds=round(verdict.seconds, 3)
        )
        if verdict.complete:
            await self._segmented(self.segmenter.end_turn())

    async def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, BufferLimitReached):
                log.warning("buffer_limit_reached", held_seconds=event.duration, limit=self._settings.max_buffer_seconds)
                self._metrics.buffer_limit_reached.inc()
                await self._emit(event)
            elif isinstance(event, SpeechStarted):
                await self._emit(event)
            elif isinstance(event, SpeechEnded):
                # Partials of this utterance are void from here on, also one already waiting to be sent.
                self._new_utterance()
                await self._emit(event)
            else:
                await self._queue(event)

    async def _queue(self, item: Utterance | NoSpeech) -> None:
        speech_end = time.perf_counter()
        if isinstance(item, Utterance):
            self._new_utterance()
            if item.reason == "silence":
                speech_end = self._last_speech_at
        # Options are taken now: a config sent later applies to later utterances only.
        job = _Job(self._epoch, item, speech_end, self.language, self.word_timestamps, {})
        if isinstance(item, Utterance):
            speculation = self._speculator.claim(item, self.language, self.word_timestamps)
            job = replace(job, turn=self._turns.timings(item), speculation=speculation)
        try:
            self._queue_in.send_nowait(job)
        except anyio.WouldBlock:
            if isinstance(item, Utterance):
                self.segmenter.transcribed(item)
            error = TooManyPending(f"more than {self._queue_items} results are pending; this one was dropped")
            await self._emit(Refused(error))

    async def _run_worker(self) -> None:
        try:
            await self._work()
        finally:
            self._worker_done.set()

    async def _work(self) -> None:
        async for job in self._queue_out:
            if isinstance(job.item, NoSpeech):
                await self._emit(Heard(job.item, job.epoch))
                continue
            self._holding = job.item
            try:
                await self._transcribe(job)
            except ModelUnavailable as exc:
                await self._emit(Refused(exc, fatal=True))
                return
            except Exception as exc:  # CUDA out of memory, a CTranslate2 error: this utterance is lost, not the session
                log.exception("transcription_failed", audio_seconds=round(job.item.duration, 3))
                await self._emit(Refused(TranscriptionFailed(f"this utterance could not be transcribed: {exc}")))
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
        speculated = await job.speculation.outcome() if job.speculation is not None else None
        if speculated is not None:
            # Its audio is the utterance's, at most less trailing silence: it is reported as the utterance.
            result, waited, batch_size = replace(speculated, duration=utterance.duration), 0.0, 1
        else:
            final = await self._run_final(job, utterance)
            if final is None:
                return
            result, waited, batch_size = final.transcript, final.started - queued_at, final.batch_size
        self.utterances += 1
        latency = time.perf_counter() - job.speech_end
        self._metrics.observe_utterance(result, utterance.reason, waited)
        self._charge(result.duration)
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
        if not result.text:
            # Whisper heard no words: every utterance still ends with exactly one result message.
            await self._emit(Heard(NoSpeech(utterance.duration), job.epoch))
            return
        self._metrics.final_latency.observe(latency)
        timings: dict[str, float | bool] = {
            "speech_end_to_transcript_s": round(latency, 3),
            "queue_wait_s": round(waited, 3),
            "transcribe_s": round(result.transcribe_seconds, 3),
            "real_time_factor": round(result.real_time_factor, 3),
            "speculative": speculated is not None,
            "batch_size": batch_size,
            **job.turn,
        }
        await self._emit(Transcribed(result, utterance, timings, job.epoch))

    async def _run_final(self, job: _Job, utterance: Utterance) -> Final | None:
        """The utterance transcribed in turn, alone or batched with other sessions' finals (stt/finals.py); None
        if it was reset or closed meanwhile (the worker goes to someone who needs it)."""
        engine = await self._model.wait()
        request = FinalRequest(utterance.audio, job.language, job.word_timestamps, self._stopping.is_set)
        final = await self._pools.finals.transcribe(engine, request, lambda: self._current(job))
        self._holding = None
        return final

    def _new_utterance(self) -> None:
        """Partials in flight belong to the utterance just closed: they are dropped, not sent."""
        self._utterance_seq += 1
        self._stabilizer = PartialStabilizer()
        self._pace = ArrivalPace()

    def _maybe_partial(self) -> None:
        if not (self.partials and self.segmenter.speech_confirmed) or self._partial_running:
            return
        if self.segmenter.in_trailing_silence:
            return  # the final may be due any moment: a partial now would only compete with it for the CPU
        if self._pools.transcribe.finals_waiting:
            self._metrics.partials.labels("skipped").inc()
            return  # finals are behind: partials are shed first
        now = time.perf_counter()
        if not self._pace.in_real_time(self.segmenter.utterance_samples / SAMPLE_RATE, now):
            return  # sent at once: its final comes soon anyway, and a partial would take the CPU from it
        if now - self._last_partial_at < self._settings.partial_interval_ms / 1000:
            return
        engine = self._model.engine
        if engine is None:
            return
        self._last_partial_at = now
        # Partials never queue and never take the last free worker: that one is kept for finals.
        # With stt.max_concurrent 1 there are therefore no partials.
        token = object()
        if not self._pools.transcribe.try_partial(token):
            self._metrics.partials.labels("skipped").inc()
            return
        self._partial_running = True
        assert self._tasks is not None, "partials start only inside `async with session`"
        self._tasks.start_soon(self._partial, engine, self.segmenter.current_audio(), self._utterance_seq, token)

    async def _partial(self, engine: WhisperEngine, audio: object, utterance_seq: int, token: object) -> None:
        try:
            with self._metrics.workers_busy.track_inprogress():
                text = await anyio.to_thread.run_sync(engine.transcribe_partial, audio, self.language)
        except Exception:
            log.warning("partial_failed", exc_info=True)  # a partial is a preview: skip it, the final will come
            return
        finally:
            self._pools.transcribe.release_partial(token)
            self._partial_running = False
        if utterance_seq != self._utterance_seq or self._stopping.is_set():
            return
        shown = self._stabilizer.update(text)
        if shown is not None:
            self._metrics.partials.labels("sent").inc()
            await self._emit(Partial(shown.stable, shown.unstable, utterance_seq))
