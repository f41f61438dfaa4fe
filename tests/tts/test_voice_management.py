"""Voices at run time over real HTTP: listing with details and filters, Piper upload (validated by the real
PiperVoice loading it), cloning through the XTTS engine's coqui-tts double, delete, the default voice, and
which key sees which voice. Real uvicorn, real Piper on synthetic voices, real espeak-ng, real PyAV."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from core.audio import float32_to_pcm16
from core.encode import StreamEncoder
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.fixtures.speech import to_pcm16, write_wav
from tests.tts.conftest import VOICE, make_settings, serve, wait_for
from tests.tts.test_engines import CoquiTtsDouble
from tts.voice_store import CLIP_PEAK

NEW = "en_GB-upload-low"
TEXT = "Hello there."


def voice_files(tmp_path: Path, name: str = NEW, **options: Any) -> dict[str, tuple[str, bytes]]:
    """The multipart files of a Piper voice built outside the voices folder."""
    model = build_piper_voice(tmp_path / "built", name, **options)
    return {"model": (model.name, model.read_bytes()), "config": (f"{model.name}.json", Path(f"{model}.json").read_bytes())}


def listing(voices_dir: Path) -> list[str]:
    """Every file in the voices folder, hidden ones too (a staging folder left behind would show)."""
    return sorted(os.listdir(voices_dir))


def by_id(client: httpx.Client, **params: str) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/voices", params=params)
    assert response.status_code == 200, response.text
    return {voice["id"]: voice for voice in response.json()["voices"]}


def test_every_voice_of_every_engine_with_its_details(voices_dir: Path, ollama: OllamaDouble) -> None:
    build_piper_voice(voices_dir, "en_US-multi-high", num_speakers=3)
    with serve(make_settings(voices_dir, ollama.url, engines=["espeak"])) as (_, client):
        voices = by_id(client)
        piper_only = by_id(client, engine="piper")
        german = by_id(client, language="de")
        english = by_id(client, language="en_US")
    model = voices_dir / f"{VOICE}.onnx"
    assert voices[f"piper:{VOICE}"] == {
        "id": f"piper:{VOICE}", "engine": "piper", "name": VOICE, "language": "en_US", "languages": ["en_US"],
        "quality": "medium", "sample_rate": 22050, "speakers": [], "origin": "local", "loaded": True,
        "size_bytes": model.stat().st_size + Path(f"{model}.json").stat().st_size, "default": True,
        "owner": None, "shared": False, "description": "",
    }
    assert voices["piper:en_US-multi-high"]["speakers"] == ["speaker_0", "speaker_1", "speaker_2"]
    assert voices["piper:en_US-multi-high"]["loaded"] is False
    assert voices["espeak:en-us"]["default"] is True and voices["espeak:en-us"]["sample_rate"] == 22050
    assert voices["espeak:en-us"]["origin"] == "local" and voices["espeak:en-us"]["size_bytes"] is None
    assert set(piper_only) == {f"piper:{VOICE}", "piper:en_US-multi-high"}
    assert "espeak:de" in german and all(voice["engine"] == "espeak" for voice in german.values())
    assert {f"piper:{VOICE}", "piper:en_US-multi-high", "espeak:en-us"} <= set(english)
    assert "espeak:en-gb" not in english


def test_a_piper_upload_is_usable_at_once(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    files = voice_files(tmp_path)
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        added = client.post("/v1/voices", data={"name": NEW, "description": "from a test"}, files=files)
        spoken = client.post("/tts", json={"text": TEXT, "reply": False, "voice": NEW})
        again = client.post("/v1/voices", data={"name": NEW}, files=files)
        listed = by_id(client)
    assert added.status_code == 201, added.text
    voice = added.json()
    assert (voice["id"], voice["origin"], voice["description"], voice["owner"]) == (f"piper:{NEW}", "uploaded", "from a test", None)
    assert voice["size_bytes"] == len(files["model"][1]) + len(files["config"][1])
    assert spoken.headers["x-voice"] == NEW
    with wave.open(io.BytesIO(spoken.content)) as reader:
        assert reader.getnframes() == expected_samples(voices_dir / f"{NEW}.onnx", TEXT)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "voice_conflict")
    assert listed[f"piper:{NEW}"]["origin"] == "uploaded"
    assert listing(voices_dir) == sorted([f"{VOICE}.onnx", f"{VOICE}.onnx.json", f"{NEW}.onnx", f"{NEW}.onnx.json", f"{NEW}.voice.json"])


@pytest.mark.parametrize(
    ("name", "files", "status", "code", "param"),
    [
        (NEW, {"model": ("x.onnx", b"not an onnx model")}, 400, "invalid_voice", "model"),
        (NEW, {"config": ("x.onnx.json", b"{not json")}, 400, "invalid_voice", "config"),
        ("../escape", {}, 400, "invalid_voice_name", "voice"),
        ("a/b", {}, 400, "invalid_voice_name", "voice"),
    ],
)
def test_a_bad_upload_is_refused_and_leaves_nothing(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path, name: str, files: dict[str, Any], status: int, code: str, param: str
) -> None:
    before = listing(voices_dir)
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/v1/voices", data={"name": name}, files={**voice_files(tmp_path), **files})
        listed = by_id(client)
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (status, code, param)
    assert listing(voices_dir) == before and list(listed) == [f"piper:{VOICE}"]


def test_an_oversized_upload_is_refused_while_it_is_read(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    files = voice_files(tmp_path)
    limit = len(files["model"][1]) + 1024  # the config (phoneme map and all) is far larger than 1 KB
    with serve(make_settings(voices_dir, ollama.url, max_voice_upload_bytes=limit)) as (_, client):
        response = client.post("/v1/voices", data={"name": NEW}, files=files)
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (413, "request_too_large")
    assert f"over the {limit}-byte limit (tts.max_voice_upload_bytes)" in error["message"]
    assert listing(voices_dir) == [f"{VOICE}.onnx", f"{VOICE}.onnx.json"]


def test_delete_and_default(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        assert client.post("/v1/voices", data={"name": NEW}, files=voice_files(tmp_path)).status_code == 201
        local = client.delete(f"/v1/voices/piper:{VOICE}")
        made_default = client.put("/v1/voices/default", json={"voice": NEW, "engine": "piper"})
        spoken = client.post("/tts", json={"text": TEXT, "reply": False})
        refused = client.delete(f"/v1/voices/piper:{NEW}")
        assert client.put("/v1/voices/default", json={"voice": VOICE}).status_code == 200
        deleted = client.delete(f"/v1/voices/piper:{NEW}")
        gone = client.post("/tts", json={"text": TEXT, "reply": False, "voice": NEW})
        twice = client.delete(f"/v1/voices/piper:{NEW}")
        bad_id = client.delete(f"/v1/voices/{NEW}")
    assert (local.status_code, local.json()["error"]["code"]) == (409, "voice_conflict")
    assert "put into its folder by hand" in local.json()["error"]["message"]
    assert made_default.status_code == 200 and made_default.json()["default"] is True
    assert spoken.headers["x-voice"] == NEW
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "voice_conflict")
    assert "is the default voice of the piper engine" in refused.json()["error"]["message"]
    assert deleted.status_code == 204
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "voice_not_found")
    assert twice.status_code == 404
    assert bad_id.status_code == 405  # an id is ENGINE:NAME: a bare name is no voice route (the page's mount answers)
    assert listing(voices_dir) == [f"{VOICE}.onnx", f"{VOICE}.onnx.json"]


# -- cloning through the XTTS engine's double ---------------------------------------------------------


def tone(seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def flac(samples: np.ndarray, rate: int) -> bytes:
    encoder = StreamEncoder("flac", rate, rate)
    return encoder.encode(to_pcm16(samples)) + encoder.finish()


@pytest.fixture
def xtts(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> Any:
    speakers = tmp_path / "speakers"
    speakers.mkdir()
    write_wav(speakers / "default.wav", tone(4, 22050), 22050)
    model = CoquiTtsDouble()
    settings = make_settings(voices_dir, ollama.url, engines=["xtts"], xtts={"speakers_dir": str(speakers), "device": "cpu"})
    with serve(settings, engine_options={"xtts": {"model_factory": lambda s, d: model}}) as (_, client):
        yield client, speakers, model


def test_a_clip_clones_a_voice(xtts: Any) -> None:
    client, speakers, model = xtts
    clip = flac(tone(4.0, 44100), 44100)
    added = client.post("/v1/voices", data={"name": "alice", "language": "de", "description": "Alice"}, files={"file": ("a.flac", clip)})
    spoken = client.post("/tts", json={"text": TEXT, "reply": False, "engine": "xtts", "voice": "alice"})
    assert added.status_code == 201, added.text
    voice = added.json()
    assert (voice["id"], voice["engine"], voice["origin"], voice["description"]) == ("xtts:alice", "xtts", "cloned", "Alice")
    with wave.open(str(speakers / "alice.wav")) as reader:
        kept = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        assert (reader.getnchannels(), reader.getframerate()) == (1, 22050)
    assert abs(len(kept) - 4 * 22050) <= 64  # resampled from 44.1 kHz
    peak = np.frombuffer(float32_to_pcm16(np.array([CLIP_PEAK], dtype=np.float32)), dtype="<i2")[0]
    assert np.max(np.abs(kept)) == peak  # normalised to its peak
    assert spoken.status_code == 200 and spoken.headers["x-engine"] == "xtts"
    assert model.calls[-1]["speaker_wav"] == str(speakers / "alice.wav")
    assert sorted(p.name for p in speakers.iterdir()) == ["alice.voice.json", "alice.wav", "default.wav"]


@pytest.mark.parametrize(
    ("clip", "code", "says"),
    [
        (flac(tone(1.0, 22050), 22050), "invalid_voice", "the clip is 1.0 s long"),
        (flac(tone(4.0, 22050, amplitude=0.001), 22050), "invalid_voice", "too quiet to clone from"),
        (b"RIFF not really audio", "bad_audio", "cannot be read as audio"),
    ],
)
def test_a_clip_that_cannot_clone_is_refused(xtts: Any, clip: bytes, code: str, says: str) -> None:
    client, speakers, _ = xtts
    response = client.post("/v1/voices", data={"name": "bob"}, files={"file": ("b.flac", clip)})
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (400, code) and says in error["message"]
    assert sorted(p.name for p in speakers.iterdir()) == ["default.wav"]


# -- which key sees which voice ------------------------------------------------------------------------

ADMIN, ALICE, BOB = "admin-key-0123456789abcdef", "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
KEYS = [
    {"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["admin"]},
    {"name": "alice", "key": ALICE, "scopes": ["speak", "voices"]},
    {"name": "bob", "key": BOB, "scopes": ["speak", "voices"]},
]


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_an_uploaded_voice_is_its_keys_until_an_admin_shares_it(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    with serve(make_settings(voices_dir, ollama.url, auth={"keys": KEYS})) as (_, client):
        added = client.post("/v1/voices", data={"name": NEW}, files=voice_files(tmp_path), headers=key(ALICE))
        seen = {name: set(by_id_as(client, k)) for name, k in (("alice", ALICE), ("bob", BOB), ("ops", ADMIN))}
        bob_old_list = client.get("/voices", headers=key(BOB)).json()["voices"]
        alice_old_list = client.get("/voices", headers=key(ALICE)).json()["voices"]
        bob_speaks = client.post("/tts", json={"text": TEXT, "reply": False, "voice": NEW}, headers=key(BOB))
        alice_speaks = client.post("/tts", json={"text": TEXT, "reply": False, "voice": NEW}, headers=key(ALICE))
        bob_deletes = client.delete(f"/v1/voices/piper:{NEW}", headers=key(BOB))
        alice_shares = client.put(f"/v1/voices/piper:{NEW}/shared", json={"shared": True}, headers=key(ALICE))
        admin_shares = client.put(f"/v1/voices/piper:{NEW}/shared", json={"shared": True}, headers=key(ADMIN))
        bob_sees = set(by_id_as(client, BOB))
        bob_deletes_shared = client.delete(f"/v1/voices/piper:{NEW}", headers=key(BOB))
        alice_switches = client.put("/v1/engines/default", json={"engine": "piper"}, headers=key(ALICE))
        alice_defaults = client.put("/v1/voices/default", json={"voice": NEW, "engine": "piper"}, headers=key(ALICE))
        alice_deletes = client.delete(f"/v1/voices/piper:{NEW}", headers=key(ALICE))
    assert added.status_code == 201 and added.json()["owner"] == "alice"
    assert seen == {
        "alice": {f"piper:{VOICE}", f"piper:{NEW}"}, "bob": {f"piper:{VOICE}"}, "ops": {f"piper:{VOICE}", f"piper:{NEW}"}
    }
    assert (bob_old_list, alice_old_list) == ([VOICE], [NEW, VOICE])  # GET /voices too
    assert (bob_speaks.status_code, bob_speaks.json()["error"]["code"]) == (404, "voice_not_found")
    assert NEW not in bob_speaks.json()["error"]["message"].split("available voices: ")[1]
    assert alice_speaks.status_code == 200
    assert bob_deletes.status_code == 404
    assert alice_shares.status_code == 403 and admin_shares.json()["shared"] is True
    assert bob_sees == {f"piper:{VOICE}", f"piper:{NEW}"}
    assert (bob_deletes_shared.status_code, bob_deletes_shared.json()["error"]["code"]) == (403, "forbidden")
    assert alice_switches.status_code == 403 and alice_defaults.status_code == 403
    assert alice_deletes.status_code == 204


def by_id_as(client: httpx.Client, value: str) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/voices", headers=key(value))
    assert response.status_code == 200, response.text
    return {voice["id"]: voice for voice in response.json()["voices"]}


def test_uploads_past_max_voice_uploads_at_once_get_429_and_the_first_is_kept(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path
) -> None:
    files = voice_files(tmp_path)
    prepared = httpx.Request("POST", "http://x/v1/voices", data={"name": NEW}, files=files)
    body = prepared.read()
    resume = threading.Event()

    def halves() -> Iterator[bytes]:  # the first upload stops midway until the second has been refused
        yield body[: len(body) // 2]
        resume.wait(30)
        yield body[len(body) // 2 :]

    with serve(make_settings(voices_dir, ollama.url, max_voice_uploads=1)) as (server, client):
        first: dict[str, httpx.Response] = {}
        headers = {"content-type": prepared.headers["content-type"], "content-length": str(len(body))}
        sender = threading.Thread(
            target=lambda: first.update(r=client.post("/v1/voices", content=halves(), headers=headers)), daemon=True
        )
        sender.start()
        # The slot is taken before the body is read; the limiter is read directly: nothing else shows it.
        uploads = server.app.state.service.voice_manager._uploads
        wait_for(lambda: uploads.borrowed_tokens == 1)
        second = client.post("/v1/voices", data={"name": "en_GB-second-low"}, files=voice_files(tmp_path / "2", "en_GB-second-low"))
        resume.set()
        sender.join(30)
    error = second.json()["error"]
    assert (second.status_code, error["code"], second.headers["retry-after"]) == (429, "too_many_pending", "5")
    assert "1 voice uploads are being checked already (tts.max_voice_uploads)" in error["message"]
    assert first["r"].status_code == 201, first["r"].text
    assert listing(voices_dir) == sorted([f"{VOICE}.onnx", f"{VOICE}.onnx.json", f"{NEW}.onnx", f"{NEW}.onnx.json", f"{NEW}.voice.json"])


def test_a_request_picks_a_speaker_of_a_multi_speaker_voice_on_every_native_route(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    from websockets.sync.client import connect  # only this test speaks WebSocket

    build_piper_voice(voices_dir, "en_US-multi-high", num_speakers=3)
    spoken = {"text": TEXT, "reply": False, "voice": "en_US-multi-high"}
    with serve(make_settings(voices_dir, ollama.url)) as (server, client):
        first = client.post("/tts", json={**spoken, "speaker": "speaker_0"})
        third = client.post("/tts", json={**spoken, "speaker": "speaker_2"})
        default = client.post("/tts", json=spoken)
        unknown = client.post("/tts", json={**spoken, "speaker": "nobody"})
        sse = client.get("/tts/sse", params={**spoken, "reply": "false", "speaker": "speaker_2"})
        sse_unknown = client.get("/tts/sse", params={**spoken, "reply": "false", "speaker": "nobody"})
        with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as ws:
            ws.recv(timeout=10)  # connection
            ws.send('{"type": "text_input", "text": "Hello there.", "voice": "en_US-multi-high", "speaker": "nobody"}')
            ws_error = json.loads(ws.recv(timeout=10))
    assert first.status_code == third.status_code == default.status_code == 200
    assert len(first.content) == len(third.content) and first.content != third.content  # sid changes the synthetic tone
    assert default.content == first.content  # the voice's first speaker
    refusal = "voice 'en_US-multi-high' has no speaker 'nobody'; its speakers: speaker_0, speaker_1, speaker_2"
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "invalid_request")
    assert refusal in unknown.json()["error"]["message"]
    assert sse.status_code == 200 and "event: done" in sse.text
    assert sse_unknown.status_code == 422 and refusal in sse_unknown.json()["error"]["message"]
    assert (ws_error["type"], ws_error["code"]) == ("error", "invalid_request") and refusal in ws_error["message"]
