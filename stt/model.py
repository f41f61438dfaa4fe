"""The process's one Whisper model: loaded in the background (so /health answers during a first
download), shared by every session of every protocol, and the reason when it could not be loaded."""

from __future__ import annotations

from pathlib import Path

import anyio
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, stop_never, wait_exponential

from core.config import PROJECT_ROOT, Settings
from core.errors import ModelUnavailable
from core.logging import get_logger
from stt.engine import ModelLoadError, WhisperEngine

log = get_logger(__name__)

MAX_RETRY_WAIT_S = 600.0


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
        """Load the configured model in a worker thread; never raises. A failure is kept in `error` (so
        /health and every refused session say why) and, with stt.model_retry_s, tried again with backoff
        until it works: a model put in place, or a network that came back, needs no restart."""
        stt = self.settings.stt
        retry = AsyncRetrying(
            retry=retry_if_result(lambda loaded: not loaded),
            wait=wait_exponential(multiplier=stt.model_retry_s, max=MAX_RETRY_WAIT_S),
            stop=stop_never if stt.model_retry_s > 0 else stop_after_attempt(1),
            before_sleep=lambda state: log.info("model_load_retry", attempt=state.attempt_number, wait_s=state.upcoming_sleep),
            retry_error_callback=lambda _: False,
        )
        await retry(self._attempt)

    async def _attempt(self) -> bool:
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
        else:
            self.error = None
        self._settled.set()
        return self.engine is not None

    async def wait(self) -> WhisperEngine:
        """The engine once loaded, or ModelUnavailable with the reason it could not be."""
        await self._settled.wait()
        if self.engine is None:
            raise ModelUnavailable(self.error or "the speech model is not loaded")
        return self.engine
