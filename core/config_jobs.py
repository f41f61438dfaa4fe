"""The `jobs` section: long documents rendered on a task queue (tts/jobs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from core.config_base import Section

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class JobsSettings(Section):
    backend: Literal["sqlite", "redis"] = "sqlite"
    """sqlite: jobs queued in a SQLite file in data_dir and run by worker threads of the TTS service; redis: the
    service only enqueues, and `python -m tts.worker` processes (on any machine) run them."""
    redis_url: SecretStr | None = None
    """The Redis server of backend redis, shared by the service and every worker (it may hold a password: never
    logged); null: redis://127.0.0.1:6379/0."""
    queue_name: str = Field("voice-assistant-jobs", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    """Name of the queue (the SQLite file's name, the Redis keys' prefix): services sharing one Redis use one name."""
    workers: int = Field(1, ge=0, le=64)
    """Worker threads that render blocks: in the TTS service with backend sqlite (0: it only enqueues), and in
    each `python -m tts.worker` process."""
    storage: Literal["files", "s3"] = "files"
    """Where results go: files in results_dir (with redis, a directory every worker shares) or an S3 bucket."""
    results_dir: Path | None = None
    """Folder of the results with storage files (relative to the project directory); null: `jobs` in data_dir."""
    s3_bucket: str = "voice-assistant-jobs"
    """Bucket of storage s3."""
    s3_prefix: str = "jobs/"
    """Key prefix of the results in the bucket."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible store (MinIO, Ceph, moto); null: AWS. Credentials come from boto3's usual places."""
    s3_region: str | None = None
    """Region of the bucket; null: boto3's default."""
    max_document_chars: int = Field(200_000, ge=1, le=10_000_000)
    """Characters of all the blocks of one job; past it 413."""
    max_queued: int = Field(100, ge=1, le=100_000)
    """Jobs queued or running at once; past it 429 (try again later)."""
    retention_s: float = Field(86_400.0, gt=0.0, le=31_536_000.0)
    """Finished jobs (done, failed, cancelled) and their audio are deleted this long after they end."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Tries of one block: a block whose worker died (or failed unexpectedly) is tried again up to this many times."""
    lease_s: float = Field(30.0, ge=0.5, le=3_600.0)
    """A worker renews its claim on a block after every sentence; a claim this old means the worker died and the
    block is queued again. Longer than the slowest sentence."""
    sentences_per_part: int = Field(8, ge=1, le=1_000)
    """Sentences of a long block rendered as one task: a chapter pasted as one text is spread over the workers."""

    def redis(self) -> str:
        return self.redis_url.get_secret_value() if self.redis_url is not None else DEFAULT_REDIS_URL
