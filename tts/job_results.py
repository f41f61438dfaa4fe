"""Where the jobs' audio goes: files in a folder (on one machine, or one every worker shares), or an
S3-compatible object store through boto3 (jobs.storage). Blocking: the job workers call it from their
threads, the HTTP adapter through anyio.to_thread.

Writes are atomic: a file is written beside its final name and renamed over it; an S3 object appears
whole when its PUT completes. A reader never sees half a result.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Protocol

from core.config import Settings


def _unreachable() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, sqlite3.Error]
    try:
        import redis.exceptions

        errors.append(redis.exceptions.RedisError)
    except ImportError:  # backend sqlite without the redis package
        pass
    try:
        import botocore.exceptions

        errors.extend([botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError])
    except ImportError:  # storage files without boto3
        pass
    return tuple(errors)


UNREACHABLE = _unreachable()
"""What a storage (the queue's SQLite file or Redis server, a results folder, an S3 store) raises when it
cannot be reached or refuses a request."""


class Results(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def size(self, key: str) -> int | None:
        """Bytes of `key`, or None when there is none."""

    def read(self, key: str, start: int, length: int) -> bytes: ...

    def remove(self, key: str) -> None: ...

    def delete(self, prefix: str) -> None:
        """Everything under `prefix/` (a job's folder)."""


class FileResults:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, key: str, start: int, length: int) -> bytes:
        with self._path(key).open("rb") as file:
            file.seek(start)
            return file.read(length)

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class S3Results:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()  # type: ignore[no-any-return]

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)["ContentLength"])
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def read(self, key: str, start: int, length: int) -> bytes:
        answer = self.client.get_object(
            Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={start}-{start + length - 1}"
        )
        return answer["Body"].read()  # type: ignore[no-any-return]

    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def delete(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}{prefix}/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})


def open_results(settings: Settings) -> Results:
    jobs = settings.jobs
    if jobs.storage == "s3":
        import boto3  # only with storage s3: most installs never need it

        client = boto3.client("s3", endpoint_url=jobs.s3_endpoint_url, region_name=jobs.s3_region)
        return S3Results(client, jobs.s3_bucket, jobs.s3_prefix)
    folder = jobs.results_dir if jobs.results_dir is not None else settings.data_dir / "jobs"
    return FileResults(settings.resolve_path(folder))
