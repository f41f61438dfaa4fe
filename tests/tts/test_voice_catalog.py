"""The Piper voice catalog against a real HTTP double of Piper's voice repository (voices.json in Piper's
format, real voice files): listing, a download watched through its progress events and then spoken with,
a digest mismatch and an interrupted download that leave nothing behind. Real uvicorn, real Piper."""

from __future__ import annotations

import io
import json
import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_catalog import PiperCatalogDouble
from tests.fixtures.piper_voice import expected_samples
from tests.tts.conftest import VOICE, make_settings, serve

NEW = "en_GB-alba-medium"
OTHER = "de_DE-thorsten-low"
TEXT = "Hello there."


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[PiperCatalogDouble]:
    double = PiperCatalogDouble(tmp_path / "repository", [NEW, OTHER]).start()
    yield double
    double.behaviour.release.set()
    double.stop()


@pytest.fixture
def client(voices_dir: Path, ollama: OllamaDouble, repository: PiperCatalogDouble) -> Iterator[httpx.Client]:
    piper = {"catalog_url": f"{repository.url}/voices.json", "download_base_url": f"{repository.url}/"}
    with serve(make_settings(voices_dir, ollama.url, piper=piper)) as (_, http):
        yield http


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            assert name is not None
            yield name, json.loads(line[len("data: ") :])


def size(repository: PiperCatalogDouble, name: str, suffix: str) -> int:
    return next(len(data) for path, data in repository.files.items() if path.endswith(f"/{name}{suffix}"))


def test_the_catalog_lists_piper_voices_json(client: httpx.Client, repository: PiperCatalogDouble) -> None:
    listed = client.get("/v1/voices/catalog").json()["voices"]
    german = client.get("/v1/voices/catalog", params={"language": "de"}).json()["voices"]
    again = client.get("/v1/voices/catalog")
    assert [voice["id"] for voice in listed] == [OTHER, NEW]
    alba = listed[1]
    files = sorted(path for path in repository.files if f"/{NEW}." in path)
    assert alba == {
        "id": NEW, "name": "alba", "language": "en_GB", "language_name": "English", "quality": "medium",
        "num_speakers": 1, "size_bytes": size(repository, NEW, ".onnx") + size(repository, NEW, ".onnx.json"),
        "files": [
            {"path": path, "size_bytes": len(repository.files[path]), "md5_digest": repository.catalog_digest(path)}
            for path in reversed(files)  # the config first
        ],
        "installed": False,
    }
    assert [voice["id"] for voice in german] == [OTHER]
    assert again.status_code == 200 and repository.requests.count("voices.json") == 1  # cached


def test_a_download_reports_progress_and_is_spoken_with_at_once(
    client: httpx.Client, repository: PiperCatalogDouble, voices_dir: Path
) -> None:
    repository.behaviour.hold.add(f"{NEW}.onnx")
    config, model = size(repository, NEW, ".onnx.json"), size(repository, NEW, ".onnx")
    started = client.post("/v1/voices/download", json={"id": NEW})
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["location"] == f"/v1/voices/download/{job['id']}"
    assert (job["voice"], job["bytes_total"], job["error"]) == (NEW, config + model, None)
    seen: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/voices/download/{job['id']}/events") as stream:
        for name, data in events(stream):
            seen.append({"event": name, **data})
            if data["bytes_done"] == config + model // 2:
                held = client.get(f"/v1/voices/download/{job['id']}").json()
                listed_while_held = client.get("/v1/voices", params={"engine": "piper"}).json()["voices"]
                repository.behaviour.release.set()
    assert (held["state"], held["bytes_done"]) == ("downloading", config + model // 2)
    assert [voice["name"] for voice in listed_while_held] == [VOICE]  # no half voice is ever listed
    assert {event["event"] for event in seen[:-1]} == {"progress"}
    assert [event["bytes_done"] for event in seen] == sorted(event["bytes_done"] for event in seen)
    assert (seen[-1]["event"], seen[-1]["state"], seen[-1]["bytes_done"]) == ("done", "done", config + model)
    spoken = client.post("/tts", json={"text": TEXT, "reply": False, "voice": NEW})
    with wave.open(io.BytesIO(spoken.content)) as reader:
        assert reader.getnframes() == expected_samples(voices_dir / f"{NEW}.onnx", TEXT)
    voice = {v["id"]: v for v in client.get("/v1/voices").json()["voices"]}[f"piper:{NEW}"]
    assert (voice["origin"], voice["size_bytes"]) == ("downloaded", config + model)
    catalog = {v["id"]: v["installed"] for v in client.get("/v1/voices/catalog").json()["voices"]}
    assert catalog == {NEW: True, OTHER: False}
    assert (client.post("/v1/voices/download", json={"id": NEW}).json()["error"]["code"]) == "voice_conflict"


@pytest.mark.parametrize(
    ("break_it", "code", "says"),
    [
        (lambda b: b.wrong_digest.add(f"{NEW}.onnx"), "invalid_voice", "does not match the catalog"),
        (lambda b: b.cut.add(f"{NEW}.onnx"), "catalog_unavailable", "nothing was kept"),
    ],
    ids=["digest_mismatch", "interrupted"],
)
def test_a_broken_download_leaves_nothing_behind(
    client: httpx.Client, repository: PiperCatalogDouble, voices_dir: Path, break_it: Any, code: str, says: str
) -> None:
    break_it(repository.behaviour)
    job = client.post("/v1/voices/download", json={"id": NEW}).json()
    with client.stream("GET", f"/v1/voices/download/{job['id']}/events") as stream:
        last = list(events(stream))[-1]
    assert last[0] == "error" and last[1]["state"] == "failed"
    assert last[1]["error"]["code"] == code and says in last[1]["error"]["message"]
    assert sorted(os.listdir(voices_dir)) == [f"{VOICE}.onnx", f"{VOICE}.onnx.json"]
    assert [voice["name"] for voice in client.get("/v1/voices").json()["voices"]] == [VOICE]
    assert client.get(f"/v1/voices/download/{job['id']}").json()["state"] == "failed"


def test_unknown_voices_and_jobs(client: httpx.Client) -> None:
    unknown = client.post("/v1/voices/download", json={"id": "xx_XX-nobody-low"})
    no_job = client.get("/v1/voices/download/0123456789abcdef")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "voice_not_found")
    assert f"available voices: {OTHER}, {NEW}" in unknown.json()["error"]["message"]
    assert (no_job.status_code, no_job.json()["error"]["code"]) == (404, "not_found")


def test_an_unreachable_catalog_says_which_setting(voices_dir: Path, ollama: OllamaDouble) -> None:
    piper = {"catalog_url": "http://127.0.0.1:9/voices.json"}
    with serve(make_settings(voices_dir, ollama.url, piper=piper)) as (_, http):
        response = http.get("/v1/voices/catalog")
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (502, "catalog_unavailable")
    assert error["message"].startswith("the Piper voice catalog at http://127.0.0.1:9/voices.json cannot be read (")
    assert error["message"].endswith("check tts.piper.catalog_url and the network")


def test_a_catalog_error_names_no_secret_of_its_url(
    voices_dir: Path, ollama: OllamaDouble, repository: PiperCatalogDouble
) -> None:
    # httpx words a status error with the whole URL, userinfo and query included; the client gets the status.
    host = repository.url.split("://", 1)[1]
    piper = {"catalog_url": f"http://reader:s3cret-pw@{host}/missing.json?token=s3cret-token"}
    with serve(make_settings(voices_dir, ollama.url, piper=piper)) as (_, http):
        response = http.get("/v1/voices/catalog")
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (502, "catalog_unavailable")
    assert f"the Piper voice catalog at http://{host}/missing.json cannot be read (HTTP 404)" in error["message"]
    assert "s3cret" not in response.text
