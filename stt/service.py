"""The STT service core: the one protocol-free API every speech-to-text protocol calls.

- `open_session()`: a live session (stt/session.py): feed audio, end, reset, configure; typed events out;
- `upload_slot()`, then `transcribe_file(data, request)`: a whole uploaded file, in the same worker pool
  (stt/files.py), at most stt.max_uploads at once;
- `health()`, and the one model and the shared worker pools behind them.

One instance per process, shared by every client of every protocol. It knows no HTTP or WebSocket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from faster_whisper.vad import get_vad_model

from core import __version__, memory
from core.access import Access
from core.config import Settings
from core.errors import Overloaded, ServiceError
from core.logging import get_logger
from stt import vad
from stt.engine import FileRequest
from stt.files import FileTranscriber, FileTranscription
from stt.metrics import SttMetrics
from stt.model import ModelHolder
from stt.pools import Pools
from stt.session import SttSession
from stt.turns import TurnModelHolder

log = get_logger(__name__)


class SttService:
    def __init__(self, settings: Settings, *, connections: Callable[[], int] = lambda: 0) -> None:
        self.settings = settings
        stt = settings.stt
        self.model = ModelHolder(settings)
        self.turn_models = TurnModelHolder(settings)
        self.metrics = SttMetrics(connections)
        self.pools = Pools.sized(stt, self.metrics.workers_busy)
        self.access = Access(settings.auth)
        self.files = FileTranscriber(stt, self.pools.transcribe, self.metrics, self.access.quotas.charge_audio)
        self._connections = connections
        self.listeners: dict[str, Callable[[], dict[str, Any]]] = {}
        """Reports of the protocols that listen on ports of their own (Wyoming), for /health."""

    @property
    def model_name(self) -> str:
        """The model's name, never its directory: a client has no business knowing the server's paths."""
        return Path(self.settings.stt.model).name

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SttService]:
        """The service's lifetime: the model loads in the background while the service already answers."""
        # Before any model allocates: both only apply to allocations (and threads) that come later.
        memory.limit_arenas(self.settings.stt.malloc_arena_max)
        if not self.settings.stt.mkl_buffer_cache:
            memory.drop_mkl_buffer_cache()
        # Silero VAD ships inside faster-whisper and loads in a blink; loading it before serving keeps
        # the first session's ONNX load off the event loop.
        await anyio.to_thread.run_sync(get_vad_model)
        await anyio.to_thread.run_sync(vad.load)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._load_model)
            tasks.start_soon(self.turn_models.load)
            if (idle_s := self.settings.stt.trim_memory_after_s) and memory.trim_available():
                tasks.start_soon(self.pools.transcribe.trim_when_idle, memory.trim, idle_s)
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()

    async def _load_model(self) -> None:
        await self.model.load()
        if self.model.engine is not None:
            self.metrics.model_loaded.set(1)

    def open_session(self, *, sample_rate: int | None = None, endpointing: bool = True) -> SttSession:
        """A new live session; use it as `async with service.open_session() as session`. `sample_rate`: of
        the PCM16 it is fed (default stt.sample_rate); `endpointing` False: the client ends each utterance
        (a silence does not)."""
        return SttSession(
            self.settings.stt,
            self.model,
            self.pools,
            self.metrics,
            self.turn_models,
            sample_rate=sample_rate,
            endpointing=endpointing,
            charge=self.access.quotas.charge_audio,
        )

    def upload_slot(self) -> AbstractAsyncContextManager[None]:
        """`async with service.upload_slot()`: one of stt.max_uploads, taken before an upload is read and
        held while it is transcribed (TooManyPending when all are taken)."""
        return self.files.slot()

    @asynccontextmanager
    async def transcribe_file(self, data: bytes, request: FileRequest) -> AsyncIterator[FileTranscription]:
        """`async with service.transcribe_file(data, request) as transcription`, inside `upload_slot()`: a whole
        file in any format (stt/files.py); its segments are decoded as `transcription.segments()` is
        iterated. Raises ModelUnavailable, BadAudio or RequestTooLarge."""
        engine = await self.model.wait()
        async with self.files.open(engine, data, request) as transcription:
            yield transcription

    def admission_error(self) -> ServiceError | None:
        """Overloaded when the speech waiting for transcription is past stt.max_backlog_seconds: a new session
        would only queue behind it (a WebSocket gets 1013). Sessions already open go on, each bounded by its
        own stt.max_buffer_seconds."""
        backlog, limit = self.pools.backlog_seconds(), self.settings.stt.max_backlog_seconds
        if backlog < limit:
            return None
        return Overloaded(
            f"transcription is behind: {backlog:.1f} s of speech wait for it (stt.max_backlog_seconds is {limit:g}); "
            "try again later"
        )

    def health(self) -> dict[str, Any]:
        stt = self.settings.stt
        engine = self.model.engine
        return {
            "status": "ok" if engine else "degraded",
            "whisper_loaded": engine is not None,
            "loading": self.model.loading,
            "error": self.model.error,
            "environment": self.settings.environment,
            "model": self.model_name,
            "device": engine.loaded.device if engine else stt.device,
            "compute_type": engine.loaded.compute_type if engine else stt.compute_type,
            "connections": self._connections(),
            "max_connections": stt.max_connections,
            "uploads": {"running": self.files.running, "max_uploads": stt.max_uploads},
            "backlog_seconds": round(self.pools.backlog_seconds(), 3),
            "turn_detection": self.turn_models.health(),
            **{name: report() for name, report in self.listeners.items()},
            "version": __version__,
        }
