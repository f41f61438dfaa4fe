"""Which engines serve: every engine in tts.engines side by side, one of them the default.

The default engine starts in the background when the service starts; if it cannot, the fallback speaks
in its place (the service keeps speaking, logs how to fix it and reports degraded). Every other engine
loads on first use (or at start-up with tts.preload), and any engine unused for tts.idle_unload_s is
unloaded to free its memory and loaded again by the next request that needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.lowlevel

from core.config import Settings
from core.errors import EngineLoading, EngineUnavailable, InvalidRequest
from core.logging import get_logger
from tts.engines import Engine, EngineStartError, create_engine, engine_class

log = get_logger(__name__)

EngineFactory = Callable[..., Engine]
"""`factory(name, settings, as_fallback=..., **options)`: a new, not yet started engine."""

EngineState = Literal["ready", "loading", "unavailable", "unloaded"]


@dataclass
class EngineSlot:
    """One configured engine and where it stands."""

    name: str
    engine: Engine | None = None
    loading: bool = False
    fallback: bool = False
    """True when the fallback engine serves in this engine's place (the default engine only)."""
    error: str | None = None
    """Why this engine is not serving, with how to fix it."""
    last_used: float = 0.0
    """When a request last chose it (the host's clock)."""
    active: int = 0
    """Turns speaking with it now: an engine in use is never unloaded."""
    voices_used: dict[str, float] = field(default_factory=dict)
    """When each voice last finished speaking (the host's clock): a voice idle past the limit is unloaded."""
    load_s: float | None = None
    """Seconds its last load on demand took, until the next turn with it reports them (then None)."""
    unloaded_voices: set[str] = field(default_factory=set)
    """Voices unloaded for idleness and not spoken since: the next turn with one loads it first, and says so."""
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held while it loads on demand: concurrent first requests load it once."""

    @property
    def state(self) -> EngineState:
        if self.engine is not None:
            return "ready"
        if self.loading:
            return "loading"
        return "unavailable" if self.error else "unloaded"


class EngineHost:
    def __init__(
        self,
        settings: Settings,
        factory: EngineFactory = create_engine,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        tts = settings.tts
        self.slots: dict[str, EngineSlot] = {name: EngineSlot(name) for name in tts.served_engines}
        """Every configured engine, the default (tts.engine) first."""
        self.configured = tts.engine
        """The default engine: the one a request that names none speaks with (PUT /v1/engines/default changes it)."""
        self.slots[tts.engine].loading = True
        self._factory = factory
        self._options = options or {}
        self._loop: anyio.lowlevel.EventLoopToken | None = None
        """The event loop that started the engines, for load_from_thread."""
        self.in_use_elsewhere: Callable[[], bool] = lambda: False
        """Whether something besides turns speaks with the engines now (the service's job threads, which do not
        go through `using`): nothing is unloaded for idleness meanwhile."""
        self.clock: Callable[[], float] = time.monotonic
        """Seconds, for tts.idle_unload_s (monotonic; a test drives its own)."""

    # -- the default engine, as one engine was reported before there were several ------------------

    @property
    def default(self) -> EngineSlot:
        return self.slots[self.configured]

    @property
    def engine(self) -> Engine | None:
        """The default engine when it is loaded (the fallback in its place when it could not start)."""
        return self.default.engine

    @property
    def loading(self) -> bool:
        return self.default.loading

    @property
    def fallback(self) -> bool:
        return self.default.fallback

    @property
    def error(self) -> str | None:
        return self.default.error

    # -- starting, loading, unloading ---------------------------------------------------------------

    async def start(self, every: bool = False) -> None:
        """Start the default engine, then the others when tts.preload (or `every`: a job worker, whose parts may
        name any) says so. Never raises: failures are recorded (the default engine's replaced by the fallback)."""
        self._loop = anyio.lowlevel.current_token()
        await self._load(self.default, fall_back=True)
        if every or self.settings.tts.preload:
            for slot in self.slots.values():
                if slot.engine is None and not slot.error:
                    async with slot.lock:
                        await self._load(slot, fall_back=False)

    async def _load(self, slot: EngineSlot, *, fall_back: bool) -> float:
        """Start `slot`'s engine in a worker thread (it may download and load models); the seconds it took."""
        slot.loading, slot.error = True, None
        started = time.perf_counter()
        try:
            engine = await anyio.to_thread.run_sync(self._start, slot.name, False, abandon_on_cancel=True)
        except Exception as exc:
            engine = await self._fall_back(slot, exc) if fall_back else self._failed(slot, exc)
        finally:
            slot.loading = False
        seconds = time.perf_counter() - started
        slot.last_used = self.clock()
        if engine is not None:
            slot.engine = engine
            log.info(
                "engine_ready", engine=engine.name, voice=engine.default_voice, fallback=slot.fallback,
                seconds=round(seconds, 3),
            )
        return seconds

    def _failed(self, slot: EngineSlot, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, EngineStartError) else f"{exc.__class__.__name__}: {exc}"
        slot.error = f"the {slot.name} engine cannot start: {reason}"
        if isinstance(exc, EngineStartError):
            log.error("engine_start_failed", engine=slot.name, reason=reason)
        else:
            log.exception("engine_start_failed", engine=slot.name)

    async def _fall_back(self, slot: EngineSlot, exc: Exception) -> Engine | None:
        self._failed(slot, exc)
        fallback = self.settings.tts.fallback_engine
        if fallback == "none":
            return None
        # The fallback runs even when it is the configured engine: as the fallback, espeak uses its own
        # default voice (tts.espeak.voice), which rescues a tts.voice meant for another engine.
        try:
            engine = await anyio.to_thread.run_sync(self._start, fallback, True, abandon_on_cancel=True)
        except Exception as fallback_exc:
            log.error("fallback_engine_failed", engine=fallback, reason=str(fallback_exc))
            slot.error = f"{slot.error}; the fallback {fallback} engine failed too: {fallback_exc}"
            return None
        slot.fallback = True
        log.error(
            "engine_fallback",
            engine=fallback,
            configured=slot.name,
            reason=slot.error,
            fix=f"fix the {slot.name} engine (see reason) and restart; until then {fallback} speaks",
        )
        return engine

    def _start(self, name: str, as_fallback: bool) -> Engine:
        # tts.voice names a voice of tts.engine: every other engine starts with its own default voice, as the
        # fallback does.
        own_voice = as_fallback or name != self.settings.tts.engine
        engine = self._factory(name, self.settings, as_fallback=own_voice, **self._options.get(name, {}))
        engine.start()
        return engine

    def sweep(self) -> list[str]:
        """Unload every engine unused for tts.idle_unload_s and not speaking now, and every voice of a loaded
        engine unused that long; the names of the engines unloaded."""
        idle_s = self.settings.tts.idle_unload_s
        if not idle_s or self.in_use_elsewhere():
            return []
        now, unloaded = self.clock(), []
        for slot in self.slots.values():
            engine = slot.engine
            if engine is None or slot.active or slot.fallback:
                continue
            if now - slot.last_used < idle_s:
                for voice, used in list(slot.voices_used.items()):
                    if now - used >= idle_s:
                        del slot.voices_used[voice]
                        slot.unloaded_voices.add(voice)
                        engine.unload_voice(voice)  # loaded again by the next request that names it
                continue
            slot.engine = None
            slot.voices_used.clear()
            slot.unloaded_voices.clear()  # the engine's reload is reported instead
            engine.close()
            unloaded.append(slot.name)
            log.info("engine_unloaded", engine=slot.name, reason="idle", idle_s=round(now - slot.last_used, 1))
        return unloaded

    # -- choosing an engine --------------------------------------------------------------------------

    def slot(self, name: str | None) -> EngineSlot:
        """The slot of engine `name` (None: the default), or InvalidRequest naming the configured ones."""
        slot = self.slots.get(self.configured if name is None else name)
        if slot is None:
            raise InvalidRequest(
                f"engine {str(name)[:40]!r} is not configured here; choose one of {', '.join(self.slots)} (tts.engines)",
                param="engine",
            )
        return slot

    async def get(self, name: str | None) -> Engine:
        """Engine `name` (None: the default), loaded first if it is not (the next turn with it reports the
        seconds that took), or the error that explains why it cannot speak."""
        slot = self.slot(name)
        slot.last_used = self.clock()
        self.sweep()  # besides the periodic sweep: an engine idle past the limit goes before another loads
        if slot.engine is not None:
            return slot.engine
        if slot.loading and not slot.lock.locked():
            raise self._not_ready(slot)  # starting with the service: answered at once, as before
        async with slot.lock:
            if slot.engine is None and not slot.error:
                slot.load_s = await self._load(slot, fall_back=False)
        return self.loaded(slot.name)

    def loaded(self, name: str | None) -> Engine:
        """Engine `name` (None: the default) if it is loaded now, or the error that explains why not."""
        slot = self.slot(name)
        slot.last_used = self.clock()
        if slot.engine is None:
            raise self._not_ready(slot)
        return slot.engine

    def _not_ready(self, slot: EngineSlot) -> Exception:
        if slot.loading or slot.state == "unloaded":
            return EngineLoading(
                f"the {slot.name} engine is still starting (loading or downloading its voice); try again shortly",
                retry_after_s=self.settings.tts.retry_after_s,
            )
        return EngineUnavailable(f"{slot.error}. Fix it and restart the service, or set tts.fallback_engine to espeak")

    def load_from_thread(self, name: str | None) -> Engine:
        """Engine `name` for a thread outside the event loop (a job's worker thread), loaded first if it is not:
        a job queued before a restart, or left queued past tts.idle_unload_s, may name an engine no request
        has loaded since. EngineLoading while the service itself is still starting it."""
        try:
            return self.loaded(name)
        except EngineLoading:
            if self._loop is None or self.slot(name).loading:
                raise
            try:
                return anyio.from_thread.run(self.get, name, token=self._loop)
            except anyio.RunFinishedError:  # the service stopped meanwhile: the part goes back in the queue
                raise EngineLoading("the service is stopping; the engine loads when it runs again") from None

    def current(self) -> Engine:
        """The default engine, or the error that explains why there is none."""
        return self.loaded(None)

    @contextmanager
    def using(self, name: str, voice: str) -> Iterator[float | None]:
        """Mark engine `name` busy for a turn with `voice` (so neither is unloaded under it); yields the seconds
        of a load on demand that no turn has reported yet."""
        slot = self.slots[name]
        slot.active += 1
        load_s, slot.load_s = slot.load_s, None
        try:
            yield load_s
        finally:
            slot.active -= 1
            slot.last_used = slot.voices_used[voice] = self.clock()

    async def reload_voice(self, name: str, voice: str) -> float | None:
        """Load `voice` of engine `name` again if it was unloaded for idleness: the seconds it took, for the turn's
        timings (None: it was loaded). A voice that fails to load is left to the turn, whose synthesis then
        raises the error that says why."""
        slot = self.slots[name]
        if voice not in slot.unloaded_voices or slot.engine is None:
            return None
        slot.unloaded_voices.discard(voice)
        started = time.perf_counter()
        try:
            await anyio.to_thread.run_sync(slot.engine.load_voice, voice)
        except Exception as exc:
            log.warning("voice_reload_failed", engine=name, voice=voice, reason=f"{exc.__class__.__name__}: {exc}")
            return None
        return time.perf_counter() - started

    def set_default(self, name: str) -> str:
        """Make engine `name` the default; the previous default's name."""
        previous, self.configured = self.configured, self.slot(name).name
        log.info("default_engine_changed", engine=self.configured, previous=previous)
        return previous

    def configured_voice(self) -> str:
        """The default voice the default engine would use (for reports while it is not serving)."""
        tts = self.settings.tts
        own = engine_class(self.configured).own_default_voice(tts)
        return (tts.voice or own) if self.configured == tts.engine else own

    def close(self) -> None:
        for slot in self.slots.values():
            if slot.engine is not None:
                slot.engine.close()
