"""Finals of different sessions that wait at the same time, decoded together in one batch.

A session's final joins the queue here (in the order utterances ended). When a transcription worker
is free (stt/pools.py: finals first), the final at the head takes it, waits up to stt.batch_window_ms
for more finals to join, and takes up to stt.batch_max_size of the queue, oldest first, to that one
worker (no more than its share when other workers are free): one batched encoder pass for all
(stt/batch_decode.py), then each decoded from its own row, its session told as soon as it is done.
Finals that arrive while every worker is busy simply wait together, so under load the batches form
without any window. A batch of one is the plain unbatched call. A final whose session was reset or
closed while it waited is dropped when its batch forms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from prometheus_client import Gauge

from stt.batch_decode import FinalRequest, decode, encode_batch
from stt.engine import Transcript, WhisperEngine

if TYPE_CHECKING:
    from stt.pools import TranscriptionPool


@dataclass(frozen=True)
class Final:
    transcript: Transcript
    started: float
    """time.perf_counter() when its batch started."""
    batch_size: int


@dataclass
class _Entry:
    request: FinalRequest
    current: Callable[[], bool]
    done: anyio.Event = field(default_factory=anyio.Event)
    taken: bool = False
    final: Final | None = None
    error: Exception | None = None


class FinalBatcher:
    def __init__(
        self, pool: TranscriptionPool, max_size: int, window_s: float, busy: Gauge, sessions: Callable[[], int]
    ) -> None:
        """`sessions`: how many live sessions there are (a final waits for others only if there are others)."""
        self._sessions = sessions
        self._pool = pool
        self._max_size = max_size
        self._window_s = window_s
        self._busy = busy
        self._queue: list[_Entry] = []
        self._leading = 0
        self._changed = anyio.Event()

    @property
    def queued(self) -> int:
        """Finals waiting for a batch to take them."""
        return len(self._queue)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def transcribe(self, engine: WhisperEngine, request: FinalRequest, current: Callable[[], bool]) -> Final | None:
        """The utterance transcribed, alone or in a batch; None when `current()` was false as its batch formed.
        Raises what the engine raised (for every final of the batch)."""
        entry = _Entry(request, current)
        self._queue.append(entry)
        self._notify()
        try:
            with self._pool.final_queued():  # uploads and partials wait while a final is queued here
                while not entry.done.is_set():
                    if self._leading < self._pool.size:
                        await self._lead_until_done(engine, entry)
                    else:
                        await self._changed.wait()
        finally:
            if not entry.taken:
                self._queue.remove(entry)  # its session went away while it waited
        if entry.error is not None:
            raise entry.error
        return entry.final

    async def _lead_until_done(self, engine: WhisperEngine, entry: _Entry) -> None:
        """Lead a batch, but stop waiting for a worker once another batch has done this entry."""
        async with anyio.create_task_group() as tasks:

            async def lead() -> None:
                await self._lead(engine)
                tasks.cancel_scope.cancel()

            tasks.start_soon(lead)
            await entry.done.wait()
            tasks.cancel_scope.cancel()  # a batch under way is shielded and finishes first

    async def _lead(self, engine: WhisperEngine) -> None:
        """Take a worker in turn, then the finals queued by then, to it."""
        self._leading += 1
        try:
            async with self._pool.final():
                await self._gather()
                batch = self._take()
                if batch:
                    # Shielded: the other sessions of the batch need their results even if this one closes.
                    with anyio.CancelScope(shield=True), self._busy.track_inprogress():
                        await self._run(engine, batch)
        finally:
            self._leading -= 1
            self._notify()

    async def _gather(self) -> None:
        """Wait up to batch_window_ms for the batch to fill (not at all when batching is off or every live session's
        final is queued already)."""
        if self._max_size == 1 or not self._window_s or self._sessions() <= len(self._queue):
            return
        with anyio.move_on_after(self._window_s):
            while len(self._queue) < min(self._max_size, self._sessions()):
                changed = self._changed
                await changed.wait()

    def _take(self) -> list[_Entry]:
        """The oldest finals, up to batch_max_size, and no more than this worker's share of the queue: the other
        free workers take the rest in parallel."""
        share = math.ceil(len(self._queue) / (1 + self._pool.size - self._pool.busy))
        batch: list[_Entry] = []
        while self._queue and len(batch) < min(self._max_size, share):
            entry = self._queue.pop(0)
            entry.taken = True
            if entry.current():
                batch.append(entry)
            else:
                entry.done.set()  # reset or closed while it waited: no work for it
        return batch

    async def _run(self, engine: WhisperEngine, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        requests = [entry.request for entry in batch]
        try:
            if len(batch) == 1:
                r = requests[0]
                transcript = await anyio.to_thread.run_sync(engine.transcribe, r.audio, r.language, r.should_stop, r.word_timestamps)
                self._finish(batch[0], Final(transcript, started, 1))
                return
            encoded = await anyio.to_thread.run_sync(encode_batch, engine, requests)
            for entry, own in zip(batch, encoded, strict=True):
                # Each session hears its result as soon as its own decoding is done, not at the end of the batch.
                self._finish(entry, Final(await anyio.to_thread.run_sync(decode, engine, own), started, len(batch)))
        except Exception as exc:  # a CTranslate2 error: the utterances of the batch not done yet are lost, not the sessions
            for entry in batch:
                if not entry.done.is_set():
                    entry.error = exc
                    entry.done.set()

    @staticmethod
    def _finish(entry: _Entry, final: Final) -> None:
        entry.final = final
        entry.done.set()
