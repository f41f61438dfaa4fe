"""Voices at run time, protocol-free: every voice of every engine with its details, uploading a Piper
voice, cloning an XTTS voice from a clip, deleting, setting the default, and which key sees which.

A voice's id is `ENGINE:NAME` (`piper:en_US-lessac-medium`). When API keys are on, a voice uploaded or
cloned with a key is seen (listed, spoken with, deleted) only by that key and admin keys, until an
admin shares it; voices put in the folders by hand are everyone's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import anyio

from core.access import Principal, current_principal
from core.config import Settings
from core.errors import Forbidden, InvalidRequest, ServiceError, TooManyPending, VoiceConflict, VoiceNotFound
from core.logging import get_logger
from core.slots import slot_or_refuse
from tts.catalog import Catalog
from tts.engines import Engine
from tts.engines.base import VoiceInfo
from tts.engines.host import EngineHost
from tts.voice_store import Origin, VoiceMeta, VoiceStore
from tts.voices import check_voice_name, language_matches

log = get_logger(__name__)


@dataclass(frozen=True)
class VoiceEntry:
    """One voice as GET /v1/voices lists it."""

    id: str
    engine: str
    name: str
    language: str
    """Its first language (`languages` has all of them)."""
    languages: list[str]
    quality: str | None
    sample_rate: int | None
    speakers: list[str]
    origin: Origin
    loaded: bool
    size_bytes: int | None
    default: bool
    """The default voice of its engine."""
    owner: str | None = None
    shared: bool = False
    description: str = ""


def voice_id(engine: str, name: str) -> str:
    return f"{engine}:{name}"


class VoiceManager:
    def __init__(self, settings: Settings, engines: EngineHost) -> None:
        self.settings = settings
        self.engines = engines
        self.store = VoiceStore(settings)
        self.catalog = Catalog(settings.tts.piper, self.store)
        self._uploads = anyio.CapacityLimiter(settings.tts.max_voice_uploads)

    def upload_slot(self) -> AbstractAsyncContextManager[None]:
        """One of tts.max_voice_uploads, held inside the block (taken before an upload is read: its bytes stay
        in memory until the voice is kept), or TooManyPending when every one is taken."""
        tts = self.settings.tts
        return slot_or_refuse(
            self._uploads,
            lambda: TooManyPending(
                f"{tts.max_voice_uploads} voice uploads are being checked already (tts.max_voice_uploads); "
                "try again shortly",
                retry_after_s=tts.retry_after_s,
            ),
        )

    def visible(self, engine: str, names: list[str]) -> list[str]:
        """The voices of `names` the caller's key may see. Blocking."""
        principal = current_principal.get()
        if principal is None:
            return names
        return [name for name in names if self.store.meta(engine, name).visible_to(principal)]

    # -- reading -----------------------------------------------------------------------------------

    def _entry(self, engine: str, speaker: Engine, info: VoiceInfo, meta: VoiceMeta) -> VoiceEntry:
        return VoiceEntry(
            id=voice_id(engine, info.name),
            engine=engine,
            name=info.name,
            language=info.languages[0] if info.languages else (meta.language or ""),
            languages=info.languages,
            quality=info.quality,
            sample_rate=info.sample_rate,
            speakers=info.speakers,
            origin=meta.origin,
            loaded=info.loaded,
            size_bytes=info.size_bytes,
            default=info.name == speaker.default_voice,
            owner=meta.owner,
            shared=meta.shared,
            description=meta.description,
        )

    def _entries(self, engine: str, speaker: Engine, principal: Principal | None) -> list[VoiceEntry]:
        """Blocking: the voices of one loaded engine that `principal` may see."""
        entries = []
        for info in speaker.voice_details():
            meta = self.store.meta(engine, info.name)
            if meta.visible_to(principal):
                entries.append(self._entry(engine, speaker, info, meta))
        return entries

    async def list(self, engine: str | None = None, language: str | None = None) -> list[VoiceEntry]:
        """Every voice the caller's key may see, of `engine` (None: every engine that can speak)."""
        principal = current_principal.get()
        names = [self.engines.slot(engine).name] if engine else list(self.engines.slots)
        entries: list[VoiceEntry] = []
        for name in names:
            try:
                speaker = await self.engines.get(name)
            except ServiceError:
                if engine:
                    raise
                continue  # an engine that cannot speak has no voices to offer; GET /v1/engines says why
            entries += await anyio.to_thread.run_sync(self._entries, name, speaker, principal)
        return [entry for entry in entries if language is None or language_matches(entry.languages, language)]

    def check_visible(self, engine: str, name: str, available: Callable[[], list[str]]) -> None:
        """VoiceNotFound (listing the `available()` voices it may see) for a voice the caller's key may not
        see, as if it did not exist. Blocking."""
        principal = current_principal.get()
        if principal is not None and not self.store.meta(engine, name).visible_to(principal):
            raise VoiceNotFound(name, self.visible(engine, available()), engine)

    async def _find(self, id_: str) -> tuple[str, Engine, str, VoiceMeta]:
        """(engine name, engine, voice name, its meta) of a voice the caller may see."""
        engine, colon, name = id_.partition(":")
        if not colon:
            raise InvalidRequest(f"voice id {id_[:120]!r} is not ENGINE:NAME (e.g. piper:en_US-lessac-medium)", param="id")
        check_voice_name(name)
        speaker = await self.engines.get(engine)

        def find() -> VoiceMeta:
            available = speaker.voices()
            if name not in available:
                raise VoiceNotFound(name, available, engine)
            self.check_visible(engine, name, lambda: available)
            return self.store.meta(engine, name)

        return engine, speaker, name, await anyio.to_thread.run_sync(find)

    # -- changing ----------------------------------------------------------------------------------

    def _meta(self, origin: Origin, description: str, language: str | None = None) -> VoiceMeta:
        principal = current_principal.get()
        return VoiceMeta(origin, principal.name if principal else None, False, description, language)

    async def add_piper(self, name: str, model: bytes, config: bytes, description: str = "") -> VoiceEntry:
        engine = self._uploadable("piper", clip=False)
        await anyio.to_thread.run_sync(self.store.add_piper, name, model, config, self._meta("uploaded", description))
        return await self._listed(engine, name)

    async def clone(self, name: str, clip: bytes, language: str | None, description: str = "", engine: str | None = None) -> VoiceEntry:
        cloning = engine or next((slot for slot in self.engines.slots if slot == "xtts"), None)
        if cloning is None:
            raise InvalidRequest(
                f"no engine here clones voices from a clip (configured: {', '.join(self.engines.slots)}); add xtts "
                "to tts.engines, or upload a Piper voice (files 'model' and 'config')",
                param="engine",
            )
        self._uploadable(cloning, clip=True)
        meta = self._meta("cloned", description, language or self.settings.tts.xtts.language)
        await anyio.to_thread.run_sync(self.store.add_clip, name, clip, meta)
        return await self._listed(cloning, name)

    def _uploadable(self, engine: str, *, clip: bool) -> str:
        """`engine` if it is configured and takes this kind of upload (XTTS clones from clips; Piper takes voices)."""
        slot = self.engines.slot(engine).name
        if slot != ("xtts" if clip else "piper"):
            what = "a reference clip to clone from" if clip else "a Piper voice (files 'model' and 'config')"
            raise InvalidRequest(f"the {slot} engine takes no {what}", param="engine")
        return slot

    async def _listed(self, engine: str, name: str) -> VoiceEntry:
        speaker = await self.engines.get(engine)
        entries = await anyio.to_thread.run_sync(self._entries, engine, speaker, None)
        return next(entry for entry in entries if entry.name == name)

    async def delete(self, id_: str) -> None:
        engine, speaker, name, meta = await self._find(id_)
        if meta.origin == "local":
            raise VoiceConflict(
                f"voice {id_!r} was put into its folder by hand ({self.store.folders.get(engine, 'built in')}); "
                "only uploaded, downloaded and cloned voices are deleted here",
                param="id",
            )
        principal = current_principal.get()
        if principal is not None and meta.owner != principal.name and "admin" not in principal.scopes:
            raise Forbidden(f"voice {id_!r} belongs to another key; only it or an admin key may delete it")
        if name == speaker.default_voice:
            raise VoiceConflict(
                f"voice {id_!r} is the default voice of the {engine} engine; make another the default first "
                "(PUT /v1/voices/default)",
                param="id",
            )
        await anyio.to_thread.run_sync(self.store.delete, engine, name)
        speaker.unload_voice(name)

    async def set_default(self, id_: str) -> VoiceEntry:
        """Make a voice the default of its engine (until restart)."""
        engine, speaker, name, _ = await self._find(id_)
        previous, speaker.default_voice = speaker.default_voice, name
        log.info("default_voice_changed", engine=engine, voice=name, previous=previous)
        return await self._listed(engine, name)

    async def share(self, id_: str, shared: bool) -> VoiceEntry:
        engine, _, name, meta = await self._find(id_)
        if engine not in self.store.folders or meta.origin == "local":
            raise VoiceConflict(f"voice {id_!r} is everyone's already", param="id")
        await anyio.to_thread.run_sync(self.store.set_shared, engine, name, shared)
        log.info("voice_shared" if shared else "voice_unshared", engine=engine, voice=name)
        return await self._listed(engine, name)
