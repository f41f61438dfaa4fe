"""Jobs: long documents rendered on huey, a task queue that runs the same task code embedded and distributed.

- backend sqlite (the default): huey's SQLite storage in data_dir, worker threads inside the TTS service;
- backend redis: huey's Redis storage; the service only enqueues, `python -m tts.worker` processes (any
  machine that reaches the Redis server and the results) run the tasks.

A job is its document cut into parts (tts/job_render.py: a few sentences each), one huey task per part,
so its blocks render in parallel over every worker; the task that finishes the last part enqueues the
join. Job state lives in huey's own storage beside the queue (its key-value store and atomic counters),
written so that no two writers ever race on one key: markers set once (`put_if_empty`), counters (`incr`),
and a lease per part that its worker renews after each sentence. Huey drops a task whose worker dies
mid-way (it has no acknowledgements), so the service's sweep (`JobQueue.sweep`) queues a part whose lease
ran out again, up to jobs.max_attempts; a part interrupted by a shutdown puts itself back in the queue.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Huey
from huey.consumer import Consumer

from core.config import Settings
from core.errors import EngineLoading, ServiceError
from core.logging import get_logger
from tts.engines import Engine
from tts.job_render import Part, Stopped, join_parts, part_bytes, part_from_bytes, render_part, split_parts
from tts.job_results import UNREACHABLE, open_results
from tts.job_state import JobBook, JobStatus
from tts.segments import Segment

log = get_logger(__name__)

LOADING_RETRY_S = 1
"""A part that finds the engine still loading (a worker just started) is queued again this many seconds later."""
POLL_MAX_S = 0.5
"""Longest pause of an idle SQLite worker between looks at the queue (huey's default, 10 s, delays new jobs)."""


def make_huey(settings: Settings) -> Huey:
    jobs = settings.jobs
    if jobs.backend == "redis":
        return RedisHuey(jobs.queue_name, url=jobs.redis(), results=False)
    folder = settings.resolve_path(settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(jobs.queue_name, filename=str(folder / f"{jobs.queue_name}.sqlite3"), results=False)


class _EmbeddedConsumer(Consumer):  # type: ignore[misc]
    """Huey's consumer inside the TTS service: the service's own signal handlers stay in charge."""

    def _set_signal_handlers(self) -> None:
        pass


class JobQueue:
    """The queue, its task code and the job state; the same in the service and in every worker."""

    def __init__(self, settings: Settings, engine: Callable[[str | None], Engine]) -> None:
        self.settings = settings
        self.engine = engine
        """The loaded engine of a name (None: the default), or EngineLoading while it is not."""
        self.huey = make_huey(settings)
        self.book = JobBook(self.huey)
        self.results = open_results(settings)
        self._render = self.huey.task(name="render_part")(self._render_part)
        self._join = self.huey.task(name="join_parts")(self._join_parts)
        self.stopping = threading.Event()
        self._rendering = 0
        self._rendering_lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._index = threading.Lock()

    # -- workers ----------------------------------------------------------------------------------

    def consumer(self, workers: int, embedded: bool) -> Consumer:
        """Huey's consumer with `workers` threads; SIGTERM stops a worker process gracefully (embedded, the
        service's own lifetime does: stop_workers), and its health check replaces a thread that died."""
        kind = _EmbeddedConsumer if embedded else Consumer
        return kind(
            self.huey, workers=workers, worker_type="thread", periodic=False, max_delay=POLL_MAX_S,
            check_worker_health=not embedded, graceful_signal="TERM",
        )  # fmt: skip

    def start_workers(self, workers: int) -> None:
        """Worker threads in this process (embedded); parts a crash left claimed are queued again first."""
        self.recover()
        self._consumer = self.consumer(workers, embedded=True)
        self._consumer.start()

    def stop_workers(self) -> None:
        """Parts being rendered stop before their next sentence and go back in the queue."""
        self.stopping.set()
        if self._consumer is not None:
            self._consumer.stop(graceful=True)

    # -- the tasks (in a worker thread, of any process) ------------------------------------------------

    @property
    def rendering(self) -> bool:
        """Whether a part renders in a thread of this process now."""
        return self._rendering > 0

    @contextmanager
    def _renders(self) -> Iterator[None]:
        with self._rendering_lock:
            self._rendering += 1
        try:
            yield
        finally:
            with self._rendering_lock:
                self._rendering -= 1

    def _render_part(self, job_id: str, index: int, attempt: int) -> None:
        book, jobs = self.book, self.settings.jobs
        spec = book.spec(job_id)
        if spec is None or book.ended(job_id) or book.part_is_done(job_id, index):
            return  # deleted, cancelled or failed meanwhile; or a second copy of a part already done
        book.mark_started(job_id)
        book.claim(job_id, index, attempt, jobs.lease_s)
        part = _part(spec["parts"][index])
        started = time.perf_counter()

        def heartbeat(_audio_s: float) -> None:
            book.claim(job_id, index, attempt, jobs.lease_s)

        try:
            with self._renders():
                rendered = render_part(self.engine, part, lambda: self.stopping.is_set() or book.ended(job_id), heartbeat)
        except EngineLoading:
            book.release(job_id, index)
            self._render.schedule((job_id, index, attempt), delay=LOADING_RETRY_S)  # not an attempt: try once loaded
            return
        except Stopped:
            book.release(job_id, index)
            if not book.ended(job_id):
                self._render(job_id, index, attempt)  # stopped by a shutdown: back in the queue, not an attempt
            return
        except ServiceError as exc:
            book.release(job_id, index)
            book.fail(job_id, f"block {part.blocks[0]}: {exc.message}")
            return
        except Exception:  # a bug must not lose the job: logged, and the part tried again (bounded)
            log.exception("job_part_failed", job_id=job_id, part=index, attempt=attempt)
            book.release(job_id, index)
            self._retry(job_id, index, attempt, "an unexpected error; see the worker's log")
            return
        try:
            self.results.put(f"{job_id}/part-{index}", part_bytes(rendered))
        except UNREACHABLE as exc:  # a full disk, an S3 error: retried, it may be passing
            reason = f"the job storage failed ({storage_error(exc)}); check jobs.storage and its settings"
            log.warning("job_storage_failed", job_id=job_id, part=index, reason=reason)
            book.release(job_id, index)
            self._retry(job_id, index, attempt, reason)
            return
        book.release(job_id, index)
        audio_s = len(rendered.pcm16) / 2 / rendered.rate if rendered.rate else 0.0
        done = book.part_done(job_id, index, time.perf_counter() - started, audio_s)
        if done == len(spec["parts"]):
            self._join(job_id)

    def _retry(self, job_id: str, index: int, attempt: int, reason: str) -> None:
        """Queue the part again, or fail the job with `reason` once jobs.max_attempts are spent."""
        if attempt < self.settings.jobs.max_attempts:
            self._render(job_id, index, attempt + 1)
            return
        spec = self.book.spec(job_id)
        if spec is not None:
            block = spec["parts"][index]["blocks"][0]
            self.book.fail(job_id, f"block {block} failed {attempt} times (jobs.max_attempts): {reason}")

    def _join_parts(self, job_id: str) -> None:
        book = self.book
        spec = book.spec(job_id)
        if spec is None or book.ended(job_id) or book.result(job_id) is not None:
            return
        count = len(spec["parts"])
        parts = [part_from_bytes(self.results.get(f"{job_id}/part-{index}")) for index in range(count)]
        data, rate, audio_s = join_parts(parts, spec["format"], spec["sample_rate"])
        self.results.put(f"{job_id}/audio", data)  # atomic: a reader sees the whole file or none
        book.finish(job_id, {"bytes": len(data), "sample_rate": rate, "audio_s": audio_s})
        for index in range(count):
            self.results.remove(f"{job_id}/part-{index}")
        log.info("job_done", job_id=job_id, parts=count, audio_s=round(audio_s, 3))

    # -- the service's side -----------------------------------------------------------------------

    def submit(
        self, blocks: list[tuple[Segment, ...]], fmt: str, sample_rate: int | None, warnings: list[str], owner: str | None
    ) -> JobStatus:
        parts = split_parts(blocks, self.settings.jobs.sentences_per_part)
        job_id = uuid.uuid4().hex
        spec = {
            "id": job_id, "created_at": time.time(), "format": fmt, "sample_rate": sample_rate,
            "blocks": len(blocks), "parts": [dataclasses.asdict(part) for part in parts], "warnings": warnings,
            "owner": owner,
        }  # fmt: skip
        self.book.create(spec)
        with self._index:
            self.book.index_add(job_id)
        for index in range(len(parts)):
            self._render(job_id, index, 1)
        log.info("job_queued", job_id=job_id, blocks=len(blocks), parts=len(parts), owner=owner)
        return self.book.status(job_id)  # type: ignore[return-value]

    def active(self) -> int:
        return sum(1 for status in self.list() if status.state in ("queued", "running"))

    def list(self) -> list[JobStatus]:
        statuses = (self.book.status(job_id) for job_id in reversed(self.book.index()))
        return [status for status in statuses if status is not None]

    def cancel(self, job_id: str) -> None:
        self.book.cancel(job_id)
        log.info("job_cancelled", job_id=job_id)

    def remove(self, job_id: str) -> None:
        spec = self.book.spec(job_id)
        self.results.delete(job_id)
        self.book.delete(job_id, len(spec["parts"]) if spec else 0)
        with self._index:
            self.book.index_remove(job_id)

    def recover(self) -> None:
        """Queue again every part still claimed: run when no worker of this queue can be rendering it
        (the embedded service starting: its previous process was the only one)."""
        self.sweep(expired_before=float("inf"))

    def sweep(self, expired_before: float | None = None) -> None:
        """Queue again the parts whose worker stopped renewing its lease (it died), and delete the jobs
        that ended more than jobs.retention_s ago."""
        now = time.time()
        jobs = self.settings.jobs
        for status in self.list():
            if status.state in ("done", "failed", "cancelled"):
                if status.finished_at is not None and now - status.finished_at > jobs.retention_s:
                    log.info("job_expired", job_id=status.id, state=status.state)
                    self.remove(status.id)
                continue
            for index, (expires, attempt) in self.book.leases(status.id, status.parts).items():
                if expires < (now if expired_before is None else expired_before):
                    log.warning("job_part_abandoned", job_id=status.id, part=index, attempt=attempt)
                    self.book.release(status.id, index)
                    self._retry(status.id, index, attempt, "its worker stopped (died) while rendering it")


def storage_error(exc: BaseException) -> str:
    """What a storage failure was: an S3 error's code, or the exception's type."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) if code else f"{type(exc).__name__}: {exc}"


def _part(data: dict[str, Any]) -> Part:
    return Part(tuple(Segment(**segment) for segment in data["segments"]), tuple(data["blocks"]))

