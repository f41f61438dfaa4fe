"""Jobs distributed: a real Redis server (Debian's redis-server, started here), the TTS service only
enqueueing, and two `tts.worker` processes, one of them killed while it holds a part: the job still
completes, and its audio equals the embedded run's, byte for byte."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.config import PROJECT_ROOT
from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import VOICE, make_settings, serve, wait_for
from tests.tts.test_jobs import DOCUMENT, finished

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="Debian's redis-server is not installed (apt-get install redis-server; .ci/run does)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    command = [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*command, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=20)


def start_worker(settings: dict[str, Any], gate: Path | None = None) -> subprocess.Popen[bytes]:
    extra = [str(gate)] if gate is not None else []
    command = [sys.executable, "-m", "tests.fixtures.job_worker", json.dumps(settings), *extra]
    return subprocess.Popen(command, cwd=PROJECT_ROOT)


def test_two_workers_one_killed_mid_part_and_the_audio_equals_the_embedded_run(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path, redis_url: str
) -> None:
    embedded = make_settings(voices_dir, ollama.url, data_dir=str(tmp_path / "embedded"), jobs={"sentences_per_part": 1})
    with serve(embedded) as (_, client):
        reference_id = client.post("/v1/speech/jobs", json=DOCUMENT).json()["id"]
        assert finished(client, reference_id)["state"] == "done"
        reference = client.get(f"/v1/speech/jobs/{reference_id}/audio").content

    jobs = {"backend": "redis", "redis_url": redis_url, "results_dir": str(tmp_path / "shared"),
            "sentences_per_part": 1, "lease_s": 0.5}  # fmt: skip
    worker_settings = {
        "logging": {"level": "warning"}, "tts": {"voices_dir": str(voices_dir), "voice": VOICE},
        "data_dir": str(tmp_path / "worker"), "jobs": jobs,
    }  # fmt: skip
    gate = tmp_path / "gate"
    gate.mkdir()
    stuck = start_worker(worker_settings, gate)
    healthy: subprocess.Popen[bytes] | None = None
    try:
        with serve(make_settings(voices_dir, ollama.url, data_dir=str(tmp_path / "service"), jobs=jobs)) as (_, client):
            job_id = client.post("/v1/speech/jobs", json=DOCUMENT).json()["id"]
            wait_for(lambda: (gate / "entered").exists(), timeout=30)
            running = client.get(f"/v1/speech/jobs/{job_id}").json()
            healthy = start_worker(worker_settings)
            stuck.kill()
            done = finished(client, job_id)
            audio = client.get(f"/v1/speech/jobs/{job_id}/audio").content
            health = client.get("/health").json()["jobs"]
        healthy.terminate()  # SIGTERM: a graceful stop
        assert healthy.wait(timeout=30) == 0
    finally:
        for process in (stuck, healthy):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert running["state"] == "running" and running["progress"]["parts_done"] == 0
    assert (gate / "entered").read_text(encoding="utf-8") == "The first block has two sentences."
    assert done["state"] == "done" and done["progress"]["parts_done"] == done["progress"]["parts"] == 5
    assert audio == reference
    assert health == {"backend": "redis", "storage": "files", "open": True}
