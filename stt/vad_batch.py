"""Voice activity of every live session scored together: one model call and one thread hop per batch.

A session that has a whole window waiting hands its audio to `VadBatcher.score` and waits. When a VAD
worker (stt.vad_workers) is free, the waiting sessions (up to stt.vad_batch_max_size) go to it as
one batch (stt/vad.py `score_batch`); those that arrive while it runs form the next batch. No batch
waits for more sessions to arrive: at low load each session is scored at once, and under load the
batches grow by themselves, which is what keeps the intake in step with many real-time streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import numpy as np

from stt.vad import StreamingVad, VadResult, score_batch


@dataclass
class _Request:
    vad: StreamingVad
    audio: np.ndarray
    done: anyio.Event = field(default_factory=anyio.Event)
    result: VadResult | None = None
    error: BaseException | None = None


class VadBatcher:
    def __init__(self, limiter: anyio.CapacityLimiter, max_batch: int) -> None:
        self._limiter = limiter
        self._max_batch = max_batch
        self._waiting: list[_Request] = []
        self._leading = 0
        self._changed = anyio.Event()
        self.batches = 0
        """Model batches run so far (with `sessions_scored`: the mean batch size, for the benchmarks)."""
        self.sessions_scored = 0

    @property
    def waiting(self) -> int:
        """Sessions waiting for a batch to take them."""
        return len(self._waiting)

    async def score(self, vad: StreamingVad, audio: np.ndarray) -> VadResult:
        """`audio` scored with `vad`'s state, in a batch with the other sessions waiting now. One call per
        session at a time (a session awaits its result before it sends more)."""
        request = _Request(vad, audio)
        self._waiting.append(request)
        while not request.done.is_set():
            if self._leading < self._limiter.total_tokens and self._waiting:
                await self._run_batch()
            else:
                changed = self._changed
                await changed.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def _run_batch(self) -> None:
        """This caller takes the sessions waiting now to a worker and hands each its result."""
        batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
        self._leading += 1
        try:
            # Shielded: a batch takes milliseconds, and the other sessions in it must get their results even
            # if this caller's session closes meanwhile (its cancellation lands at its next await).
            with anyio.CancelScope(shield=True):
                results = await anyio.to_thread.run_sync(
                    score_batch, [r.vad for r in batch], [r.audio for r in batch], limiter=self._limiter
                )
        except Exception as exc:  # onnxruntime failed: every session of the batch hears it
            for request in batch:
                request.error = exc
                request.done.set()
            raise
        finally:
            self._leading -= 1
            self._changed.set()
            self._changed = anyio.Event()
        self.batches += 1
        self.sessions_scored += len(batch)
        for request, result in zip(batch, results, strict=True):
            request.result = result
            request.done.set()
