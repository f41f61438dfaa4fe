"""The real supervisor, its real children, real signals: start, health, drain, restart, crash loop,
busy ports, orphans, --only and the startup timeout."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import struct
import threading
import wave
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import expected_samples
from tests.fixtures.speech import make_speech, to_pcm16
from tests.supervisor.conftest import VOICE, alive, wait_gone, wait_until

FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16


def http(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def read_wav(data: bytes) -> tuple[int, int, int, int]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    with wave.open(io.BytesIO(data)) as reader:
        return reader.getnchannels(), reader.getsampwidth(), reader.getframerate(), reader.getnframes()


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_both_services_come_up_and_their_logs_come_through_tagged(make_config, start_supervisor) -> None:
    config = make_config()
    stt_port, tts_port = config["stt"]["port"], config["tts"]["port"]
    run = start_supervisor(config)

    ready = run.wait_event("all_services_ready")
    assert ready["services"] == ["stt", "tts"]
    assert ready["dashboard"] == f"http://127.0.0.1:{tts_port}/"
    stt_ready = run.find("service_ready", child="stt")[0]
    assert stt_ready["url"] == http(stt_port)
    assert stt_ready["websocket"] == f"ws://127.0.0.1:{stt_port}/ws/stt"
    tts_ready = run.find("service_ready", child="tts")[0]
    assert (tts_ready["url"], tts_ready["dashboard"]) == (http(tts_port), f"http://127.0.0.1:{tts_port}/")
    assert {e["service"] for e in run.find("service_ready")} == {"supervisor"}

    assert httpx.get(f"{http(stt_port)}/health").json()["environment"] == "development"
    # Ollama's reachability is checked in the background after start: degraded until the first check.
    wait_until(lambda: httpx.get(f"{http(tts_port)}/health").json()["status"] == "ok", what="TTS health ok")
    tts_health = httpx.get(f"{http(tts_port)}/health").json()
    assert (tts_health["status"], tts_health["engine"], tts_health["voice"]) == ("ok", "piper", VOICE)

    # Child lines are re-emitted through the supervisor's structlog, tagged with their service.
    for name, port in (("stt", stt_port), ("tts", tts_port)):
        line = run.wait_event(f"Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)")
        assert (line["service"], line["logger"], line["level"]) == (name, "uvicorn.error", "info")
    model_loaded = run.wait_event("model_loaded", service="stt")
    assert (model_loaded["logger"], model_loaded["device"], model_loaded["compute_type"]) == (
        "stt.engine",
        "cpu",
        "int8",
    )

    pids = run.child_pids()
    run.process.send_signal(signal.SIGTERM)
    assert run.wait_exit() == 0
    assert wait_gone(pids) == []
    stopped = {e["child"]: e for e in run.find("service_stopped")}
    assert set(stopped) == {"stt", "tts"}
    assert stopped["stt"]["exit_code"] == 0  # core.serve: a graceful stop exits 0
    assert run.find("supervisor_exit")[0]["exit_code"] == 0
    assert run.find("stopping")[0]["signal"] == "SIGTERM"


def test_an_stt_model_that_cannot_load_is_reported_as_unusable_once_the_services_settle(
    make_config, start_supervisor, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    config = make_config()
    config["stt"]["model"] = str(missing)
    run = start_supervisor(config)
    run.wait_event("all_services_ready")  # both answer /health; the model is still being loaded
    unusable = run.wait_event("service_unusable")
    assert unusable["child"] == "stt" and "has no model.bin" in unusable["reason"]
    assert "refuses every session" in unusable["effect"]
    settled = run.wait_event("all_services_settled")
    assert (settled["stt"], settled["tts"]) == ("degraded", "ok")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait_exit() == 0


def test_sigterm_lets_a_tts_request_and_an_stt_utterance_finish(
    make_config, start_supervisor, ollama: OllamaDouble, voices_dir: Path
) -> None:
    reply = "The kitchen lights are on now."
    ollama.behaviour.reply = reply
    ollama.behaviour.pieces = 3
    ollama.behaviour.delay_s = 0.4  # the LLM answer takes about 1.2 s: the request is in flight at SIGTERM
    config = make_config()
    stt_port, tts_port = config["stt"]["port"], config["tts"]["port"]
    run = start_supervisor(config)
    run.wait_event("all_services_ready")
    run.wait_event("model_loaded", service="stt")

    response: dict[str, Any] = {}
    done = threading.Event()

    def ask() -> None:
        try:
            response["value"] = httpx.post(f"{http(tts_port)}/tts", json={"text": "Lights on, please."}, timeout=30)
        except Exception as exc:  # reported by the assertions below
            response["error"] = exc
        done.set()

    speech = to_pcm16(make_speech("Please turn on the lights in the kitchen.", lead_silence_s=0.3, trail_silence_s=0.0))
    messages: list[dict[str, Any]] = []
    with connect(f"ws://127.0.0.1:{stt_port}/ws/stt", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        # One finished utterance, then one still being spoken (no end, no trailing silence).
        for offset in range(0, len(speech), FRAME_BYTES):
            ws.send(speech[offset : offset + FRAME_BYTES])
        ws.send(json.dumps({"type": "end"}))
        for offset in range(0, len(speech), FRAME_BYTES):
            ws.send(speech[offset : offset + FRAME_BYTES])
        # Messages are handled in order: once this is answered, the server holds all the audio above.
        ws.send(json.dumps({"type": "config", "language": None}))
        while True:
            message = json.loads(ws.recv(timeout=10))
            messages.append(message)
            if message["type"] == "config_applied":
                break

        threading.Thread(target=ask, daemon=True).start()
        wait_until(lambda: bool(ollama.chat_requests), what="the LLM request of /tts")
        assert not done.is_set()
        run.process.send_signal(signal.SIGTERM)

        with pytest.raises(ConnectionClosed):
            while True:
                messages.append(json.loads(ws.recv(timeout=15)))
        assert ws.close_code == 1001
        assert ws.close_reason == "server shutting down"

    transcripts = [m for m in messages if m["type"] == "transcript"]
    assert len(transcripts) == 2
    # The second utterance was never ended by the client: the drain ended and transcribed it.
    assert transcripts[1]["reason"] == "end"
    # ...and it holds the whole second block up to its last sample (less at most the lead silence).
    block_s = len(speech) / 32000
    assert block_s - 0.35 <= transcripts[1]["duration"] <= block_s + 0.001
    assert all(isinstance(t["text"], str) and t["text"] for t in transcripts)

    assert done.wait(15)
    assert "error" not in response, response
    tts = response["value"]
    assert tts.status_code == 200
    assert tts.headers["content-type"] == "audio/wav"
    assert unquote(tts.headers["x-reply-text"]) == reply
    assert read_wav(tts.content) == (1, 2, 22050, expected_samples(voices_dir / f"{VOICE}.onnx", reply))

    assert run.wait_exit() == 0
    assert run.find("draining_sessions", service="stt")[0]["sessions"] == 1
    assert wait_gone(run.child_pids()) == []


def test_sigterm_lets_a_tts_socket_generation_finish_then_closes_every_tts_socket_with_1001(
    make_config, start_supervisor, ollama: OllamaDouble, voices_dir: Path
) -> None:
    reply = "The kitchen lights are on now. The hall lights are off."
    ollama.behaviour.reply = reply
    ollama.behaviour.pieces = 4
    ollama.behaviour.delay_s = 0.3  # the reply takes about 1.2 s: the generation is running at SIGTERM
    config = make_config()
    tts_port = config["tts"]["port"]
    run = start_supervisor(config)
    run.wait_event("all_services_ready")
    run.wait_event("engine_ready", service="tts")  # /health answers while the voice still loads
    url = f"ws://127.0.0.1:{tts_port}/ws/tts"
    with connect(url, open_timeout=10) as talking, connect(url, open_timeout=10) as idle:
        assert json.loads(talking.recv(timeout=10))["type"] == "connection"
        assert json.loads(idle.recv(timeout=10))["type"] == "connection"
        talking.send(json.dumps({"type": "text_input", "text": "Lights, please."}))
        assert json.loads(talking.recv(timeout=10))["type"] == "generation_started"
        wait_until(lambda: bool(ollama.chat_requests), what="the LLM request of the generation")
        run.process.send_signal(signal.SIGTERM)

        messages: list[dict[str, Any]] = []
        audio = b""
        with pytest.raises(ConnectionClosed):
            while True:
                frame = talking.recv(timeout=15)
                if isinstance(frame, bytes):
                    audio += frame
                else:
                    messages.append(json.loads(frame))
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=15)
    # The generation under way was spoken to its end, then the socket closed as the service stopped.
    assert messages[-1]["type"] == "generation_complete" and messages[-1]["text"] == reply
    assert len(audio) // 2 == expected_samples(voices_dir / f"{VOICE}.onnx", reply)
    assert (talking.close_code, talking.close_reason) == (1001, "server shutting down")
    assert (idle.close_code, idle.close_reason) == (1001, "server shutting down")
    assert run.wait_exit() == 0
    assert run.find("draining_sessions", service="tts")[0]["sessions"] == 2


def test_the_wyoming_listeners_start_and_stop_with_their_services(make_config, start_supervisor) -> None:
    config = make_config()
    ports = {name: config[name]["wyoming"]["port"] for name in ("stt", "tts")}
    run = start_supervisor(config)
    run.wait_event("all_services_ready")
    run.wait_event("engine_ready", service="tts")

    async def describe(port: int) -> Info:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=10) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    infos = {name: asyncio.run(describe(port)) for name, port in ports.items()}
    listening = {e["service"]: e["port"] for e in run.find("wyoming_listening")}
    run.process.send_signal(signal.SIGTERM)
    assert run.wait_exit() == 0
    assert [p.name for p in infos["stt"].asr] == ["voice-assistant-stt"] and not infos["stt"].tts
    assert [p.name for p in infos["tts"].tts] == ["voice-assistant-tts"] and not infos["tts"].asr
    assert listening == {"stt": ports["stt"], "tts": ports["tts"]}
    assert all(port_is_closed(port) for port in ports.values())


def test_a_killed_child_is_restarted_with_backoff_and_a_crash_loop_stops_everything(
    make_config, start_supervisor
) -> None:
    config = make_config()
    stt_port = config["stt"]["port"]
    run = start_supervisor(config)
    run.wait_event("all_services_ready")
    tts_pid = run.pid_of("tts")

    first = run.pid_of("stt")
    os.kill(first, signal.SIGKILL)
    exited = run.wait_event("service_exited", child="stt")
    assert (exited["exit_code"], exited["reason"]) == (-9, "killed by SIGKILL")
    assert any(line.startswith("Uvicorn running on") for line in exited["last_output"])
    assert run.wait_event("service_restarting", child="stt")["delay_s"] == 0.1
    ready = run.wait_event("service_ready", child="stt", restarts=1)
    second = ready["pid"]
    assert second != first
    assert httpx.get(f"{http(stt_port)}/health").status_code == 200

    # Two more deaths within the window make three: a crash loop.
    mark = len(run.events)
    os.kill(second, signal.SIGKILL)
    assert run.wait_event("service_restarting", child="stt", start=mark)["delay_s"] == 0.2  # doubled
    started = run.wait_event("service_started", child="stt", restarts=2)
    third = started["pid"]
    run.wait_event(f"Started server process [{third}]")  # so its last output has something to show
    os.kill(third, signal.SIGKILL)

    assert run.wait_exit() == 1
    loop = run.find("crash_loop")[0]
    assert (loop["level"], loop["child"], loop["crashes"], loop["exit_code"]) == ("error", "stt", 3, -9)
    assert "the stt service crashed 3 times within 60 s" in loop["message"]
    assert f"Started server process [{third}]" in loop["last_output"]
    assert run.find("service_stopped", child="tts")
    assert run.find("supervisor_exit")[0]["exit_code"] == 1
    assert wait_gone([first, second, third, tts_pid]) == []


@pytest.mark.parametrize(
    ("service", "key"), [("stt", "stt.port"), ("tts", "tts.port"), ("stt", "stt.wyoming.port"), ("tts", "tts.wyoming.port")]
)
def test_a_busy_port_is_reported_before_anything_starts(make_config, start_supervisor, service: str, key: str) -> None:
    config = make_config()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        section = config
        for part in key.split(".")[:-1]:
            section = section[part]
        section["port"] = port
        run = start_supervisor(config)
        assert run.wait_exit() == 1
    problem = run.find("port_in_use")[0]
    assert (problem["level"], problem["port"], problem["key"], problem["child"]) == ("error", port, key, service)
    assert f"port {port} on 127.0.0.1 is already in use" in problem["message"]
    assert f"{key} (environment {key.upper().replace('.', '__')})" in problem["message"]
    assert run.find("service_started") == []


def test_a_hard_killed_supervisor_leaves_no_children(make_config, start_supervisor) -> None:
    config = make_config()
    run = start_supervisor(config)
    run.wait_event("all_services_ready")
    pids = run.child_pids()
    assert len(pids) == 2 and all(alive(pid) for pid in pids)

    run.process.send_signal(signal.SIGKILL)
    run.wait_exit()
    assert wait_gone(pids) == []
    assert port_is_closed(config["stt"]["port"]) and port_is_closed(config["tts"]["port"])


@pytest.mark.parametrize("only", ["stt", "tts"])
def test_only_starts_one_service(make_config, start_supervisor, only: str) -> None:
    config = make_config()
    other = "tts" if only == "stt" else "stt"
    run = start_supervisor(config, "--only", only)
    assert run.wait_event("all_services_ready")["services"] == [only]
    assert [e["child"] for e in run.find("service_started")] == [only]
    assert httpx.get(f"{http(config[only]['port'])}/health").status_code == 200
    assert port_is_closed(config[other]["port"])
    run.process.send_signal(signal.SIGINT)
    assert run.wait_exit() == 0
    assert run.find("stopping")[0]["signal"] == "SIGINT"


def test_console_logs_tag_each_child_line_with_its_service(make_config, start_supervisor) -> None:
    config = make_config(logging={"json": False})
    port = config["tts"]["port"]
    run = start_supervisor(config, "--only", "tts")
    line = run.wait_for(lambda e: f"Uvicorn running on http://127.0.0.1:{port}" in e["event"])
    assert line.get("raw") and "[uvicorn.error]" in line["event"] and "service=tts" in line["event"]
    ready = run.wait_for(lambda e: "service_ready" in e["event"])
    assert f"dashboard=http://127.0.0.1:{port}/" in ready["event"] and "service=supervisor" in ready["event"]
    run.process.send_signal(signal.SIGTERM)
    assert run.wait_exit() == 0


def test_a_service_that_never_answers_is_reported_with_its_last_output(
    make_config, start_supervisor, tmp_path: Path
) -> None:
    # No configuration makes a real service hang before /health answers (it answers while models
    # load), so this child is replaced at interpreter start-up: a sitecustomize that prints two
    # lines and sleeps when, and only when, the interpreter runs `-m stt.server`.
    hook = tmp_path / "hang"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys, time\n"
        "if sys.orig_argv[-2:] == ['-m', 'stt.server']:\n"
        "    print('loading a model that takes forever', flush=True)\n"
        "    print('still loading', flush=True)\n"
        "    time.sleep(600)\n",
        encoding="utf-8",
    )
    config = make_config(supervisor={"startup_timeout_s": 1.5})
    run = start_supervisor(config, "--only", "stt", env={"PYTHONPATH": str(hook)})
    assert run.wait_exit() == 1
    failure = run.find("startup_timeout")[0]
    assert (failure["level"], failure["child"]) == ("error", "stt")
    url = f"{http(config['stt']['port'])}/health"
    assert f"did not answer {url} within 1.5 s (supervisor.startup_timeout_s)" in failure["message"]
    assert failure["last_output"] == ["loading a model that takes forever", "still loading"]
    assert wait_gone(run.child_pids()) == []
