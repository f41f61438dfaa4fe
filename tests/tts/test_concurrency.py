"""The worker pool: bounded concurrency, the ordered queue and its timeout, /health while every worker is
busy, and a client that disconnects stopping its synthesis.

Syntheses are held inside their worker thread by a gate in front of each sentence of the real Piper
engine (see GatedPiperEngine), so "busy" lasts exactly as long as the test wants, with no timing guesses.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import anyio
import httpx
from structlog.testing import capture_logs

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import expected_samples
from tests.tts.conftest import VOICE, Gate, gated_factory, make_settings, serve, wait_for
from tts.service import TtsService
from tts.turn import AudioPiece


def post_in_thread(url: str, body: dict, results: dict, key: str) -> threading.Thread:
    def run() -> None:
        results[key] = httpx.post(f"{url}/tts", json=body, timeout=30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_health_answers_in_milliseconds_while_every_worker_is_busy(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    settings = make_settings(voices_dir, ollama.url, max_concurrent=2)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, client):
        pipeline = server.app.state.service
        results: dict = {}
        threads = [
            post_in_thread(server.http_url, {"text": f"Busy number {i}.", "reply": False}, results, str(i))
            for i in range(3)
        ]
        wait_for(lambda: pipeline.pool.counters.running == 2 and pipeline.pool.counters.waiting == 1)
        # Every worker is held for as long as the gate stays shut, so each answer below was given while
        # all of them were busy (how fast is a figure for bench/, not a wall-clock bound here).
        for _ in range(5):
            health = client.get("/health", timeout=5)
            assert health.status_code == 200
            assert health.json()["workers"] == {"max_concurrent": 2, "running": 2, "waiting": 1}
        gate.open.set()
        for thread in threads:
            thread.join(10)
    assert [results[str(i)].status_code for i in range(3)] == [200, 200, 200]


def test_waiting_requests_are_served_in_arrival_order(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    # capture_logs after create_app: the app's configure_logging would replace the capturing processors.
    with serve(settings, engine_factory=gated_factory(gate)) as (server, _), capture_logs() as logs:
        pipeline = server.app.state.service
        results: dict = {}
        threads = [post_in_thread(server.http_url, {"text": "First.", "reply": False}, results, "first")]
        wait_for(lambda: gate.entered.is_set())
        for number, name in enumerate(["second", "third", "fourth"], start=1):
            threads.append(post_in_thread(server.http_url, {"text": f"{name.title()}.", "reply": False}, results, name))
            wait_for(lambda number=number: pipeline.pool.counters.waiting == number)
        gate.open.set()
        for thread in threads:
            thread.join(10)
    assert gate.sentences == ["First.", "Second.", "Third.", "Fourth."]
    assert all(response.status_code == 200 for response in results.values())
    limit_logs = [entry for entry in logs if entry["event"] == "TTS concurrent limit"]
    assert [entry["waiting"] for entry in limit_logs] == [1, 2, 3]
    assert {entry["max_concurrent"] for entry in limit_logs} == {1}


def test_queue_timeout_gives_503_with_retry_after(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1, queue_timeout_s=0.3, retry_after_s=7)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, client):
        pipeline = server.app.state.service
        results: dict = {}
        holder = post_in_thread(server.http_url, {"text": "Holding.", "reply": False}, results, "holder")
        wait_for(lambda: gate.entered.is_set())
        refused = client.post("/tts", json={"text": "Waiting.", "reply": False})
        assert pipeline.pool.counters.waiting == 0 and pipeline.pool.counters.rejected_busy == 1
        gate.open.set()
        holder.join(10)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "7"
    error = refused.json()["error"]
    assert error["code"] == "engine_busy"
    assert "all 1 speech workers stayed busy for 0.3 s" in error["message"]
    assert results["holder"].status_code == 200
    assert gate.sentences == ["Holding."]  # the refused request never reached the engine


def test_client_disconnect_stops_the_synthesis_between_sentences(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, client), capture_logs() as logs:
        pipeline = server.app.state.service
        body = b'{"text": "One. Two. Three. Four.", "reply": false}'
        with socket.create_connection((server.host, server.port)) as raw:
            raw.sendall(
                b"POST /tts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(lambda: gate.entered.is_set())  # the worker is inside sentence one
        # The client is gone and the server has noticed, while the worker is still inside sentence one.
        wait_for(lambda: any(entry["event"] == "client_disconnected" for entry in logs))
        assert pipeline.pool.counters.running == 1
        gate.open.set()
        wait_for(lambda: pipeline.pool.counters.cancelled == 1)
        wait_for(lambda: pipeline.pool.counters.running == 0)
        assert gate.sentences == ["One."]
        assert pipeline.pool.limiter.borrowed_tokens == 0  # the worker slot came back: nothing leaked
        # The service carries on normally.
        response = client.post("/tts", json={"text": "After.", "reply": False})
        assert response.status_code == 200
        assert pipeline.pool.counters.served == 1


def test_client_leaving_the_queue_frees_its_place(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, _):
        pipeline = server.app.state.service
        results: dict = {}
        holder = post_in_thread(server.http_url, {"text": "Holding.", "reply": False}, results, "holder")
        wait_for(lambda: gate.entered.is_set())
        body = b'{"text": "Never spoken.", "reply": false}'
        with socket.create_connection((server.host, server.port)) as raw:
            raw.sendall(
                b"POST /tts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(lambda: pipeline.pool.counters.waiting == 1)
        wait_for(lambda: pipeline.pool.counters.waiting == 0)  # it left the queue when its client went away
        gate.open.set()
        holder.join(10)
        wait_for(lambda: pipeline.pool.limiter.borrowed_tokens == 0)
    assert results["holder"].status_code == 200
    assert gate.sentences == ["Holding."]
    assert pipeline.pool.counters.served == 1


class SentenceGate(Gate):
    """Holds only the named sentences, each until the test releases it; the others pass."""

    def __init__(self, held: list[str]) -> None:
        super().__init__()
        self.reached = {text: threading.Event() for text in held}
        self.release = {text: threading.Event() for text in held}

    def wait_here(self, text: str) -> None:
        with self._lock:
            self.sentences.append(text)
        if text in self.release:
            self.reached[text].set()
            assert self.release[text].wait(30), f"{text!r} never released"


def test_a_started_reply_is_not_cut_off_by_a_request_that_took_the_worker_while_its_llm_wrote(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    # The LLM writes one word every two seconds: after "One." is spoken the turn waits for its LLM and
    # gives the worker back; another request takes it. The turn's "Two." then waits for that request,
    # longer than queue_timeout_s, and must not be refused mid-reply (only a first fragment can be).
    ollama.behaviour.reply = "One. Two. Three."
    ollama.behaviour.tokens = "words"
    ollama.behaviour.token_rate = 0.5
    queue_timeout_s = 0.5
    gate = SentenceGate(["One.", "Other."])
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1, queue_timeout_s=queue_timeout_s)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, _):
        pipeline = server.app.state.service
        results: dict = {}

        def stream() -> None:
            results["stream"] = httpx.post(
                f"{server.http_url}/tts/stream", json={"text": "Count."}, headers={"Accept": "audio/pcm"}, timeout=30
            )

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        assert gate.reached["One."].wait(10)  # the turn was admitted: its first sentence holds the worker
        other = post_in_thread(server.http_url, {"text": "Other.", "reply": False}, results, "other")
        wait_for(lambda: pipeline.pool.counters.waiting == 1)
        gate.release["One."].set()  # "Two." is not written yet: the worker goes to the waiting request
        assert gate.reached["Other."].wait(10)
        wait_for(lambda: pipeline.pool.counters.waiting == 1, timeout=15)  # "Two." is cut and waits
        # Past queue_timeout_s: a turn that has started speaking is never refused with engine_busy.
        time.sleep(2 * queue_timeout_s)
        try:
            assert pipeline.pool.counters.rejected_busy == 0 and pipeline.pool.counters.waiting == 1
        finally:
            gate.release["Other."].set()
        other.join(10)
        streamer.join(20)
    assert results["other"].status_code == 200
    stream_response = results["stream"]
    assert stream_response.status_code == 200
    voice_model = voices_dir / f"{VOICE}.onnx"
    spoken = ["One.", "Two.", "Three."]
    assert len(stream_response.content) == 2 * sum(expected_samples(voice_model, text) for text in spoken)
    assert gate.sentences == ["One.", "Other.", "Two.", "Three."]
    assert pipeline.pool.counters.rejected_busy == 0 and pipeline.pool.counters.served == 2


def test_a_text_given_whole_keeps_its_worker_from_sentence_to_sentence(voices_dir: Path, ollama: OllamaDouble) -> None:
    # All its fragments are cut at once: the turn speaks them in one go, and a request that arrives
    # meanwhile waits for the whole text (the earliest turn first), as a client waiting for it all wants.
    gate = SentenceGate(["One."])
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, _):
        pipeline = server.app.state.service
        results: dict = {}
        first = post_in_thread(server.http_url, {"text": "One. Two. Three.", "reply": False}, results, "first")
        assert gate.reached["One."].wait(10)
        second = post_in_thread(server.http_url, {"text": "Other.", "reply": False}, results, "second")
        wait_for(lambda: pipeline.pool.counters.waiting == 1)
        gate.release["One."].set()
        first.join(10)
        second.join(10)
    assert gate.sentences == ["One.", "Two.", "Three.", "Other."]
    assert [results[key].status_code for key in ("first", "second")] == [200, 200]


def test_a_client_that_stops_reading_gives_its_worker_back(voices_dir: Path, ollama: OllamaDouble) -> None:
    # A client that pauses (TCP backpressure) fills its turn's buffer; the worker must not wait with it,
    # or every other client gets engine_busy while /health says nothing runs.
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1, queue_timeout_s=5.0)
    text = " ".join(f"This is sentence number {i}." for i in range(40))

    async def main() -> str:
        service = TtsService(settings)
        async with service.running():
            while service.engines.loading:
                await anyio.sleep(0.01)
            stalled = service.start_turn(await service.check_request(text, None, None, False), "test")
            async for event in stalled:
                if isinstance(event, AudioPiece):
                    break  # then stop reading, without closing
            with anyio.fail_after(10):
                while stalled.can_emit() or service.pool.counters.running:
                    await anyio.sleep(0.005)  # until its buffer is full and its worker given back
            other = service.start_turn(await service.check_request("Hello there.", None, None, False), "test")
            try:
                speech = await service.speak(other)
            finally:
                await other.aclose()
                await stalled.aclose()
            return speech.text

    assert anyio.run(main) == "Hello there."
