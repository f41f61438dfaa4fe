"""Piper's voice catalog, protocol-free: the downloadable voices listed in Piper's own `voices.json`
(tts.piper.catalog_url, fetched and cached for tts.piper.catalog_cache_s), and downloads of them as
jobs that report their progress.

A download fetches each file of the voice (relative to tts.piper.download_base_url) into a staging
folder inside the voices folder, checks its size and MD5 digest against the catalog as it arrives,
checks the voice by loading it, and only then renames it into place (VoiceStore.install_piper): a
failed, refused or interrupted download leaves nothing behind and nothing listed, and a finished one
is usable at once. At most tts.piper.max_downloads run at once, as many more wait, the rest are refused.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx

from core.config import PiperSettings
from core.errors import CatalogUnavailable, InvalidVoice, NotFound, ServiceError, TooManyPending, VoiceNotFound
from core.logging import get_logger
from core.redact import public_url
from tts.voice_store import VoiceMeta, VoiceStore
from tts.voices import CONFIG_SUFFIX, MODEL_SUFFIX, VOICE_NAME, language_matches

log = get_logger(__name__)

MAX_CATALOG_BYTES = 16 * 1024 * 1024
"""Piper's voices.json is about 1 MB; anything far larger is not a catalog."""
JOBS_KEPT = 32
"""Finished download jobs remembered for GET (the oldest are forgotten first)."""

JobState = Literal["queued", "downloading", "checking", "done", "failed"]


@dataclass(frozen=True)
class CatalogFile:
    path: str
    """Relative to tts.piper.download_base_url."""
    size_bytes: int
    md5_digest: str


@dataclass(frozen=True)
class CatalogVoice:
    id: str
    """The voice's name once downloaded (Piper's key, e.g. en_US-lessac-medium)."""
    name: str
    language: str
    language_name: str
    quality: str
    num_speakers: int
    size_bytes: int
    files: list[CatalogFile]
    installed: bool = False


@dataclass
class DownloadJob:
    id: str
    voice: str
    bytes_total: int
    state: JobState = "queued"
    bytes_done: int = 0
    error: dict[str, str] | None = None
    """The failure's code and message (state failed)."""
    created_at: float = field(default_factory=time.time)
    _changed: anyio.Event = field(default_factory=anyio.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def changed(self) -> None:
        """Returns once the job has changed (at once if it has finished)."""
        if not self.finished:
            await self._changed.wait()

    def report(self) -> dict[str, Any]:
        return {
            "id": self.id, "voice": self.voice, "state": self.state, "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total, "error": self.error,
        }


def parse_catalog(data: Any) -> list[CatalogVoice]:
    """The Piper voices of a voices.json (`{key: {name, language, quality, num_speakers, files}}`); entries
    that are not plain voices of one model and one config are left out."""
    if not isinstance(data, dict):
        raise ValueError("voices.json is not an object of voices")
    voices = []
    for key, entry in data.items():
        try:
            files = [
                CatalogFile(str(path), int(info["size_bytes"]), str(info["md5_digest"]))
                for path, info in entry["files"].items()
                if str(path).endswith((MODEL_SUFFIX, CONFIG_SUFFIX))
            ]
            language = entry.get("language") or {}
            names = sorted(Path(file.path).name for file in files)
            if not VOICE_NAME.fullmatch(key) or names != [f"{key}{MODEL_SUFFIX}", f"{key}{CONFIG_SUFFIX}"]:
                continue
            voices.append(
                CatalogVoice(
                    id=key,
                    name=str(entry.get("name") or key),
                    language=str(language.get("code") or key.split("-")[0]),
                    language_name=str(language.get("name_english") or ""),
                    quality=str(entry.get("quality") or ""),
                    num_speakers=int(entry.get("num_speakers") or 1),
                    size_bytes=sum(file.size_bytes for file in files),
                    files=sorted(files, key=lambda file: file.path.endswith(MODEL_SUFFIX)),  # config first
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return sorted(voices, key=lambda voice: voice.id)


class Catalog:
    def __init__(self, piper: PiperSettings, store: VoiceStore) -> None:
        self.settings = piper
        self.store = store
        self._cached: tuple[float, list[CatalogVoice]] | None = None
        self._jobs: OrderedDict[str, DownloadJob] = OrderedDict()
        self._send, self._receive = anyio.create_memory_object_stream[DownloadJob](piper.max_downloads)

    async def voices(self, language: str | None = None) -> list[CatalogVoice]:
        """The catalog (fetched when not cached), each voice marked installed when the voices folder has it."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self.settings.catalog_cache_s:
            self._cached = (now, await self._fetch())
        installed = set(await anyio.to_thread.run_sync(self._installed))
        return [
            replace(voice, installed=voice.id in installed)
            for voice in self._cached[1]
            if language is None or language_matches([voice.language], language)
        ]

    def _installed(self) -> list[str]:
        return [path.name[: -len(MODEL_SUFFIX)] for path in self.store.folders["piper"].glob(f"*{MODEL_SUFFIX}")]

    async def _fetch(self) -> list[CatalogVoice]:
        url = self.settings.catalog_url
        try:
            async with httpx.AsyncClient(timeout=self.settings.download_timeout_s, follow_redirects=True) as client:
                async with client.stream("GET", url) as response:
                    response.raise_for_status()
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_CATALOG_BYTES:
                            raise ValueError(f"it is over {MAX_CATALOG_BYTES} bytes")
            voices = parse_catalog(json.loads(bytes(body)))
        except (httpx.HTTPError, ValueError) as exc:
            raise CatalogUnavailable(
                f"the Piper voice catalog at {public_url(url)} cannot be read ({_why(exc)}); "
                "check tts.piper.catalog_url and the network"
            ) from None
        log.info("catalog_fetched", url=public_url(url), voices=len(voices))
        return voices

    def job(self, job_id: str) -> DownloadJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no download job {job_id[:40]!r} (never started, or forgotten after {JOBS_KEPT} newer ones)")
        return job

    async def start(self, voice_id: str) -> DownloadJob:
        """Queue the download of catalog voice `voice_id`; the job that reports it."""
        voices = {voice.id: voice for voice in await self.voices()}
        voice = voices.get(voice_id)
        if voice is None:
            raise VoiceNotFound(voice_id, sorted(voices), "piper catalog")
        await anyio.to_thread.run_sync(self.store.refuse_taken, "piper", voice.id)
        if any(job.voice == voice.id and not job.finished for job in self._jobs.values()):
            return next(job for job in self._jobs.values() if job.voice == voice.id and not job.finished)
        job = DownloadJob(uuid.uuid4().hex[:16], voice.id, voice.size_bytes)
        try:
            self._send.send_nowait(job)
        except anyio.WouldBlock:
            raise TooManyPending(
                f"{self.settings.max_downloads} downloads are running and as many wait (tts.piper.max_downloads); "
                "try again once one has finished"
            ) from None
        self._jobs[job.id] = job
        while len(self._jobs) > JOBS_KEPT:
            oldest = next(iter(self._jobs))
            if not self._jobs[oldest].finished:
                break
            del self._jobs[oldest]
        log.info("voice_download_queued", voice=voice.id, job=job.id, bytes=voice.size_bytes)
        return job

    async def run(self) -> None:
        """Run queued downloads, tts.piper.max_downloads at a time, for the service's lifetime."""
        limiter = anyio.CapacityLimiter(self.settings.max_downloads)
        async with anyio.create_task_group() as tasks:
            async for job in self._receive:
                await limiter.acquire_on_behalf_of(job.id)
                tasks.start_soon(self._run_one, job, limiter)

    async def _run_one(self, job: DownloadJob, limiter: anyio.CapacityLimiter) -> None:
        try:
            voice = next(voice for voice in (self._cached[1] if self._cached else []) if voice.id == job.voice)
            await self._download(job, voice)
            job.update(state="done", bytes_done=job.bytes_total)
            log.info("voice_downloaded", voice=job.voice, job=job.id, bytes=job.bytes_total)
        except ServiceError as exc:
            log.warning("voice_download_failed", voice=job.voice, job=job.id, code=exc.code, reason=exc.message)
            job.update(state="failed", error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # never leaves a job running forever; the log has the traceback
            log.exception("voice_download_failed", voice=job.voice, job=job.id)
            job.update(state="failed", error={"code": "internal_error", "message": f"{exc.__class__.__name__}: {exc}"})
        finally:
            limiter.release_on_behalf_of(job.id)

    async def _download(self, job: DownloadJob, voice: CatalogVoice) -> None:
        job.update(state="downloading")
        base = self.settings.download_base_url
        # The staging folder is made and removed in a worker thread: removing a voice of 60 MB is disk work.
        staging = await anyio.to_thread.run_sync(self.store.open_staging, "piper")
        try:
            async with httpx.AsyncClient(timeout=self.settings.download_timeout_s, follow_redirects=True) as client:
                for file in voice.files:
                    await self._fetch_file(client, base.rstrip("/") + "/" + file.path.lstrip("/"), file, staging, job)
            job.update(state="checking")
            meta = VoiceMeta(origin="downloaded", description=voice.name)
            await anyio.to_thread.run_sync(self.store.install_piper, voice.id, staging, meta)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled download leaves no half voice behind either
                await anyio.to_thread.run_sync(self.store.drop_staging, staging)

    async def _fetch_file(
        self, client: httpx.AsyncClient, url: str, file: CatalogFile, staging: Path, job: DownloadJob
    ) -> None:
        """One file into `staging`, its size and MD5 digest checked against the catalog."""
        digest, size = hashlib.md5(usedforsecurity=False), 0
        target = staging / Path(file.path).name
        try:
            async with client.stream("GET", url) as response:
                response.raise_for_status()
                async with await anyio.open_file(target, "wb") as out:
                    async for chunk in response.aiter_bytes():  # as it arrives: progress moves with the bytes
                        size += len(chunk)
                        if size > file.size_bytes:
                            break
                        digest.update(chunk)
                        await out.write(chunk)
                        job.update(bytes_done=job.bytes_done + len(chunk))
        except httpx.HTTPError as exc:
            raise CatalogUnavailable(
                f"downloading {Path(file.path).name} from {public_url(url)} failed ({_why(exc)}); "
                "nothing was kept: try again"
            ) from None
        if size != file.size_bytes or digest.hexdigest() != file.md5_digest:
            raise InvalidVoice(
                f"{Path(file.path).name} from {public_url(url)} does not match the catalog (size {size} of "
                f"{file.size_bytes} bytes, MD5 {digest.hexdigest()} instead of {file.md5_digest}); nothing was kept"
            )


def _why(exc: Exception) -> str:
    """What went wrong, for a client: never the URL as httpx words it (its userinfo and query may be secrets)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    text = str(exc)
    return exc.__class__.__name__ if "://" in text or "@" in text else f"{exc.__class__.__name__}: {text}"
