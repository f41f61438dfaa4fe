"""POST /v1/audio/transcriptions and /translations on the STT service, driven by the real `openai` package
(and by the request shapes of Open WebUI, Home Assistant and LibreChat): every response format, word and
segment timestamps, streaming, uploads in every container, the limits, and live finals going first."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from core.audio import float32_to_pcm16, wav_bytes
from stt.server import create_app
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.speech import make_speech
from tests.stt.test_server import PHRASE, receive, send_json, session, stream, wait_until_settled
from tests.tts.conftest import wait_for

SPEECH = make_speech(PHRASE, lead_silence_s=0.5, trail_silence_s=0.5)
WAV = wav_bytes(float32_to_pcm16(SPEECH), 16000)


def encoded(audio: np.ndarray, container: str, codec: str, rate: int = 16000) -> bytes:
    """`audio` (16 kHz float32) in a container and codec, written by PyAV as a client's file would be."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        out_rate = 48000 if codec == "libopus" else rate
        stream_ = output.add_stream(codec, rate=out_rate)
        stream_.layout = "mono"
        resampler = av.AudioResampler(format=stream_.codec_context.format.name, layout="mono", rate=out_rate)
        frame = av.AudioFrame.from_ndarray(np.frombuffer(float32_to_pcm16(audio), "<i2")[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream_.encode(converted):
                output.mux(packet)
        for packet in stream_.encode(None):
            output.mux(packet)
    return buffer.getvalue()


@pytest.fixture
def server(make_settings) -> Iterator[RunningServer]:
    with run_server(create_app(make_settings(stt={"max_upload_seconds": 30, "max_upload_bytes": 2_000_000}))) as running:
        wait_until_settled(running)
        yield running


def client_for(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.http_url}/v1", api_key="not-needed", max_retries=0)


def test_every_response_format(server: RunningServer) -> None:
    client = client_for(server)
    results = {
        fmt: client.audio.transcriptions.create(file=("speech.wav", WAV), model="whisper-1", response_format=fmt)
        for fmt in ("json", "text", "srt", "vtt", "verbose_json")
    }
    text = results["json"].text
    assert isinstance(text, str) and text  # the toy model writes nonsense words, never nothing
    assert results["text"] == text + "\n"
    verbose = results["verbose_json"]
    assert (verbose.text, verbose.language, verbose.duration) == (text, "en", pytest.approx(len(SPEECH) / 16000, abs=0.01))
    assert verbose.segments and verbose.words is None
    first = verbose.segments[0]
    # Whisper timestamps come in steps of 20 ms: the last end may pass the duration by less than one.
    assert (first.id, first.seek) == (1, 0) and 0.0 <= first.start < first.end <= verbose.duration + 0.02
    assert {"tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"} <= set(first.model_dump())
    lines = results["srt"].splitlines()
    assert lines[0] == "1" and " --> " in lines[1] and "," in lines[1] and lines[2] == verbose.segments[0].text
    assert results["vtt"].startswith("WEBVTT\n\n") and " --> " in results["vtt"] and "." in results["vtt"].splitlines()[2]


def test_word_and_segment_granularities(server: RunningServer) -> None:
    result = client_for(server).audio.transcriptions.create(
        file=("speech.wav", WAV), model="whisper-1", response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert result.words and result.segments
    assert all(word.start <= word.end for word in result.words)
    assert " ".join(word.word for word in result.words) == " ".join(segment.text for segment in result.segments)


def test_stream_true_sends_text_deltas_then_the_whole_text(server: RunningServer) -> None:
    events = list(client_for(server).audio.transcriptions.create(file=("speech.wav", WAV), model="whisper-1", stream=True))
    deltas, done = events[:-1], events[-1]
    assert deltas and {event.type for event in deltas} == {"transcript.text.delta"}
    assert done.type == "transcript.text.done" and done.text == "".join(event.delta for event in deltas)


def test_translations_use_whispers_translate_task(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = client_for(server)
    translated = client.audio.translations.create(file=("speech.wav", WAV), model="whisper-1")
    verbose = client.audio.translations.create(file=("speech.wav", WAV), model="whisper-1", response_format="verbose_json")
    assert isinstance(translated.text, str) and translated.text
    assert verbose.task == "translate"
    tasks = [r.msg["task"] for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "file_transcribed"]
    assert tasks == ["translate", "translate"]


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [
        ("speech.mp3", "mp3", "libmp3lame"),
        ("speech.ogg", "ogg", "libopus"),
        ("audio.webm", "webm", "libopus"),
        ("speech.m4a", "ipod", "aac"),
        ("speech.flac", "flac", "flac"),
    ],
)
def test_uploads_in_every_container(server: RunningServer, name: str, container: str, codec: str) -> None:
    data = encoded(SPEECH, container, codec)
    result = client_for(server).audio.transcriptions.create(file=(name, data), model="whisper-1", response_format="verbose_json")
    # Codecs pad a little; the duration is the file's own, decoded.
    assert result.duration == pytest.approx(len(SPEECH) / 16000, abs=0.1)
    assert result.text


def test_the_request_shapes_of_open_webui_home_assistant_and_librechat(server: RunningServer) -> None:
    url = f"{server.http_url}/v1/audio/transcriptions"
    open_webui = httpx.post(url, files={"file": ("speech.wav", WAV, "audio/wav")}, data={"model": "whisper-1", "language": "en"})
    open_webui_new = httpx.post(
        url,
        files={"file": ("speech.wav", WAV, "audio/wav")},
        data={"model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities[]": "segment"},
    )
    home_assistant = httpx.post(
        url,
        files={"file": ("speech.wav", WAV, "audio/wav")},
        data={"model": "whisper-1", "response_format": "json", "language": "en", "prompt": "Turn on the lights."},
    )
    librechat = httpx.post(url, files={"file": ("audio.webm", encoded(SPEECH, "webm", "libopus"), "audio/webm")}, data={"model": "whisper-1"})
    for response in (open_webui, home_assistant, librechat):
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"text"} and response.json()["text"]
    assert open_webui_new.status_code == 200 and open_webui_new.json()["segments"]


def test_the_other_model_list(server: RunningServer, whisper_model_dir: Any) -> None:
    ids = [model.id for model in client_for(server).models.list().data]
    assert ids == ["whisper-1", whisper_model_dir.name]


@pytest.mark.parametrize(
    ("files", "data", "status", "code", "param", "fragment"),
    [
        ({"file": ("x.wav", b"not audio at all" * 50)}, {"model": "whisper-1"}, 400, "bad_audio", "file", "cannot be read as audio"),
        ({"file": ("x.wav", WAV)}, {"model": "whisper-1", "language": "xx"}, 400, "invalid_request", "language", "unknown language 'xx'"),
        ({}, {"model": "whisper-1"}, 400, "invalid_request", "file", "'file' is required"),
        ({"file": ("x.wav", WAV)}, {"model": "whisper-1", "response_format": "json", "timestamp_granularities[]": "word"}, 400, "invalid_request", "timestamp_granularities", "needs response_format verbose_json"),
        ({"file": ("x.wav", WAV)}, {"model": "whisper-1", "temperature": "2"}, 400, "invalid_request", "temperature", "less than or equal to 1"),
        ({"file": ("x.wav", WAV)}, {"model": "whisper-1", "colour": "red"}, 400, "invalid_request", "colour", "unknown field 'colour'"),
        # A form's boolean is the text true or false (what its OpenAPI document says), not 0 or "off".
        ({"file": ("x.wav", WAV)}, {"model": "whisper-1", "stream": "0"}, 400, "invalid_request", "stream", "send true or false"),
        ({"file": ("big.wav", bytes(2_100_000))}, {"model": "whisper-1"}, 413, "request_too_large", "file", "2000000-byte limit (stt.max_upload_bytes)"),
        ({"file": ("long.wav", wav_bytes(bytes(16000 * 2 * 31), 16000))}, {"model": "whisper-1"}, 413, "request_too_large", None, "30 s (stt.max_upload_seconds)"),
    ],
)
def test_bad_uploads_get_openai_errors_that_say_what_is_wrong(
    server: RunningServer, files: dict, data: dict, status: int, code: str, param: str | None, fragment: str
) -> None:
    response = httpx.post(f"{server.http_url}/v1/audio/transcriptions", files=files or {"other": ("x", b"x")}, data=data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert fragment in error["message"]



def test_a_form_that_cannot_be_parsed_gets_an_openai_error(server: RunningServer) -> None:
    url = f"{server.http_url}/v1/audio/transcriptions"
    no_boundary = httpx.post(url, content=b"garbage", headers={"content-type": "multipart/form-data"})
    many = {f"extra{i}": (None, "x") for i in range(20)} | {"file": ("a.wav", WAV), "model": (None, "whisper-1")}
    too_many_fields = httpx.post(url, files=many)
    for response, fragment in ((no_boundary, "could not be read"), (too_many_fields, "at most 16 other fields")):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["code"], error["type"]) == ("invalid_request", "invalid_request_error") and fragment in error["message"]

def test_a_json_body_is_refused_as_the_wrong_media_type(server: RunningServer) -> None:
    response = httpx.post(f"{server.http_url}/v1/audio/transcriptions", json={"model": "whisper-1"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_media_type"
    with pytest.raises(openai.BadRequestError):
        client_for(server).audio.transcriptions.create(file=("x.wav", b"nonsense" * 100), model="whisper-1")


@contextmanager
def the_one_upload_slot_taken(make_settings) -> Iterator[tuple[RunningServer, dict[str, Any]]]:
    """A service with stt.max_uploads 1, its slot held by a long upload being transcribed; that upload's
    response is in the dict (`r`) once the block has ended."""
    long_speech = wav_bytes(float32_to_pcm16(np.tile(SPEECH, 12)), 16000)
    with run_server(create_app(make_settings(stt={"max_uploads": 1, "max_concurrent": 1}))) as server:
        wait_until_settled(server)
        first: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: first.update(r=httpx.post(f"{server.http_url}/v1/audio/transcriptions", files={"file": ("a.wav", long_speech)}, data={"model": "m"}, timeout=60)),
            daemon=True,
        )
        thread.start()
        wait_for(lambda: server.app.state.service.files.running == 1)
        yield server, first
        thread.join(60)


def test_uploads_over_the_limit_of_files_at_once_get_429_with_retry_after(make_settings) -> None:
    with the_one_upload_slot_taken(make_settings) as (server, first):
        second = httpx.post(f"{server.http_url}/v1/audio/transcriptions", files={"file": ("b.wav", WAV)}, data={"model": "m"})
    assert (second.status_code, second.headers["retry-after"]) == (429, "5")
    assert second.json()["error"]["code"] == "too_many_pending" and "stt.max_uploads" in second.json()["error"]["message"]
    assert first["r"].status_code == 200


def test_an_upload_over_the_limit_of_files_at_once_is_refused_before_its_body_is_read(make_settings) -> None:
    with the_one_upload_slot_taken(make_settings) as (server, first):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            # Announces 20 MB, sends none of it: the answer must not wait for the body.
            raw.sendall(
                b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20000000\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
            )
            answer = raw.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 429") and "too_many_pending" in answer
    assert first["r"].status_code == 200


def test_a_live_final_is_not_held_up_by_a_long_upload(make_settings, caplog: pytest.LogCaptureFixture) -> None:
    # One worker. A 4-minute file decodes window by window; a live utterance ending meanwhile is
    # transcribed before the file's next window (the pool lets a waiting final go first).
    caplog.set_level(logging.DEBUG, logger="stt")
    long_speech = wav_bytes(float32_to_pcm16(np.tile(SPEECH, 80)), 16000)
    settings = make_settings(stt={"max_concurrent": 1, "max_upload_seconds": 600, "max_upload_bytes": 20_000_000})
    with run_server(create_app(settings)) as server:
        wait_until_settled(server)
        service = server.app.state.service
        upload: dict[str, Any] = {}
        url = f"{server.http_url}/v1/audio/transcriptions"
        thread = threading.Thread(
            target=lambda: upload.update(r=httpx.post(url, files={"file": ("long.wav", long_speech)}, data={"model": "m"}, timeout=120)),
            daemon=True,
        )
        with session(server) as ws:
            thread.start()
            while not any(_event(r) == "file_segment" for r in caplog.records):
                time.sleep(0.005)  # until the file is being decoded, window by window
            stream(ws, SPEECH)
            send_json(ws, {"type": "end"})
            transcript = receive(ws, timeout=60)
            segments_before = sum(1 for r in caplog.records if _event(r) == "file_segment")
        thread.join(120)
    assert transcript["type"] == "transcript"
    assert upload["r"].status_code == 200
    total = sum(1 for r in caplog.records if _event(r) == "file_segment")
    assert segments_before < total, "the live final arrived while the file was still being transcribed"
    assert service.pools.transcribe.busy == 0


def _event(record: logging.LogRecord) -> str | None:
    return record.msg.get("event") if isinstance(record.msg, dict) else None


def test_a_client_that_gives_up_stops_its_transcription_and_frees_its_slot(make_settings) -> None:
    # openai-python times out after 600 s and retries: the abandoned file must not hold the upload slot
    # and the workers until it is done, or the retry gets 429.
    long_speech = np.concatenate([SPEECH] * 60)  # minutes of speech: far from done when the client leaves
    data = wav_bytes(float32_to_pcm16(long_speech), 16000)
    boundary = "boundary4test"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    settings = make_settings(stt={"max_uploads": 1, "max_upload_seconds": 3600, "max_upload_bytes": len(body)})
    with run_server(create_app(settings)) as running:
        wait_until_settled(running)
        with httpx.Client(base_url=running.http_url, timeout=10) as client:
            uploads = lambda: client.get("/health").json()["uploads"]  # noqa: E731
            with socket.create_connection(("127.0.0.1", running.port)) as raw:
                head = (
                    f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
                )
                raw.sendall(head.encode() + body)
                wait_for(lambda: uploads()["running"] == 1)
            wait_for(lambda: uploads()["running"] == 0)
            retry = client.post(
                "/v1/audio/transcriptions", files={"file": ("a.wav", WAV)}, data={"model": "whisper-1"}
            )
            metrics = client.get("/metrics").text
    assert retry.status_code == 200, retry.text
    assert 'stt_files_total{outcome="cancelled"} 1.0' in metrics and 'stt_files_total{outcome="ok"} 1.0' in metrics
