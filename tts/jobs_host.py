"""The TTS service's side of the jobs (tts/jobs.py): the queue opened when it is first needed, its worker
threads (backend sqlite), the periodic sweep (abandoned parts, retention), and the async API the HTTP
adapter calls. Every storage call runs in a thread, never on the event loop; a queue or a store that
cannot be reached is JobsUnavailable (503), not a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from core.access import current_principal, may_see
from core.config import Settings
from core.errors import JobNotDone, JobNotFound, JobsUnavailable, ServiceError, TooManyPending
from core.logging import get_logger
from tts.engines import Engine
from tts.job_results import UNREACHABLE
from tts.job_state import JobStatus
from tts.jobs import JobQueue
from tts.segments import Segment

log = get_logger(__name__)

T = TypeVar("T")

SWEEP_EVERY_S = 10.0
"""Longest pause between sweeps (shorter with a short jobs.lease_s, so a dead worker's part waits little)."""


class JobsHost:
    def __init__(self, settings: Settings, engine: Callable[[str | None], Engine]) -> None:
        self.settings = settings
        self.engine = engine
        self.queue: JobQueue | None = None
        self._opening = threading.Lock()

    def _database_exists(self) -> bool:
        jobs = self.settings.jobs
        return (self.settings.resolve_path(self.settings.data_dir) / f"{jobs.queue_name}.sqlite3").exists()

    def _open(self) -> JobQueue:
        with self._opening:
            if self.queue is None:
                queue = JobQueue(self.settings, self.engine)
                if self.settings.jobs.backend == "sqlite" and self.settings.jobs.workers:
                    queue.start_workers(self.settings.jobs.workers)
                self.queue = queue
            return self.queue

    async def run(self) -> None:
        """The service's lifetime: a queue left with jobs is opened at once (queued jobs survive a restart),
        a new SQLite file only with the first job; then the sweep, while the service runs."""
        jobs = self.settings.jobs
        if jobs.backend == "redis" or self._database_exists():
            try:
                await anyio.to_thread.run_sync(self._open)
            except UNREACHABLE as exc:
                log.warning("jobs_unavailable", reason=str(exc))
            except Exception:  # a job record it cannot read must not take the whole service down
                log.exception("jobs_open_failed")
        interval = min(SWEEP_EVERY_S, jobs.lease_s / 2)
        while True:
            await anyio.sleep(interval)
            queue = self.queue
            if queue is None:
                continue
            try:
                await anyio.to_thread.run_sync(queue.sweep)
            except UNREACHABLE as exc:
                log.warning("jobs_sweep_failed", reason=str(exc))
            except Exception:  # as above: logged, and the next sweep tries again
                log.exception("jobs_sweep_failed")

    async def aclose(self) -> None:
        queue = self.queue
        if queue is not None:
            # Shielded: the service is stopping, and its parts must get back into the queue first.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(queue.stop_workers)

    async def _call(self, work: Callable[[JobQueue], T]) -> T:
        def call() -> T:
            return work(self._open())

        try:
            return await anyio.to_thread.run_sync(call)
        except ServiceError:
            raise
        except UNREACHABLE as exc:
            backend = self.settings.jobs.backend
            raise JobsUnavailable(
                f"the jobs' queue ({backend}) or their storage ({self.settings.jobs.storage}) cannot be reached: "
                f"{type(exc).__name__}; check jobs.redis_url / jobs.storage, then try again",
                retry_after_s=self.settings.tts.retry_after_s,
            ) from None

    async def submit(self, blocks: list[tuple[Segment, ...]], fmt: str, sample_rate: int | None, warnings: list[str]) -> JobStatus:
        limit = self.settings.jobs.max_queued
        principal = current_principal.get()

        def submit(queue: JobQueue) -> JobStatus:
            if queue.active() >= limit:
                raise TooManyPending(
                    f"{limit} jobs are queued or running (jobs.max_queued); wait for one to finish or cancel one",
                    retry_after_s=self.settings.tts.retry_after_s,
                )
            return queue.submit(blocks, fmt, sample_rate, warnings, None if principal is None else principal.name)

        return await self._call(submit)

    async def status(self, job_id: str) -> JobStatus:
        status = await self._call(lambda queue: queue.book.status(job_id))
        if status is None or not may_see(status.owner, current_principal.get()):  # another key's: as if none
            raise JobNotFound(
                f"no job {job_id!r}: it was never made, was deleted, or was deleted "
                f"{self.settings.jobs.retention_s:g} s after it ended (jobs.retention_s)"
            )
        return status

    async def list(self) -> list[JobStatus]:
        """The jobs the caller's key may see (all of them with keys off, or for an admin)."""
        principal = current_principal.get()
        return [job for job in await self._call(lambda queue: queue.list()) if may_see(job.owner, principal)]

    async def delete(self, job_id: str) -> JobStatus | None:
        """Cancel a queued or running job (its status now), or remove an ended one and its audio (None)."""
        status = await self.status(job_id)
        if status.state in ("queued", "running"):
            await self._call(lambda queue: queue.cancel(job_id))
            return await self.status(job_id)
        await self._call(lambda queue: queue.remove(job_id))
        return None

    async def audio(self, job_id: str) -> tuple[JobStatus, int]:
        """The job (done) and the size of its audio, or JobNotDone / JobNotFound."""
        status = await self.status(job_id)
        if status.state != "done":
            raise JobNotDone(f"job {job_id} is {status.state}: its audio exists once it is done (see its state)")
        size = await self._call(lambda queue: queue.results.size(f"{job_id}/audio"))
        if size is None:
            raise JobNotFound(f"the audio of job {job_id} is gone from the job storage")
        return status, size

    async def read(self, job_id: str, start: int, length: int) -> bytes:
        return await self._call(lambda queue: queue.results.read(f"{job_id}/audio", start, length))

    def rendering(self) -> bool:
        """Whether a job's part renders in this process now (its engines must stay loaded)."""
        queue = self.queue
        return queue is not None and queue.rendering

    def health(self) -> dict[str, Any]:
        jobs = self.settings.jobs
        return {"backend": jobs.backend, "storage": jobs.storage, "open": self.queue is not None}
