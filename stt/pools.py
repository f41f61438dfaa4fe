"""The STT service's shared worker pools, and who goes first in the transcription pool.

Three kinds of work share stt.max_concurrent transcription workers:
- a live session's final transcript: waits its turn (first come, first served among finals), and finals
  waiting together share one worker as a batch (stt/finals.py);
- a partial transcript: only when a worker is free and never the last one (it never queues);
- a file upload (/v1/audio/transcriptions): one window of the file at a time, each window taking a
  worker only when no final is waiting. A final therefore waits for at most one window of an upload,
  however long the file: live users are never starved by a file, and the file still uses every worker
  left idle by them.

The backlog (speech of all live sessions waiting for or in transcription) is what admission looks at:
past stt.max_backlog_seconds a new session is refused (1013) instead of joining a queue that is behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
from prometheus_client import Gauge

from core.config import SttSettings
from stt.finals import FinalBatcher
from stt.stream import SAMPLE_RATE, UtteranceSegmenter
from stt.vad_batch import VadBatcher


class TranscriptionPool:
    def __init__(self, size: int) -> None:
        self._limiter = anyio.CapacityLimiter(size)
        self._finals_waiting = 0
        self._changed = anyio.Event()

    @property
    def size(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def busy(self) -> int:
        return int(self._limiter.borrowed_tokens)

    @property
    def finals_waiting(self) -> int:
        return self._finals_waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @contextmanager
    def final_queued(self) -> Iterator[None]:
        """A live final is queued for a batch (stt/finals.py): it counts as waiting, so uploads and partials yield."""
        self._finals_waiting += 1
        try:
            yield
        finally:
            self._finals_waiting -= 1
            self._notify()

    @asynccontextmanager
    async def final(self) -> AsyncIterator[None]:
        """A worker for a live final: in arrival order, ahead of every upload window."""
        self._finals_waiting += 1
        try:
            await self._limiter.acquire()
        finally:
            self._finals_waiting -= 1
        try:
            yield
        finally:
            self._limiter.release()
            self._notify()

    def try_partial(self, token: object) -> bool:
        """A worker for a partial, at once or not at all; never the last free one (kept for finals)."""
        if self._limiter.borrowed_tokens + 1 >= self._limiter.total_tokens:
            return False
        try:
            self._limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            return False
        return True

    def release_partial(self, token: object) -> None:
        self._limiter.release_on_behalf_of(token)
        self._notify()

    async def trim_when_idle(self, trim: Callable[[], object], idle_s: float) -> None:
        """Run `trim` in a thread once no transcription has run for `idle_s` since the last one finished (the
        memory the workers freed goes back to the system: core/memory.py). Runs until cancelled."""
        changed = self._changed
        while True:
            await changed.wait()  # a transcription finished
            while await self._finishes_within(idle_s):
                pass
            changed = self._changed
            if self.busy == 0:
                await anyio.to_thread.run_sync(trim)
            # A transcription that finished during the trim is waited for again from here (`changed` is set).

    async def _finishes_within(self, seconds: float) -> bool:
        changed = self._changed
        with anyio.move_on_after(seconds):
            await changed.wait()
            return True
        return False

    @asynccontextmanager
    async def window(self) -> AsyncIterator[None]:
        """A worker for one window of an upload, once no live final waits for one."""
        token = object()
        while True:
            changed = self._changed
            if self._finals_waiting == 0 and self._limiter.available_tokens >= 1:
                try:
                    self._limiter.acquire_on_behalf_of_nowait(token)
                    break
                except anyio.WouldBlock:
                    pass
            await changed.wait()
        try:
            yield
        finally:
            self._limiter.release_on_behalf_of(token)
            self._notify()


@dataclass(frozen=True)
class Pools:
    """The service's shared worker pools, and the sessions that use them."""

    transcribe: TranscriptionPool
    vad: anyio.CapacityLimiter
    vad_batch: VadBatcher
    finals: FinalBatcher
    live: set[UtteranceSegmenter] = field(default_factory=set)
    """The segmenter of every open session: each knows the audio it holds for transcription."""

    @classmethod
    def sized(cls, stt: SttSettings, busy: Gauge) -> Pools:
        """From the config; `busy`: the gauge of transcriptions running."""
        vad = anyio.CapacityLimiter(stt.vad_workers)
        transcribe = TranscriptionPool(stt.max_concurrent)
        live: set[UtteranceSegmenter] = set()
        finals = FinalBatcher(transcribe, stt.batch_max_size, stt.batch_window_ms / 1000, busy, lambda: len(live))
        return cls(transcribe, vad, VadBatcher(vad, stt.vad_batch_max_size), finals, live)

    def backlog_seconds(self) -> float:
        """Seconds of speech cut into utterances and not transcribed yet, over all open sessions."""
        return sum(segmenter.queued_samples for segmenter in self.live) / SAMPLE_RATE
