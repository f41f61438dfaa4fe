"""Speculative finals: the final transcription of an utterance starts when its pause begins, not at its end.

Once a pause reaches stt.turn_min_silence_ms, the audio the utterance would hold if it closed now is
transcribed on a free worker. If the turn then ends in that same pause, the final is that result (or waits
for it to finish), so the endpoint silence and the transcription overlap. If speech resumes, the result is
dropped: it was never sent, and the utterance goes on.

Why the result is the final's: a pause only appends silence, and the segmenter keeps at most speech_pad of
it (`closing_audio`), so the speculated audio is the final's audio, or that audio less some trailing
silence, which holds no words. A pause is recognised by the utterance's `speech_mark`, which changes as soon
as a window of speech arrives, however the audio is framed.

It never delays another session's final: like a partial it takes a worker only when one is free and never
the last (TranscriptionPool.try_partial); with stt.max_concurrent 1 there is no speculation. Nor does it run on
a pause whose audio arrives faster than real time (a recording sent at once): the rest of the endpoint silence
is then already on its way, so a head start gains nothing, and a dropped speculation would only take CPU from
the final (on two cores it nearly doubled the final's transcription time in bench/stt_bench.py's fast stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import numpy as np
from anyio.abc import TaskGroup

from core.config import SttSettings
from core.logging import get_logger
from stt.engine import Transcript, WhisperEngine
from stt.metrics import SttMetrics
from stt.partials import MAX_PACE
from stt.pools import TranscriptionPool
from stt.stream import Utterance, UtteranceSegmenter
from stt.turns import pause_windows, paused_long_enough

log = get_logger(__name__)


@dataclass
class Speculation:
    mark: tuple[float, float]
    """The utterance's (start, speech_seconds) when it started: still the same at its close, or dropped."""
    audio: np.ndarray
    language: str | None
    word_timestamps: bool
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Transcript | None = None
    """None when the transcription failed or was stopped."""
    dropped: bool = False

    async def outcome(self) -> Transcript | None:
        await self.done.wait()
        return self.result


class Speculator:
    """At most one speculation per session at a time: the one on the pause being heard."""

    def __init__(
        self, stt: SttSettings, pool: TranscriptionPool, metrics: SttMetrics, stopping: Callable[[], bool], *, endpointing: bool
    ) -> None:
        self._enabled = stt.speculative_finals and endpointing
        self._windows = pause_windows(stt)
        self._pool = pool
        self._metrics = metrics
        self._stopping = stopping
        self._current: Speculation | None = None
        self._pause: tuple[tuple[float, float], float, float] | None = None
        """(speech_mark, trailing silence, perf_counter) when the current pause was first heard."""

    def maybe_start(
        self,
        segmenter: UtteranceSegmenter,
        engine: WhisperEngine | None,
        tasks: TaskGroup,
        language: str | None,
        word_timestamps: bool,
    ) -> None:
        """Start transcribing the pause being heard, once it is long enough and a worker is free."""
        if not self._enabled or engine is None or not segmenter.in_trailing_silence:
            return
        if not self._in_real_time(segmenter) or not paused_long_enough(segmenter, self._windows):
            return
        if self._current is not None and self._current.mark == segmenter.speech_mark:
            return  # this pause is being transcribed already
        token = object()
        if not self._pool.try_partial(token):
            self._metrics.speculative.labels("skipped").inc()
            return
        speculation = Speculation(segmenter.speech_mark, segmenter.closing_audio(), language, word_timestamps)
        self._current = speculation
        tasks.start_soon(self._run, engine, speculation, token)

    def _in_real_time(self, segmenter: UtteranceSegmenter) -> bool:
        """Whether the pause is arriving at most MAX_PACE times faster than it is spoken."""
        now, mark, silence = time.perf_counter(), segmenter.speech_mark, segmenter.trailing_silence_seconds
        if self._pause is None or self._pause[0] != mark:
            self._pause = (mark, silence, now)
        _, first_heard, heard_at = self._pause
        return now - heard_at >= (silence - first_heard) / MAX_PACE

    async def _run(self, engine: WhisperEngine, speculation: Speculation, token: object) -> None:
        def stop() -> bool:
            return speculation.dropped or self._stopping()

        try:
            with self._metrics.workers_busy.track_inprogress():
                speculation.result = await anyio.to_thread.run_sync(
                    engine.transcribe, speculation.audio, speculation.language, stop, speculation.word_timestamps
                )
        except Exception:
            # Only a head start is lost: the final transcribes the utterance itself.
            log.warning("speculative_final_failed", exc_info=True)
        finally:
            self._pool.release_partial(token)
            speculation.done.set()

    def claim(self, utterance: Utterance, language: str | None, word_timestamps: bool) -> Speculation | None:
        """The speculation whose result is this utterance's final, taken off the session; None if there is none."""
        speculation, self._current = self._current, None
        if speculation is None:
            return None
        same_pause = utterance.reason == "silence" and speculation.mark == (utterance.start, utterance.speech_seconds)
        if same_pause and (speculation.language, speculation.word_timestamps) == (language, word_timestamps):
            self._metrics.speculative.labels("used").inc()
            return speculation
        self._drop(speculation, "utterance_changed")
        return None

    def prune(self, segmenter: UtteranceSegmenter) -> None:
        """Drop the speculation if speech resumed after it started (the user goes on speaking)."""
        if self._current is not None and self._current.mark != segmenter.speech_mark:
            self.drop("speech_resumed")

    def drop(self, why: str) -> None:
        if self._current is not None:
            self._drop(self._current, why)
            self._current = None

    def _drop(self, speculation: Speculation, why: str) -> None:
        speculation.dropped = True  # a transcription in progress stops at its next segment
        self._metrics.speculative.labels("dropped").inc()
        log.info("speculative_final_dropped", reason=why, audio_seconds=round(len(speculation.audio) / 16000, 3))
