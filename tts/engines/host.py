"""Which engine serves: the configured one, started in the background, or the fallback when it cannot
start (the service keeps speaking, logs how to fix the primary engine and reports degraded)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from core.config import Settings
from core.errors import EngineLoading, EngineUnavailable, InvalidRequest
from core.logging import get_logger
from tts.engines import Engine, EngineStartError, create_engine, engine_class

log = get_logger(__name__)

EngineFactory = Callable[..., Engine]
"""`factory(name, settings, as_fallback=..., **options)`: a new, not yet started engine."""


class EngineHost:
    def __init__(
        self,
        settings: Settings,
        factory: EngineFactory = create_engine,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.configured = settings.tts.engine
        """The engine named in tts.engine."""
        self.engine: Engine | None = None
        """The engine that serves requests (None while loading, or when nothing could start)."""
        self.loading = True
        self.fallback = False
        """True when the fallback engine serves because the configured one failed."""
        self.error: str | None = None
        """Why the configured engine is not serving, with how to fix it."""
        self._factory = factory
        self._options = options or {}

    async def start(self) -> None:
        """Start the configured engine (in a worker thread: it may download and load models), or the
        fallback when it cannot start. Never raises: failures are recorded."""
        name = self.configured
        started = time.perf_counter()
        try:
            engine = await anyio.to_thread.run_sync(self._start, name, False, abandon_on_cancel=True)
        except Exception as exc:
            engine = await self._fall_back(name, exc)
        self.loading = False
        if engine is None:
            return
        self.engine = engine
        log.info(
            "engine_ready",
            engine=engine.name,
            voice=engine.default_voice,
            fallback=self.fallback,
            seconds=round(time.perf_counter() - started, 3),
        )

    async def _fall_back(self, name: str, exc: Exception) -> Engine | None:
        fallback = self.settings.tts.fallback_engine
        reason = str(exc) if isinstance(exc, EngineStartError) else f"{exc.__class__.__name__}: {exc}"
        self.error = f"the {name} engine cannot start: {reason}"
        if isinstance(exc, EngineStartError):
            log.error("engine_start_failed", engine=name, reason=reason)
        else:
            log.exception("engine_start_failed", engine=name)
        if fallback == "none":
            return None
        # The fallback runs even when it is the configured engine: as the fallback, espeak uses its own
        # default voice (tts.espeak.voice), which rescues a tts.voice meant for another engine.
        try:
            engine = await anyio.to_thread.run_sync(self._start, fallback, True, abandon_on_cancel=True)
        except Exception as fallback_exc:
            log.error("fallback_engine_failed", engine=fallback, reason=str(fallback_exc))
            self.error += f"; the fallback {fallback} engine failed too: {fallback_exc}"
            return None
        self.fallback = True
        log.error(
            "engine_fallback",
            engine=fallback,
            configured=name,
            reason=reason,
            fix=f"fix the {name} engine (see reason) and restart; until then {fallback} speaks",
        )
        return engine

    def _start(self, name: str, as_fallback: bool) -> Engine:
        engine = self._factory(name, self.settings, as_fallback=as_fallback, **self._options.get(name, {}))
        engine.start()
        return engine

    def configured_voice(self) -> str:
        """The default voice the configured engine would use (for reports while it is not serving)."""
        tts = self.settings.tts
        return tts.voice or engine_class(self.configured).own_default_voice(tts)

    def current(self) -> Engine:
        """The serving engine, or the error that explains why there is none."""
        if self.engine is not None:
            return self.engine
        if self.loading:
            raise EngineLoading(
                f"the {self.configured} engine is still starting (loading or downloading its voice); try again shortly",
                retry_after_s=self.settings.tts.retry_after_s,
            )
        raise EngineUnavailable(f"{self.error}. Fix it and restart the service, or set tts.fallback_engine to espeak")

    def get(self, name: str | None) -> Engine:
        """The engine named (None: the serving one), or InvalidRequest naming the engine served."""
        engine = self.current()
        if name is not None and name != engine.name:
            raise InvalidRequest(f"unknown engine {name!r}; this service speaks with {engine.name}", param="engine")
        return engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
