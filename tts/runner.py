"""Runs one turn: the text, or the LLM's reply as it streams, cut into fragments (core.text.SpeechSplitter)
and each fragment synthesized in the worker pool as soon as it is complete.

Every protocol's turn runs here, so every protocol speaks the same fragments, sample for sample; the
reply-length rule (llm.max_reply_chars) is SpeechSplitter.cut_off, applied here once. A turn takes a
worker per fragment, so it holds none while it waits for the LLM; only its first fragment can get
EngineBusy. A cancelled turn stops its LLM request at once and its synthesis before the next sentence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import numpy as np
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from core.audio import float32_to_pcm16, resample
from core.config import Settings
from core.errors import EmptyText, InternalError, LlmError, ServiceError
from core.llm import LlmClient, LlmStats, chat_messages
from core.logging import get_logger
from core.text import SpeechSplitter
from tts.engines import AudioChunk, Engine
from tts.segments import Fragment, Segment
from tts.turn import AudioPiece, Cancelled, ReplyText, Turn, TurnRequest
from tts.workers import WorkerPool

log = get_logger(__name__)

FRAGMENT_QUEUE = 64
"""Fragments cut from the reply but not yet synthesized, per turn (the reply itself is bounded by
llm.max_reply_chars; this only bounds how far the LLM may run ahead of synthesis)."""

NOTHING_SPEAKABLE = "the text has nothing speakable (only punctuation, symbols, emoji, markup or code)"


class TurnRunner:
    def __init__(self, settings: Settings, pool: WorkerPool, llm: LlmClient) -> None:
        self.settings = settings
        self.pool = pool
        self.llm = llm

    def splitter(self, request: TurnRequest) -> SpeechSplitter:
        """The early first fragment (tts.first_fragment_*) starts speaking before the first sentence is all
        written (a reply, streamed text) or synthesized. By default a text given whole is cut at its
        sentence ends only, so it costs no extra synthesis; an adapter whose client hears the audio as it
        comes may ask for it (TurnRequest.early_first). Each request is cut one way, whatever the protocol."""
        tts = self.settings.tts
        early = request.early_first
        if early is None:
            early = request.reply or request.text_stream is not None
        if not early:
            return SpeechSplitter()
        return SpeechSplitter(tts.first_fragment_min_words, tts.first_fragment_max_words)

    async def run(self, turn: Turn, engine: Engine, others: Mapping[str, Engine] | None = None) -> None:
        """The whole life of `turn`, spoken by `engine` (and `others`, by name, for the segments that name
        another); never raises but for the service's own cancellation (shutdown)."""
        counters = self.pool.counters
        counters.turns += 1
        try:
            with anyio.CancelScope() as scope:
                turn.started(scope)
                try:
                    await self._speak(turn, engine, others or {})
                except ServiceError as exc:
                    await turn.fail(exc)
                except Cancelled:
                    pass
                except Exception:
                    log.exception("turn_failed")
                    await turn.fail(InternalError())
        except anyio.get_cancelled_exc_class():
            turn.cancel_event.set()  # the service itself is stopping: the turn ends cancelled, not complete
            raise
        finally:
            counters.turns -= 1
            turn.finished()
            if turn.outcome == "cancelled":
                counters.cancelled += 1
                log.info("turn_cancelled", fragments=len(turn.fragments), chunks=turn.chunks)
            elif turn.outcome == "ok":
                counters.served += 1

    async def _speak(self, turn: Turn, engine: Engine, others: Mapping[str, Engine]) -> None:
        failure: BaseException | None = None
        send, receive = anyio.create_memory_object_stream[Fragment](FRAGMENT_QUEUE)
        producer_failure: list[BaseException] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._produce, turn, send, producer_failure)
            try:
                with receive:
                    await self._speak_fragments(engine, receive, turn, others)
                if producer_failure:
                    raise producer_failure[0]
                if turn.chunks == 0:
                    # Text the splitter kept that the engine still spoke as silence (a lone "|"): refused
                    # like text with nothing speakable, not answered with an empty recording.
                    raise self._unspeakable_reply() if turn.request.reply else EmptyText(NOTHING_SPEAKABLE)
                await self._emit_pause(turn)
                await turn.emit(ReplyText(turn.text, True))
            except Exception as exc:  # raised below, outside the task group (no exception group)
                failure = exc
                tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _produce(self, turn: Turn, send: ObjectSendStream[Fragment], failure: list[BaseException]) -> None:
        """Cut the text (or the LLM reply, as it streams) into fragments and queue them for synthesis.
        A failure is left in `failure` for the consumer, which raises it after the fragments before it."""
        splitter = self.splitter(turn.request)
        timings = turn.timings
        request = turn.request

        async def put(fragments: Iterable[str], segment: Segment | None = None) -> None:
            voice, speed = (request.voice, request.speed) if segment is None else (segment.voice, segment.speed)
            speaker = request.speaker if segment is None else segment.speaker
            engine = None if segment is None else segment.engine
            for text in fragments:
                if timings.first_fragment_at is None:
                    timings.first_fragment_at = time.perf_counter()
                await send.send(Fragment(text, voice, speed, speaker, engine=engine))

        try:
            if request.segments is not None:
                spoken = await self._produce_segments(request.segments, send, put)
            elif request.text_stream is not None:
                async for piece in request.text_stream:
                    await put(splitter.feed(piece))
                await put(splitter.flush())
            elif request.reply:
                await self._produce_reply(turn, splitter, put)
            else:
                await put(splitter.feed(request.text))
                await put(splitter.flush())
            if (spoken if request.segments is not None else splitter.fragments) == 0:
                raise self._unspeakable_reply() if request.reply else EmptyText(NOTHING_SPEAKABLE)
        except Exception as exc:
            failure.append(exc)
        finally:
            send.close()

    @staticmethod
    async def _produce_segments(
        segments: tuple[Segment, ...],
        send: ObjectSendStream[Fragment],
        put: Callable[[Iterable[str], Segment], Awaitable[None]],
    ) -> int:
        """Each segment's sentences, its pause after its last one (or alone); the fragments spoken."""
        spoken = 0
        for segment in segments:
            splitter = SpeechSplitter()
            sentences = [*splitter.feed(segment.text), *splitter.flush()]
            spoken += len(sentences)
            await put(sentences[:-1], segment)
            last = sentences[-1] if sentences else ""
            if last or segment.pause_after_ms:
                await send.send(
                    Fragment(last, segment.voice, segment.speed, segment.speaker, segment.pause_after_ms, segment.engine)
                )
        return spoken

    async def _produce_reply(
        self, turn: Turn, splitter: SpeechSplitter, put: Callable[[Iterable[str]], Awaitable[None]]
    ) -> None:
        llm = self.settings.llm
        timings = turn.timings
        stats = timings.llm = LlmStats()
        limit = llm.max_reply_chars
        length = 0
        said_something = cut_off = False
        messages = chat_messages(llm.system_prompt, turn.history, turn.request.text)
        stream = self.llm.stream_reply(messages, stats)
        try:
            with anyio.fail_after(llm.timeout_s):
                async for piece in stream:
                    said_something = said_something or bool(piece.strip())
                    if length + len(piece) > limit:
                        piece, cut_off = piece[: limit - length], True
                    length += len(piece)
                    await put(splitter.feed(piece))
                    if cut_off:
                        break
        except TimeoutError:
            raise self.llm.timeout_error() from None
        finally:
            # Closing the stream closes the HTTP response: the LLM stops generating. Shielded, so it
            # happens even when the turn was cancelled.
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[attr-defined]
            timings.llm_done_at = time.perf_counter()
        if not said_something:
            raise LlmError(f"the model {llm.model!r} returned an empty reply; try again or change llm.model")
        if cut_off:
            log.warning("llm_reply_truncated", chars=length, limit=limit)
            await put(splitter.cut_off())
        else:
            await put(splitter.flush())

    def _unspeakable_reply(self) -> LlmError:
        # The model's fault, not the client's: its own text was fine (that would be EmptyText, 422).
        return LlmError(
            f"the model {self.settings.llm.model!r}'s reply had nothing speakable (only code or symbols); "
            "try again or adjust llm.system_prompt"
        )

    async def _speak_fragments(
        self, engine: Engine, fragments: ObjectReceiveStream[Fragment], turn: Turn, others: Mapping[str, Engine]
    ) -> None:
        """Each fragment as it is cut. The worker is kept from one fragment to the next while the next is
        already cut and the client keeps up (a text given whole is spoken in one go, as the peers do);
        it is given back while the turn waits for its LLM or its client, so others use it meanwhile."""
        holding = False
        try:
            async for fragment in fragments:
                if fragment.text:
                    turn.fragments.append(fragment.text)
                    await turn.emit(ReplyText(turn.text, False))
                    if not holding:
                        # tts.queue_timeout_s is the turn's admission: only its first synthesis can be refused.
                        turn.timings.queue_waits.append(
                            await self.pool.acquire(turn.timings.started, timeout=not turn.timings.queue_waits)
                        )
                        holding = True
                    else:
                        turn.timings.queue_waits.append(0.0)
                    speaker = engine if fragment.engine is None else others.get(fragment.engine, engine)
                    result, seconds = await self._synthesize(speaker, fragment, turn)
                    # Kept only if this audio and the next fragment's text go on at once: a client that stops
                    # reading must not hold a worker while its turn waits to hand them on.
                    if not (fragments.statistics().current_buffer_used and turn.can_emit(2)):
                        self.pool.release()
                        holding = False
                    await self._emit_audio(fragment.text, turn, result, seconds)
                turn.pending_pause_ms += fragment.pause_after_ms
        finally:
            if holding:
                self.pool.release()

    async def _synthesize(self, engine: Engine, fragment: Fragment, turn: Turn) -> tuple[Any, float]:
        started = time.perf_counter()
        # Not abandoned on cancel: Turn.cancel sets the event first, the thread stops at its next
        # sentence, and only then is the worker given back.
        result = await self.pool.run(synthesize, engine, fragment, turn.cancel_event, turn.sample_rate)
        return result, time.perf_counter() - started

    async def _emit_audio(self, fragment: str, turn: Turn, result: Any, seconds: float) -> None:
        timings = turn.timings
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
        await self._emit_pause(turn)
        if timings.first_audio_at is None:
            timings.first_audio_at = time.perf_counter()
        piece = AudioPiece(turn.chunks, fragment, rate, pcm16, seconds)
        turn.chunks += 1
        await turn.emit(piece)

    @staticmethod
    async def _emit_pause(turn: Turn) -> None:
        """The silence of the pauses since the last audio, exact to the sample. It waits for the turn's
        first audio, whose rate is the turn's (a pause before any words is heard before them all the same)."""
        rate, ms = turn.sample_rate, turn.pending_pause_ms
        if not ms or rate is None:
            return
        turn.pending_pause_ms = 0
        samples = round(ms * rate / 1000)
        turn.timings.paused_s += samples / rate
        piece = AudioPiece(turn.chunks, "", rate, bytes(2 * samples), 0.0)
        turn.chunks += 1
        await turn.emit(piece)


def synthesize(
    engine: Engine, fragment: Fragment, cancel: threading.Event, rate: int | None = None
) -> tuple[np.ndarray, int, bytes] | None:
    """Runs in a worker thread: the fragment's audio (at `rate`, default the first chunk's), or None when
    cancelled (checked before the fragment and after every chunk)."""
    if cancel.is_set():
        return None
    chunks: list[AudioChunk] = []
    generator = engine.synthesize(fragment.text, fragment.voice, fragment.speed, fragment.speaker)
    try:
        for chunk in generator:
            chunks.append(chunk)
            if cancel.is_set():
                return None
    finally:
        close = getattr(generator, "close", None)
        if close:
            close()
    return assemble(chunks, rate)


EMPTY_RATE = 22050
"""Sample rate reported for a synthesis that produced no audio at all."""


def assemble(chunks: list[AudioChunk], rate: int | None = None) -> tuple[np.ndarray, int, bytes]:
    """One array at `rate` (default: the first chunk's), and its PCM16 bytes (built here, in the worker,
    not on the loop)."""
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate or EMPTY_RATE, b""
    rate = rate or chunks[0].sample_rate
    parts = [
        chunk.samples if chunk.sample_rate == rate else resample(chunk.samples, chunk.sample_rate, rate)
        for chunk in chunks
    ]
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    return samples, rate, float32_to_pcm16(samples)
