"""Transcribing a whole uploaded file, protocol-free (the OpenAI routes are one adapter over it).

The file is decoded with PyAV (any container and codec), voice activity detection skips its silence,
and Whisper decodes it window by window in the service's one transcription pool: each window takes a
worker only when no live final is waiting (stt/pools.py), so a long file never starves live sessions.
At most stt.max_uploads files are transcribed at once; each holds its decoded audio in memory.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import numpy as np

from core.audio import decode_file
from core.config import SttSettings
from core.errors import TooManyPending
from core.logging import get_logger
from core.slots import slot_or_refuse
from stt.engine import WHISPER_SAMPLE_RATE, FileInfo, FileRequest, Segment, WhisperEngine
from stt.metrics import SttMetrics
from stt.pools import TranscriptionPool

log = get_logger(__name__)

UPLOAD_RETRY_AFTER_S = 5


@dataclass
class FileTranscription:
    """One file being transcribed: its info at once, its segments as they are decoded."""

    info: FileInfo
    request: FileRequest
    _segments: Iterator[Segment]
    _pool: TranscriptionPool
    done: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(segment.text for segment in self.done if segment.text).strip()

    async def segments(self) -> AsyncIterator[Segment]:
        """Each segment once decoded; a worker is held only while a window decodes."""
        while True:
            async with self._pool.window():
                segment = await anyio.to_thread.run_sync(next, self._segments, None)
            if segment is None:
                return
            self.done.append(segment)
            log.debug("file_segment", id=segment.id, end=segment.end)
            yield segment

    def close(self) -> None:
        close = getattr(self._segments, "close", None)
        if close is not None:
            close()


class FileTranscriber:
    def __init__(
        self,
        settings: SttSettings,
        pool: TranscriptionPool,
        metrics: SttMetrics,
        charge: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.settings = settings
        self.charge = charge
        """Counts each file's audio against the client's key (its audio seconds per minute)."""
        self.pool = pool
        self.metrics = metrics
        self._uploads = anyio.CapacityLimiter(settings.max_uploads)

    @property
    def running(self) -> int:
        """Files being transcribed now (each holds an upload slot)."""
        return int(self._uploads.borrowed_tokens)

    async def decode(self, data: bytes) -> np.ndarray:
        """16 kHz mono float32 of a file, decoded off the event loop."""
        return await anyio.to_thread.run_sync(
            decode_file, data, WHISPER_SAMPLE_RATE, self.settings.max_upload_seconds, "stt.max_upload_seconds"
        )

    def slot(self) -> AbstractAsyncContextManager[None]:
        """One of stt.max_uploads, held inside the block: taken before an upload is read (its bytes are
        held in memory until it is transcribed), or TooManyPending when every one is taken."""
        return slot_or_refuse(
            self._uploads,
            lambda: TooManyPending(
                f"{self.settings.max_uploads} files are being transcribed already (stt.max_uploads); try again shortly",
                retry_after_s=UPLOAD_RETRY_AFTER_S,
            ),
        )

    @asynccontextmanager
    async def open(self, engine: WhisperEngine, data: bytes, request: FileRequest) -> AsyncIterator[FileTranscription]:
        """`async with transcriber.open(...) as transcription`, inside the block of a `slot()`."""
        started = time.perf_counter()
        transcription: FileTranscription | None = None
        outcome = "error"
        try:
            audio = await self.decode(data)
            # Language detection and the voice activity pass run before the first window: a worker too.
            async with self.pool.window():
                segments, info = await anyio.to_thread.run_sync(engine.transcribe_file, audio, request)
            del audio
            transcription = FileTranscription(info, request, segments, self.pool)
            yield transcription
            outcome = "ok"
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"  # the client left (or the service stops)
            raise
        finally:
            if transcription is not None:
                transcription.close()
                self._report(transcription, time.perf_counter() - started, outcome)
            self.metrics.files.labels(outcome).inc()

    def _report(self, transcription: FileTranscription, seconds: float, outcome: str) -> None:
        info = transcription.info
        self.metrics.file_audio.observe(info.duration)
        self.charge(info.duration)
        log.info(
            "file_transcribed",
            outcome=outcome,
            task=transcription.request.task,
            audio_seconds=info.duration,
            speech_seconds=info.speech_duration,
            segments=len(transcription.done),
            seconds=round(seconds, 3),
            rtf=round(seconds / info.duration, 4) if info.duration else None,
            language=info.language,
        )
