"""Jobs embedded (huey on SQLite, worker threads in the service): life cycle, Range, cancellation, retention,
limits, a restart with queued jobs; on real uvicorn with the synthetic Piper voice (exact lengths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.tts.conftest import Gate, gated_factory, make_settings, serve, wait_for
from tests.tts.test_documents import CHAPTER
from tests.tts.test_server import read_wav
from tests.tts.test_streaming import wav_pcm

DOCUMENT = {
    "blocks": [
        {"text": "The first block has two sentences. Here is the second one.", "pause_after_ms": 400},
        {"ssml": '<speak>Then SSML.<break time="250ms"/>And a last sentence.</speak>', "speed": 1.25},
        {"text": "The end."},
    ],
    "pause_after_ms": 100,
    "format": "wav",
}
ENDED = ("done", "failed", "cancelled")
OTHER_VOICE = "en_US-other-medium"


def job_settings(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path, **jobs: Any) -> Any:
    return make_settings(
        voices_dir, ollama.url, data_dir=str(tmp_path / "data"), jobs={"sentences_per_part": 1, "workers": 2, **jobs}
    )


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it has ended (polled: the service tells no one when a job ends)."""
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(client.get(f"/v1/speech/jobs/{job_id}").json())
        return seen["state"] in ENDED

    wait_for(ended, timeout=30, what=lambda: seen)
    return seen


def test_a_job_renders_in_parts_and_its_audio_equals_the_spoken_document(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path
) -> None:
    with serve(job_settings(voices_dir, ollama, tmp_path)) as (_, client):
        spoken = client.post("/v1/speech", json=DOCUMENT)
        accepted = client.post("/v1/speech/jobs", json=DOCUMENT)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert accepted.headers["location"] == f"/v1/speech/jobs/{job['id']}"
        assert job["state"] == "queued" and job["progress"]["parts"] == 5 and job["progress"]["blocks"] == 3
        done = finished(client, job["id"])
        audio = client.get(f"/v1/speech/jobs/{job['id']}/audio")
        listed = client.get("/v1/speech/jobs").json()["jobs"]
    assert done["state"] == "done" and done["reason"] is None
    assert done["progress"] == {
        "blocks_done": 3, "blocks": 3, "parts_done": 5, "parts": 5, "audio_s": done["progress"]["audio_s"], "fraction": 1.0
    }  # fmt: skip
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.headers["accept-ranges"] == "bytes"
    # The same samples as the document spoken at once; the job's WAV is a file, with real sizes in its header.
    assert wav_pcm(audio.content)[1] == wav_pcm(spoken.content)[1]
    assert read_wav(audio.content)[3] == len(wav_pcm(audio.content)[1]) // 2
    rate, pcm = wav_pcm(audio.content)
    assert done["result"] == {"bytes": len(audio.content), "sample_rate": rate}
    # Counted in whole milliseconds per part: 5 parts, within 2.5 ms.
    assert done["progress"]["audio_s"] == pytest.approx(len(pcm) / 2 / rate, abs=0.0025)
    assert [listed_job["id"] for listed_job in listed] == [job["id"]]
    assert done["timings"]["total_s"] >= done["timings"]["queued_s"] >= 0


def test_audio_ranges(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    with serve(job_settings(voices_dir, ollama, tmp_path)) as (_, client):
        job_id = client.post("/v1/speech/jobs", json={"text": "Hello there.", "format": "flac"}).json()["id"]
        finished(client, job_id)
        url = f"/v1/speech/jobs/{job_id}/audio"
        whole = client.get(url).content
        size = len(whole)
        first = client.get(url, headers={"Range": "bytes=0-99"})
        middle = client.get(url, headers={"Range": "bytes=100-"})
        last = client.get(url, headers={"Range": "bytes=-10"})
        beyond = client.get(url, headers={"Range": f"bytes={size}-"})
        several = client.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert first.status_code == 206 and first.content == whole[:100]
    assert first.headers["content-range"] == f"bytes 0-99/{size}" and first.headers["content-length"] == "100"
    assert middle.status_code == 206 and middle.content == whole[100:]
    assert last.status_code == 206 and last.content == whole[-10:]
    assert beyond.status_code == 200 and beyond.content == whole  # outside the audio: ignored, as HTTP allows
    assert several.status_code == 200 and several.content == whole  # one range only; else the whole file


def test_cancel_a_running_job_then_remove_it(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    gate = Gate()
    with serve(job_settings(voices_dir, ollama, tmp_path, workers=1), engine_factory=gated_factory(gate)) as (_, client):
        job_id = client.post("/v1/speech/jobs", json=DOCUMENT).json()["id"]
        assert gate.entered.wait(10)
        assert client.get(f"/v1/speech/jobs/{job_id}").json()["state"] == "running"
        cancelled = client.delete(f"/v1/speech/jobs/{job_id}")
        gate.open.set()
        after = finished(client, job_id)
        not_done = client.get(f"/v1/speech/jobs/{job_id}/audio")
        removed = client.delete(f"/v1/speech/jobs/{job_id}")
        gone = client.get(f"/v1/speech/jobs/{job_id}")
        bad_id = client.get("/v1/speech/jobs/not-a-job-id")
        traversal = client.get("/v1/speech/jobs/..%2F..%2Fetc/audio")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert after["state"] == "cancelled" and after["progress"]["parts_done"] <= 1
    assert gate.sentences == ["The first block has two sentences."]  # it stopped before the next sentence
    assert not_done.status_code == 409 and not_done.json()["error"]["code"] == "job_not_done"
    assert removed.status_code == 204
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"
    assert bad_id.status_code == 400 and bad_id.json()["error"]["code"] == "invalid_request"
    assert traversal.status_code == 404


def test_limits(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    gate = Gate()
    settings = job_settings(voices_dir, ollama, tmp_path, workers=1, max_queued=1, max_document_chars=100)
    with serve(settings, engine_factory=gated_factory(gate)) as (_, client):
        first = client.post("/v1/speech/jobs", json={"text": "Hold the worker."})
        second = client.post("/v1/speech/jobs", json={"text": "No room."})
        too_long = client.post("/v1/speech/jobs", json={"text": "x" * 101})
        gate.open.set()
        finished(client, first.json()["id"])
        third = client.post("/v1/speech/jobs", json={"text": "Room again."})
    assert first.status_code == 202
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_pending"
    assert "1 jobs are queued or running (jobs.max_queued)" in second.json()["error"]["message"]
    assert too_long.status_code == 413 and "jobs.max_document_chars" in too_long.json()["error"]["message"]
    assert third.status_code == 202


def test_ended_jobs_are_deleted_after_the_retention(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    settings = job_settings(voices_dir, ollama, tmp_path, retention_s=0.2, lease_s=0.5)
    with serve(settings) as (_, client):
        job_id = client.post("/v1/speech/jobs", json={"text": "Short lived."}).json()["id"]
        finished(client, job_id)
        wait_for(lambda: client.get(f"/v1/speech/jobs/{job_id}").status_code == 404, timeout=10)
        listed = client.get("/v1/speech/jobs").json()
    assert listed == {"jobs": []}
    assert not (tmp_path / "data" / "jobs" / job_id).exists()


def test_queued_jobs_survive_a_restart(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    # The first service only enqueues (no worker threads); the second, on the same data_dir, renders.
    with serve(job_settings(voices_dir, ollama, tmp_path, workers=0)) as (_, client):
        job_id = client.post("/v1/speech/jobs", json=DOCUMENT).json()["id"]
        spoken = client.post("/v1/speech", json=DOCUMENT).content
        assert client.get(f"/v1/speech/jobs/{job_id}").json()["state"] == "queued"
    with serve(job_settings(voices_dir, ollama, tmp_path)) as (_, client):
        done = finished(client, job_id)
        audio = client.get(f"/v1/speech/jobs/{job_id}/audio").content
    assert done["state"] == "done"
    assert wav_pcm(audio)[1] == wav_pcm(spoken)[1]


def test_a_job_whose_voice_vanished_fails_with_the_reason(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    build_piper_voice(voices_dir, OTHER_VOICE)
    with serve(job_settings(voices_dir, ollama, tmp_path, workers=0)) as (_, client):
        job_id = client.post("/v1/speech/jobs", json={"text": "Hello there.", "voice": OTHER_VOICE}).json()["id"]
    for path in voices_dir.glob(f"{OTHER_VOICE}.onnx*"):
        path.unlink()
    with serve(job_settings(voices_dir, ollama, tmp_path)) as (_, client):
        failed = finished(client, job_id)
    assert failed["state"] == "failed"
    assert failed["reason"].startswith(f"block 0: unknown voice '{OTHER_VOICE}' for the piper engine"), failed


def test_a_chapter_pasted_as_one_text_is_spread_over_parts(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    chapter = {"text": CHAPTER, "format": "wav"}
    with serve(job_settings(voices_dir, ollama, tmp_path)) as (_, client):
        spoken = client.post("/v1/speech", json=chapter).content
        job = client.post("/v1/speech/jobs", json=chapter).json()
        done = finished(client, job["id"])
        audio = client.get(f"/v1/speech/jobs/{job['id']}/audio").content
    assert (job["progress"]["blocks"], job["progress"]["parts"]) == (1, 4)  # one sentence a part
    assert done["state"] == "done" and done["progress"]["blocks_done"] == 1
    assert wav_pcm(audio)[1] == wav_pcm(spoken)[1]


def test_blocks_of_two_engines_speak_each_with_its_own_also_in_a_job_after_a_restart(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path
) -> None:
    # The second service never loaded espeak for a request: the job's part loads it (lazily, tts.preload off).
    document = {"blocks": [{"text": "Hello there.", "pause_after_ms": 300}, {"text": "Good night.", "engine": "espeak"}], "format": "wav"}
    two_engines = {"engines": ["espeak"], "data_dir": str(tmp_path / "data")}
    with serve(make_settings(voices_dir, ollama.url, **two_engines, jobs={"workers": 0})) as (_, client):
        spoken = client.post("/v1/speech", json=document)
        piper = client.post("/tts", json={"text": "Hello there.", "reply": False})
        espeak = client.post("/tts", json={"text": "Good night.", "reply": False, "engine": "espeak"})
        job_id = client.post("/v1/speech/jobs", json=document).json()["id"]
    with serve(make_settings(voices_dir, ollama.url, **two_engines, jobs={"workers": 1})) as (_, client):
        # No request names espeak here: only the job's part can load it (without that it waits forever).
        done = finished(client, job_id)
        audio = client.get(f"/v1/speech/jobs/{job_id}/audio")
    assert spoken.status_code == 200, spoken.text
    assert done["state"] == "done", done
    piper_pcm, espeak_pcm = wav_pcm(piper.content)[1], wav_pcm(espeak.content)[1]
    pause = bytes(2 * round(0.3 * 22050))
    for rendered in (wav_pcm(spoken.content)[1], wav_pcm(audio.content)[1]):
        assert rendered.startswith(piper_pcm + pause)
        rest = rendered[len(piper_pcm + pause) :]
        # espeak-ng's length differs by a few milliseconds from run to run; the synthetic Piper voice's is
        # nowhere near it (a block spoken by the wrong engine would show here).
        assert abs(len(rest) - len(espeak_pcm)) <= len(espeak_pcm) // 50 and any(rest)
    assert abs(len(piper_pcm) - len(espeak_pcm)) > len(espeak_pcm) // 10


def test_a_job_is_its_keys_and_the_admins(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    keys = [
        {"name": "ops", "key": "admin-key-0123456789abcdef", "scopes": ["admin"]},
        {"name": "alice", "key": "alice-key-0123456789abcdef", "scopes": ["speak"]},
        {"name": "bob", "key": "bob-key-0123456789abcdef", "scopes": ["speak"]},
    ]
    alice, bob, ops = ({"Authorization": f"Bearer {key['key']}"} for key in (keys[1], keys[2], keys[0]))
    settings = make_settings(voices_dir, ollama.url, data_dir=str(tmp_path / "data"), jobs={"workers": 0}, auth={"keys": keys})
    with serve(settings) as (_, client):
        submitted = client.post("/v1/speech/jobs", json=DOCUMENT, headers=alice)
        job_id = submitted.json()["id"]
        lists = {name: client.get("/v1/speech/jobs", headers=h).json()["jobs"] for name, h in (("alice", alice), ("bob", bob), ("ops", ops))}
        bob_reads = client.get(f"/v1/speech/jobs/{job_id}", headers=bob)
        bob_audio = client.get(f"/v1/speech/jobs/{job_id}/audio", headers=bob)
        bob_cancels = client.delete(f"/v1/speech/jobs/{job_id}", headers=bob)
        still_queued = client.get(f"/v1/speech/jobs/{job_id}", headers=alice).json()["state"]
        ops_cancels = client.delete(f"/v1/speech/jobs/{job_id}", headers=ops)
    assert submitted.status_code == 202 and submitted.json()["owner"] == "alice"
    assert [job["id"] for job in lists["alice"]] == [job["id"] for job in lists["ops"]] == [job_id]
    assert lists["bob"] == []
    # Another key's job is answered as if there were none: its id tells bob nothing.
    for response in (bob_reads, bob_audio, bob_cancels):
        assert (response.status_code, response.json()["error"]["code"]) == (404, "job_not_found")
    assert still_queued == "queued"
    assert ops_cancels.status_code == 200 and ops_cancels.json()["state"] == "cancelled"


def test_no_engine_is_unloaded_for_idleness_while_a_job_renders(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    # Job threads speak without a turn: the idle sweep must see them (else it unloads the engine mid-job).
    gate, now = Gate(), [1000.0]
    settings = make_settings(
        voices_dir, ollama.url, data_dir=str(tmp_path / "data"), engines=["espeak"], idle_unload_s=60, jobs={"workers": 1}
    )
    with serve(settings, engine_factory=gated_factory(gate)) as (server, client):
        server.app.state.service.engines.clock = lambda: now[0]
        job_id = client.post("/v1/speech/jobs", json=DOCUMENT).json()["id"]
        assert gate.entered.wait(10)
        now[0] += 61  # piper idle for turns; the espeak request below runs the sweep
        during = client.post("/tts", json={"text": "Hello there.", "reply": False, "engine": "espeak"})
        states_during = {e["name"]: e["state"] for e in client.get("/v1/engines").json()["engines"]}
        gate.open.set()
        done = finished(client, job_id)
        now[0] += 61
        client.post("/tts", json={"text": "Hello there.", "reply": False, "engine": "espeak"})
        states_after = {e["name"]: e["state"] for e in client.get("/v1/engines").json()["engines"]}
    assert during.status_code == 200 and done["state"] == "done"
    assert states_during["piper"] == "ready"
    assert states_after["piper"] == "unloaded"  # the sweep works once the job is done
