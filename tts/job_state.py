"""The state of every job, kept in huey's storage beside its queue (SQLite or Redis), so the service and
every worker see one truth. No key has two writers racing on it: markers are set once (`put_if_empty`),
progress is counted with atomic counters (`incr`), a part's lease belongs to the worker rendering it, and
the list of jobs is written by the service only. A job's state follows from which markers exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from huey.api import Huey

INDEX = "jobs:index"


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: str
    """queued, running, done, failed or cancelled."""
    reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    blocks: int
    blocks_done: int
    parts: int
    parts_done: int
    audio_s: float
    render_s: float
    format: str
    sample_rate: int | None
    bytes: int | None
    warnings: list[str]
    owner: str | None
    """The name of the key that submitted it (None: keys were off); other keys but admins do not see it."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON of GET /v1/speech/jobs/{id}."""

        def since(moment: float | None, start: float | None) -> float | None:
            return None if moment is None or start is None else round(moment - start, 3)

        return {
            "id": self.id,
            "state": self.state,
            "reason": self.reason,
            "format": self.format,
            "progress": {
                "blocks_done": self.blocks_done, "blocks": self.blocks, "parts_done": self.parts_done,
                "parts": self.parts, "audio_s": round(self.audio_s, 3),
                "fraction": round(self.parts_done / self.parts, 4) if self.parts else 1.0,
            },
            "timings": {
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "queued_s": since(self.started_at, self.created_at), "render_s": round(self.render_s, 3),
                "total_s": since(self.finished_at, self.created_at),
            },
            "result": None if self.bytes is None else {"bytes": self.bytes, "sample_rate": self.sample_rate},
            "warnings": self.warnings,
            "owner": self.owner,
        }  # fmt: skip


class JobBook:
    def __init__(self, huey: Huey) -> None:
        self.huey = huey
        self.storage = huey.storage

    @staticmethod
    def _key(job_id: str, name: str) -> str:
        return f"job:{job_id}:{name}"

    def _get(self, job_id: str, name: str) -> Any:
        return self.huey.get(self._key(job_id, name), peek=True)

    def _count(self, job_id: str, name: str, amount: int = 0) -> int:
        return int(self.storage.incr(self._key(job_id, name), amount))

    def create(self, spec: dict[str, Any]) -> None:
        self.huey.put(self._key(spec["id"], "spec"), spec)

    def spec(self, job_id: str) -> dict[str, Any] | None:
        return self._get(job_id, "spec")  # type: ignore[no-any-return]

    def mark_started(self, job_id: str) -> None:
        self.huey.put_if_empty(self._key(job_id, "started"), time.time())

    def claim(self, job_id: str, index: int, attempt: int, lease_s: float) -> None:
        self.huey.put(self._key(job_id, f"lease:{index}"), (time.time() + lease_s, attempt))

    def release(self, job_id: str, index: int) -> None:
        self.huey.delete(self._key(job_id, f"lease:{index}"))

    def leases(self, job_id: str, parts: int) -> dict[int, tuple[float, int]]:
        """(expiry, attempt) of each part claimed by a worker now."""
        found = {index: self._get(job_id, f"lease:{index}") for index in range(parts)}
        return {index: lease for index, lease in found.items() if lease is not None}

    def part_is_done(self, job_id: str, index: int) -> bool:
        return bool(self.storage.has_data_for_key(self._key(job_id, f"done:{index}")))

    def part_done(self, job_id: str, index: int, render_s: float, audio_s: float) -> int | None:
        """Count a part done once (a retried part may finish twice): the parts done now, or None."""
        if not self.huey.put_if_empty(self._key(job_id, f"done:{index}"), True):
            return None
        self._count(job_id, "render_ms", round(render_s * 1000))
        self._count(job_id, "audio_ms", round(audio_s * 1000))
        return self._count(job_id, "parts_done", 1)

    def fail(self, job_id: str, reason: str) -> None:
        self.huey.put_if_empty(self._key(job_id, "failed"), (reason, time.time()))

    def cancel(self, job_id: str) -> None:
        self.huey.put_if_empty(self._key(job_id, "cancelled"), time.time())

    def ended(self, job_id: str) -> bool:
        """Failed or cancelled (or deleted): its parts stop."""
        return any(self.storage.has_data_for_key(self._key(job_id, name)) for name in ("failed", "cancelled")) or (
            not self.storage.has_data_for_key(self._key(job_id, "spec"))
        )

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self.huey.put(self._key(job_id, "result"), {**result, "finished_at": time.time()})

    def result(self, job_id: str) -> dict[str, Any] | None:
        return self._get(job_id, "result")  # type: ignore[no-any-return]

    def status(self, job_id: str) -> JobStatus | None:
        spec = self.spec(job_id)
        if spec is None:
            return None
        failed, cancelled, result = self._get(job_id, "failed"), self._get(job_id, "cancelled"), self.result(job_id)
        started = self._get(job_id, "started")
        state, reason, finished = "queued" if started is None else "running", None, None
        if failed is not None:
            state, (reason, finished) = "failed", failed
        elif cancelled is not None:
            state, finished = "cancelled", cancelled
        elif result is not None:
            state, finished = "done", result["finished_at"]
        parts = spec["parts"]
        done = {index for index in range(len(parts)) if self.part_is_done(job_id, index)}
        undone = {block for index, part in enumerate(parts) if index not in done for block in part["blocks"]}
        return JobStatus(
            job_id, state, reason, spec["created_at"], started, finished, spec["blocks"],
            spec["blocks"] - len(undone), len(parts), len(done), self._count(job_id, "audio_ms") / 1000,
            self._count(job_id, "render_ms") / 1000, spec["format"], None if result is None else result["sample_rate"],
            None if result is None or state != "done" else result["bytes"], spec["warnings"], spec.get("owner"),
        )  # fmt: skip

    def delete(self, job_id: str, parts: int) -> None:
        names = ["spec", "started", "failed", "cancelled", "result"]
        names += [f"{kind}:{index}" for index in range(parts) for kind in ("lease", "done")]
        for name in names:
            self.huey.delete(self._key(job_id, name))
        for name in ("parts_done", "audio_ms", "render_ms"):
            self.storage.delete_counter(self._key(job_id, name))

    # The list of jobs: written by the service only (under its lock), read by anyone.

    def index(self) -> list[str]:
        return self.huey.get(INDEX, peek=True) or []  # type: ignore[no-any-return]

    def index_add(self, job_id: str) -> None:
        self.huey.put(INDEX, [*self.index(), job_id])

    def index_remove(self, job_id: str) -> None:
        self.huey.put(INDEX, [known for known in self.index() if known != job_id])
