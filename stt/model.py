"""The process's one Whisper model: loaded in the background (so /health answers during a first
download), shared by every session of every protocol, and the reason when it could not be loaded."""

from __future__ import annotations

from pathlib import Path

import anyio

from core.config import PROJECT_ROOT, Settings
from core.errors import ModelUnavailable
from core.logging import get_logger
from stt.engine import ModelLoadError, WhisperEngine

log = get_logger(__name__)


class ModelHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: WhisperEngine | None = None
        self.error: str | None = None
        self._settled = anyio.Event()

    @property
    def loading(self) -> bool:
        return not self._settled.is_set()

    async def load(self) -> None:
        """Load the configured model in a worker thread; never raises: a failure is kept in `error`."""
        stt = self.settings.stt
        models_dir: Path = self.settings.resolve_path(stt.models_dir)
        try:
            self.engine = await anyio.to_thread.run_sync(
                WhisperEngine.load, stt, models_dir, PROJECT_ROOT, abandon_on_cancel=True
            )
        except ModelLoadError as exc:
            log.error("model_load_failed", model=stt.model, reason=str(exc))
            self.error = str(exc)
        except Exception as exc:
            log.exception("model_load_failed", model=stt.model)
            self.error = f"could not load Whisper model {stt.model!r}: {exc}"
        self._settled.set()

    async def wait(self) -> WhisperEngine:
        """The engine once loaded, or ModelUnavailable with the reason it could not be."""
        await self._settled.wait()
        if self.engine is None:
            raise ModelUnavailable(self.error or "the speech model is not loaded")
        return self.engine
