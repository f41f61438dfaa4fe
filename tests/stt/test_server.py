"""The STT service over real HTTP and WebSocket: a uvicorn server, the toy model, espeak speech."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from faster_whisper.tokenizer import _LANGUAGE_CODES
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from core.config import Settings
from stt.server import SttService, create_app
from tests.fixtures.held_transcription import transcriptions_held_until_stopped
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.speech import make_speech, to_pcm16

FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16, what a microphone client sends
PHRASE = "Please turn on the lights in the kitchen."


@contextmanager
def stt_server(settings: Settings, before_start: Callable[[SttService], None] | None = None) -> Iterator[RunningServer]:
    app = create_app(settings)
    if before_start:
        before_start(app.state.service)
    with run_server(app) as server:
        yield server


def model_load_held_by(gate: threading.Event) -> Callable[[SttService], None]:
    """A `before_start` that holds the model load until `gate` is set: transcription then lags behind the audio
    deterministically (this replaces our own loader hook, not faster-whisper), and utterances queue."""

    def hold(service: SttService) -> None:
        load = service.model.load

        async def gated() -> None:
            await anyio.to_thread.run_sync(gate.wait, abandon_on_cancel=True)
            await load()

        service.model.load = gated  # type: ignore[method-assign]

    return hold


def wait_until_settled(server: RunningServer) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.http_url}/health").json()
        if not health["loading"]:
            return health
        time.sleep(0.02)
    raise AssertionError("model never finished loading")


@contextmanager
def session(server: RunningServer) -> Iterator[ClientConnection]:
    with connect(f"{server.ws_url}/ws/stt", open_timeout=10) as ws:
        ready = receive(ws)
        assert ready["type"] == "ready"
        yield ws


NOTICES = {"speech_started", "speech_ended", "partial"}


def receive(ws: ClientConnection, timeout: float = 30, notices: bool = False) -> dict[str, Any]:
    """The next message; speech notices and partials are skipped unless asked for."""
    while True:
        message = json.loads(ws.recv(timeout=timeout))
        if notices or message["type"] not in NOTICES:
            return message


def stream(ws: ClientConnection, audio: np.ndarray) -> None:
    pcm = to_pcm16(audio)
    for offset in range(0, len(pcm), FRAME_BYTES):
        ws.send(pcm[offset : offset + FRAME_BYTES])


def send_json(ws: ClientConnection, message: dict[str, Any]) -> None:
    ws.send(json.dumps(message))


@pytest.fixture
def server(make_settings) -> Iterator[RunningServer]:
    with stt_server(make_settings(stt={"endpoint_silence_ms": 500})) as running:
        wait_until_settled(running)
        yield running


def test_health_reports_the_loaded_model(server: RunningServer, whisper_model_dir) -> None:
    response = httpx.get(f"{server.http_url}/health")
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    health = response.json()
    assert health["status"] == "ok"
    assert health["whisper_loaded"] is True
    assert health["error"] is None
    assert health["model"] == whisper_model_dir.name  # its name only, never the server's directories
    assert (health["device"], health["compute_type"]) == ("cpu", "int8")
    assert health["environment"] == "development"
    assert health["connections"] == 0


def test_ready_message_describes_the_session(server: RunningServer, whisper_model_dir) -> None:
    with connect(f"{server.ws_url}/ws/stt") as ws:
        ready = receive(ws)
    assert ready["type"] == "ready"
    assert len(ready["session_id"]) == 12
    # The model's name only: a client does not learn the server's directories.
    assert (ready["sample_rate"], ready["language"], ready["model"]) == (16000, None, whisper_model_dir.name)


def test_speech_followed_by_silence_gives_one_transcript(server: RunningServer) -> None:
    audio = make_speech(PHRASE, lead_silence_s=0.6, trail_silence_s=1.0)
    with session(server) as ws:
        stream(ws, audio)
        message = receive(ws)
        assert message["type"] == "transcript"
        assert message["reason"] == "silence"
        assert message["keep_open"] is True
        assert message["language"] in _LANGUAGE_CODES
        # The utterance spans the speech plus at most the configured 300 ms pads on each side.
        speech_seconds = len(audio) / 16000 - 1.6
        assert speech_seconds - 0.2 <= message["duration"] <= speech_seconds + 0.7
        assert 0.2 <= message["start"] <= 0.6
        assert isinstance(message["text"], str)
        assert all(set(s) == {"start", "end", "text"} for s in message["segments"])
        send_json(ws, {"type": "end"})
        assert receive(ws) == {"type": "no_speech", "duration": pytest.approx(0.7, abs=0.35)}


def test_end_flushes_the_utterance_without_waiting_for_silence(server: RunningServer) -> None:
    audio = make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.0)
    with session(server) as ws:
        stream(ws, audio)
        send_json(ws, {"type": "end"})
        message = receive(ws)
    assert (message["type"], message["reason"]) == ("transcript", "end")
    # The utterance runs from its pre-roll to the very last sample sent, tail shorter than a VAD window included.
    assert message["duration"] == pytest.approx(len(audio) / 16000 - message["start"], abs=0.002)


def test_silence_never_produces_a_transcript(server: RunningServer) -> None:
    with session(server) as ws:
        stream(ws, np.zeros(16000 * 3, dtype=np.float32))
        send_json(ws, {"type": "end"})
        assert receive(ws) == {"type": "no_speech", "duration": 3.0}


def test_odd_frame_is_refused_and_the_connection_stays_usable(server: RunningServer) -> None:
    with session(server) as ws:
        ws.send(b"\x00\x01\x02")
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == "bad_audio"
        assert "odd byte count (3)" in error["message"]
        stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
        assert receive(ws)["type"] == "transcript"


def test_frame_over_the_limit_is_refused(make_settings) -> None:
    with stt_server(make_settings(stt={"max_frame_bytes": 4096})) as server, session(server) as ws:
        ws.send(bytes(4098))
        error = receive(ws)
        assert error["code"] == "request_too_large"
        assert "4098 bytes is over the 4096-byte limit (stt.max_frame_bytes)" in error["message"]
        ws.send(bytes(4096))
        send_json(ws, {"type": "end"})
        assert receive(ws)["type"] == "no_speech"


@pytest.mark.parametrize(
    ("text", "code", "expected"),
    [
        ("not json", "invalid_json", "not valid JSON"),
        ("[1, 2]", "bad_message", 'JSON object with a "type"'),
        ('{"type": "shout"}', "bad_message", "unknown message type 'shout'; known types: config, end, reset"),
        ('{"type": "end", "now": true}', "invalid_request", "invalid 'end' message: unknown field 'now'"),
        ('{"type": "config", "language": "xx"}', "invalid_request", "unknown language 'xx'"),
        ('{"type": "config", "partials": "yes"}', "invalid_request", "'partials': Input should be a valid boolean"),
        (
            '{"type": "config", "language": "' + "a" * 5000 + '"}',
            "request_too_large",
            "over the 4096-byte limit (stt.max_message_bytes)",
        ),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_stays_open(
    server: RunningServer, text: str, code: str, expected: str
) -> None:
    with session(server) as ws:
        ws.send(text)
        error = receive(ws)
        assert set(error) == {"type", "code", "message"}
        assert (error["type"], error["code"]) == ("error", code)
        assert expected in error["message"]
        send_json(ws, {"type": "end"})
        assert receive(ws)["type"] == "no_speech"


def test_config_sets_the_language_of_following_utterances(server: RunningServer) -> None:
    with session(server) as ws:
        send_json(ws, {"type": "config", "language": "de"})
        assert receive(ws) == {"type": "config_applied", "language": "de", "word_timestamps": False, "partials": True}
        stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
        message = receive(ws)
    assert (message["type"], message["language"], message["language_probability"]) == ("transcript", "de", 1.0)


def test_reset_drops_buffered_audio(server: RunningServer) -> None:
    audio = make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.0)
    with session(server) as ws:
        stream(ws, audio[: len(audio) * 2 // 3])
        send_json(ws, {"type": "reset"})
        reset = receive(ws)
        assert reset["type"] == "reset_done"
        assert reset["dropped_seconds"] > 0.5
        send_json(ws, {"type": "end"})
        assert receive(ws) == {"type": "no_speech", "duration": 0.0}


def test_long_speech_is_cut_at_max_utterance_seconds(make_settings) -> None:
    settings = make_settings(stt={"max_utterance_seconds": 2, "speech_pad_ms": 0})
    speech = make_speech("one two three four five six seven eight nine ten eleven twelve", lead_silence_s=0, trail_silence_s=1.0)
    with stt_server(settings) as server, session(server) as ws:
        stream(ws, speech)
        first = receive(ws)
        assert (first["type"], first["reason"]) == ("transcript", "max_duration")
        assert 2.0 - 0.032 <= first["duration"] <= 2.0, "cut at the last whole VAD window within the limit"
        second = receive(ws)
        assert second["reason"] in ("max_duration", "silence")
        assert second["start"] == pytest.approx(first["start"] + first["duration"], abs=0.001)


def test_buffer_limit_is_reported_and_accepted_audio_is_still_transcribed(make_settings) -> None:
    settings = make_settings(stt={"max_buffer_seconds": 3, "max_utterance_seconds": 2, "speech_pad_ms": 0})
    gate = threading.Event()  # reaching the limit needs transcription to lag behind the audio

    speech = make_speech("one two three four five six seven eight nine ten eleven twelve", lead_silence_s=0, trail_silence_s=0)
    try:
        with stt_server(settings, model_load_held_by(gate)) as server, session(server) as ws:
            assert httpx.get(f"{server.http_url}/health").json()["loading"] is True
            stream(ws, np.concatenate([speech, speech]))
            # config is answered directly, so its reply proves every frame before it was processed.
            send_json(ws, {"type": "config", "language": None})
            notice = receive(ws)
            assert notice == {"type": "buffer_limit_reached", "duration": pytest.approx(3.0, abs=0.05), "limit": 3.0}
            assert receive(ws)["type"] == "config_applied"
            gate.set()
            transcripts = [receive(ws), receive(ws)]
            assert [t["reason"] for t in transcripts] == ["max_duration", "buffer_limit"]
            assert sum(t["duration"] for t in transcripts) == pytest.approx(3.0, abs=0.05)
            # Room is free again: new speech is heard.
            stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
            send_json(ws, {"type": "end"})
            later = [receive(ws)]
            while later[-1]["type"] != "no_speech":
                later.append(receive(ws))
            assert later[0]["type"] == "transcript"
    finally:
        gate.set()


def test_connections_over_the_limit_are_refused_with_1013(make_settings) -> None:
    with stt_server(make_settings(stt={"max_connections": 1})) as server, session(server):
        with connect(f"{server.ws_url}/ws/stt") as second:
            error = receive(second)
            assert error["code"] == "too_many_connections"
            assert "stt.max_connections" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=5)
        assert closed.value.rcvd.code == 1013
        assert httpx.get(f"{server.http_url}/health").json()["connections"] == 1


def test_a_model_that_cannot_load_degrades_health_and_closes_sockets_with_1011(make_settings, tmp_path) -> None:
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    with stt_server(make_settings(stt={"model": str(missing)})) as server:
        health = wait_until_settled(server)
        assert (health["status"], health["whisper_loaded"]) == ("degraded", False)
        assert "has no model.bin" in health["error"]
        with connect(f"{server.ws_url}/ws/stt") as ws:
            error = receive(ws)
            assert error["code"] == "model_unavailable" and "has no model.bin" in error["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1011
        assert "no model.bin" in closed.value.rcvd.reason


def test_a_model_put_in_place_later_is_loaded_without_a_restart(make_settings, tmp_path, whisper_model_dir) -> None:
    missing = tmp_path / "model-arrives-later"
    missing.mkdir()
    with stt_server(make_settings(stt={"model": str(missing), "model_retry_s": 0.2})) as server:
        assert wait_until_settled(server)["status"] == "degraded"
        for file in whisper_model_dir.iterdir():  # what a user does: copy the model where stt.model points
            shutil.copy(file, missing / file.name)
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.http_url}/health").json()["status"] != "ok":
            assert time.monotonic() < deadline, "the model was never loaded"
            time.sleep(0.05)
        health = httpx.get(f"{server.http_url}/health").json()
        with session(server) as ws:
            stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
            assert receive(ws)["type"] == "transcript"
    assert (health["whisper_loaded"], health["error"]) == (True, None)


def test_a_client_that_leaves_mid_utterance_leaves_nothing_behind(server: RunningServer) -> None:
    service: SttService = server.app.state.service
    audio = make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.0)
    with session(server) as ws:
        stream(ws, audio)
        send_json(ws, {"type": "end"})  # an utterance is being transcribed as the client leaves
    deadline = time.monotonic() + 10
    sockets = server.app.state.sockets
    while time.monotonic() < deadline and (sockets.count or service.pools.transcribe.busy):
        time.sleep(0.02)
    assert sockets.count == 0
    assert service.pools.transcribe.busy == 0
    assert service.pools.vad.borrowed_tokens == 0
    assert httpx.get(f"{server.http_url}/health").json()["connections"] == 0


def test_client_audio_at_8_khz_is_resampled(make_settings) -> None:
    with stt_server(make_settings(stt={"sample_rate": 8000})) as server, session(server) as ws:
        audio = make_speech(PHRASE, sample_rate=8000, lead_silence_s=0.3, trail_silence_s=0.0)
        stream(ws, audio)
        send_json(ws, {"type": "end"})
        message = receive(ws)
    assert message["type"] == "transcript"
    assert message["duration"] == pytest.approx(len(audio) / 8000 - message["start"], abs=0.01)


def test_health_answers_at_once_while_every_worker_is_busy(make_settings) -> None:
    with stt_server(make_settings(stt={"max_concurrent": 1})) as server, session(server) as ws:
        service: SttService = server.app.state.service
        speech = make_speech(PHRASE, lead_silence_s=0.1, trail_silence_s=0)
        # Twenty utterances queued on one worker keep it busy for well over a second.
        for _ in range(20):
            stream(ws, speech)
            send_json(ws, {"type": "end"})
        # The worker frees its slot for a moment between two utterances: a check counts when the worker
        # was busy both when it was asked and when it answered, so it answered during the work. How fast
        # it answers is a figure for bench/, not a wall-clock bound here.
        answered_while_busy = 0
        busy = lambda: service.pools.transcribe.busy == 1  # noqa: E731
        deadline = time.monotonic() + 30
        while answered_while_busy < 5 and time.monotonic() < deadline:
            if not busy():
                time.sleep(0.001)
                continue
            health = httpx.get(f"{server.http_url}/health", timeout=5)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            answered_while_busy += busy()
        assert answered_while_busy == 5, "five health checks were answered while the worker was busy"
        assert [receive(ws)["type"] for _ in range(20)] == ["transcript"] * 20


def test_each_utterance_is_logged_with_its_timings(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with session(server) as ws:
        stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
        receive(ws)
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "utterance_transcribed"]
    assert len(events) == 1
    assert {"audio_seconds", "transcribe_seconds", "rtf", "session_id", "reason"} <= set(events[0])


def receive_until(ws: ClientConnection, message_type: str) -> list[dict[str, Any]]:
    messages = [receive(ws, notices=True)]
    while messages[-1]["type"] != message_type:
        messages.append(receive(ws, notices=True))
    return messages


def test_speech_started_and_ended_frame_each_transcript(server: RunningServer) -> None:
    audio = make_speech(PHRASE, lead_silence_s=0.6, trail_silence_s=1.0)
    with session(server) as ws:
        stream(ws, audio)
        messages = receive_until(ws, "transcript")
    kinds = [m["type"] for m in messages if m["type"] != "partial"]
    assert kinds == ["speech_started", "speech_ended", "transcript"]
    started, ended, final = (next(m for m in messages if m["type"] == k) for k in kinds)
    assert 0.5 <= started["at"] <= 0.9, "speech starts after the 0.6 s of leading silence"
    assert ended["reason"] == "silence"
    speech_end = len(audio) / 16000 - 1.0
    assert speech_end - 0.3 <= ended["at"] <= speech_end + 0.1
    assert final["start"] <= started["at"] < ended["at"] <= final["start"] + final["duration"]


def test_partials_arrive_while_speaking_and_never_after_the_final(make_settings) -> None:
    settings = make_settings(stt={"partial_interval_ms": 100, "max_concurrent": 2})
    speech = make_speech("one two three four five six seven eight nine ten", lead_silence_s=0.2, trail_silence_s=1.0)
    with stt_server(settings) as server, session(server) as ws:
        pcm = to_pcm16(speech)
        # Real-time pacing, 100 ms frames: partials are due while the utterance grows.
        for offset in range(0, len(pcm), 3200):
            ws.send(pcm[offset : offset + 3200])
            time.sleep(0.1)
        messages = receive_until(ws, "transcript")
        send_json(ws, {"type": "end"})
        after = receive_until(ws, "no_speech")
        metrics = httpx.get(f"{server.http_url}/metrics").text
    partials = [m for m in messages if m["type"] == "partial"]
    assert partials, "at least one partial while speaking"
    assert all(m["text"] == f"{m['stable']} {m['unstable']}".strip() for m in partials)
    stables = [m["stable"] for m in partials]
    assert all(later.startswith(earlier) for earlier, later in zip(stables, stables[1:])), "stable text only grows"
    assert [m["type"] for m in after] == ["no_speech"], "no partial of the finished utterance comes later"
    assert f'stt_partials_total{{outcome="sent"}} {float(len(partials))}' in metrics


def test_partials_are_skipped_when_workers_are_busy_but_finals_arrive(make_settings) -> None:
    # One worker, kept busy by another session's finals: partials must give way, finals must not.
    settings = make_settings(stt={"partial_interval_ms": 100, "max_concurrent": 1})
    speech = make_speech(PHRASE, lead_silence_s=0.1, trail_silence_s=0)
    with stt_server(settings) as server, session(server) as busy, session(server) as talker:
        service: SttService = server.app.state.service
        for _ in range(15):
            stream(busy, speech)
            send_json(busy, {"type": "end"})
        deadline = time.monotonic() + 30
        while service.pools.transcribe.busy == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        pcm = to_pcm16(make_speech(PHRASE, lead_silence_s=0.1, trail_silence_s=1.0))
        for offset in range(0, len(pcm), 1600):
            talker.send(pcm[offset : offset + 1600])
            time.sleep(0.01)
        final = receive_until(talker, "transcript")[-1]
        assert [receive(busy)["type"] for _ in range(15)] == ["transcript"] * 15
    assert final["type"] == "transcript"
    skipped = service.metrics.registry.get_sample_value("stt_partials_total", {"outcome": "skipped"})
    assert skipped is not None and skipped >= 1


def test_word_timestamps_when_asked_for(server: RunningServer) -> None:
    with session(server) as ws:
        send_json(ws, {"type": "config", "word_timestamps": True})
        assert receive(ws) == {"type": "config_applied", "language": None, "word_timestamps": True, "partials": True}
        stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
        message = receive(ws)
    words = [w for segment in message["segments"] for w in segment["words"]]
    assert words, "segments carry their words"
    assert all(set(w) == {"start", "end", "word", "probability"} for w in words)
    assert all(w["start"] <= w["end"] for w in words)
    for segment in message["segments"]:
        assert "".join(w["word"] for w in segment["words"]).strip() == segment["text"]


def test_transcripts_carry_their_timings(make_settings) -> None:
    # Without speculative finals the transcription starts at the endpoint, so it lies inside the latency
    # (tests/stt/test_turns.py covers speculative finals).
    with stt_server(make_settings(stt={"endpoint_silence_ms": 500, "speculative_finals": False})) as server:
        wait_until_settled(server)
        with session(server) as ws:
            stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
            message = receive(ws)
    timings = message["timings"]
    assert set(timings) == {
        "speech_end_to_transcript_s", "queue_wait_s", "transcribe_s", "real_time_factor", "speculative", "batch_size"
    }
    assert timings["speculative"] is False
    assert timings["batch_size"] == 1  # the only session: decoded alone
    assert timings["transcribe_s"] == message["transcribe_seconds"]
    assert timings["real_time_factor"] == pytest.approx(timings["transcribe_s"] / message["duration"], abs=0.002)
    assert timings["speech_end_to_transcript_s"] >= timings["transcribe_s"]


def test_metrics_are_exposed_in_prometheus_format(server: RunningServer) -> None:
    with session(server) as ws:
        stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
        receive(ws)
        response = httpx.get(f"{server.http_url}/metrics")
        assert "stt_connections 1.0" in response.text
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'stt_utterances_total{reason="silence"} 1.0' in text
    assert "stt_transcribe_seconds_count 1.0" in text
    assert 'stt_final_latency_seconds_bucket{le="0.5"}' in text, "explicit latency buckets"
    assert "stt_model_loaded 1.0" in text
    assert "stt_audio_received_seconds_total" in text


def test_end_then_reset_back_to_back_never_leaves_the_session_deaf(make_settings) -> None:
    # Regression: an utterance handed to the worker and then dropped by reset used to keep counting
    # against the buffer, until the session heard nothing at all.
    settings = make_settings(stt={"max_buffer_seconds": 5, "max_utterance_seconds": 4})
    speech = to_pcm16(make_speech(PHRASE, lead_silence_s=0.1, trail_silence_s=0))
    with stt_server(settings) as server, session(server) as ws:
        for _ in range(5):
            for offset in range(0, len(speech), FRAME_BYTES):
                ws.send(speech[offset : offset + FRAME_BYTES])
            send_json(ws, {"type": "end"})
            send_json(ws, {"type": "reset"})
            assert receive(ws)["type"] == "reset_done"
        time.sleep(0.3)  # let the worker finish with what reset dropped
        stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
        message = receive(ws)
    assert message["type"] == "transcript", f"expected a transcript, got {message}"


def test_a_failed_transcription_is_reported_and_the_session_goes_on(server: RunningServer) -> None:
    """Replaces our engine's transcribe for one call: no real model fails on demand (CUDA OOM)."""
    engine = server.app.state.service.model.engine
    real = engine.transcribe
    calls = []

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA failed with error out of memory")
        return real(*args, **kwargs)

    engine.transcribe = fail_once
    try:
        with session(server) as ws:
            stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
            error = receive(ws)
            assert (error["type"], error["code"]) == ("error", "transcription_failed")
            assert "out of memory" in error["message"]
            stream(ws, make_speech(PHRASE, trail_silence_s=1.0))
            assert receive(ws)["type"] == "transcript"
    finally:
        engine.transcribe = real


def test_with_one_worker_there_are_no_partials(make_settings) -> None:
    settings = make_settings(stt={"partial_interval_ms": 100, "max_concurrent": 1})
    pcm = to_pcm16(make_speech("one two three four five six seven eight", lead_silence_s=0.2, trail_silence_s=1.0))
    with stt_server(settings) as server, session(server) as ws:
        for offset in range(0, len(pcm), 3200):
            ws.send(pcm[offset : offset + 3200])
            time.sleep(0.1)
        messages = receive_until(ws, "transcript")
        metrics = httpx.get(f"{server.http_url}/metrics").text
    assert not [m for m in messages if m["type"] == "partial"], "the only worker is kept for finals"
    assert 'stt_partials_total{outcome="skipped"}' in metrics


def test_a_disconnect_stops_the_transcription_under_way(server: RunningServer) -> None:
    with transcriptions_held_until_stopped(server.app.state.service.model.engine, limit_s=10) as held:
        with session(server) as ws:
            stream(ws, make_speech(PHRASE, trail_silence_s=0))
            send_json(ws, {"type": "end"})
            assert held.started.wait(10)
        assert held.stopped.wait(5), "the session told the transcription to stop when its client left"
