"""jobs.storage s3: the results of jobs in an S3-compatible object store, here moto's server (a real HTTP
S3 API on 127.0.0.1, started by the test) through boto3."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import make_settings, serve, wait_for
from tests.tts.test_jobs import DOCUMENT, finished
from tests.tts.test_streaming import wav_pcm

BUCKET = "speech-results"


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    # boto3 reads its credentials from the environment, in the service (this process) as in a worker.
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    try:
        wait_for(answers, timeout=30)
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_results_go_to_the_bucket_and_are_served_from_it(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path, s3_url: str
) -> None:
    jobs = {"storage": "s3", "s3_endpoint_url": s3_url, "s3_bucket": BUCKET, "s3_prefix": "speech/", "sentences_per_part": 1}
    bucket = boto3.client("s3", endpoint_url=s3_url)
    with serve(make_settings(voices_dir, ollama.url, data_dir=str(tmp_path / "data"), jobs=jobs)) as (_, client):
        spoken = client.post("/v1/speech", json=DOCUMENT).content
        job_id = client.post("/v1/speech/jobs", json=DOCUMENT).json()["id"]
        done = finished(client, job_id)
        audio = client.get(f"/v1/speech/jobs/{job_id}/audio")
        ranged = client.get(f"/v1/speech/jobs/{job_id}/audio", headers={"Range": "bytes=44-143"})
        stored = [item["Key"] for item in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]]
        object_bytes = bucket.get_object(Bucket=BUCKET, Key=f"speech/{job_id}/audio")["Body"].read()
        removed = client.delete(f"/v1/speech/jobs/{job_id}")
        left = bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert done["state"] == "done"
    assert wav_pcm(audio.content)[1] == wav_pcm(spoken)[1]
    assert ranged.status_code == 206 and ranged.content == audio.content[44:144]
    assert stored == [f"speech/{job_id}/audio"]  # the parts were removed once joined
    assert object_bytes == audio.content
    assert removed.status_code == 204 and left == []


def test_a_store_that_refuses_the_result_fails_the_job_with_the_reason(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path, s3_url: str) -> None:
    jobs = {"storage": "s3", "s3_endpoint_url": s3_url, "s3_bucket": "no-such-bucket", "workers": 1, "max_attempts": 2}
    with serve(make_settings(voices_dir, ollama.url, data_dir=str(tmp_path / "data"), jobs=jobs)) as (_, client):
        job_id = client.post("/v1/speech/jobs", json={"text": "Hello there."}).json()["id"]
        failed = finished(client, job_id)
    assert failed["state"] == "failed"
    assert failed["reason"] == (
        "block 0 failed 2 times (jobs.max_attempts): the job storage failed (NoSuchBucket); "
        "check jobs.storage and its settings"
    )
