"""Voice to voice for bench/streaming_bench.py: end of speech -> final transcript -> first reply audio byte,
through both real services, for each way of ending a turn side by side.

The configurations (`TURN_CONFIGS`), each its own STT service in the same process, asked in turn so that
drift hits each equally:
* `silence 600`: the fixed 600 ms silence timeout with no speculation: the final starts after the timeout;
* `silence 600 + speculative`: the same timeout, the final started at turn_min_silence_ms into the pause
  (stt.speculative_finals, on by default);
* `smart_turn + speculative`: the Smart Turn model asked after turn_min_silence_ms of silence (the turn ends
  then if it says complete), 1,000 ms as the upper bound, the final started at the same moment;
* the same with partials off: a speculation takes a worker only when one is free and never the last
  (stt/speculation.py), so with stt.max_concurrent 2 a partial still running when the pause begins leaves
  none, and the final starts only when the turn ends.

The speech is espeak-ng's (tests/fixtures/speech.py). Smart Turn judges espeak-ng's flat prosody poorly (it
calls most of it complete: see bench/turn_bench.py), so its row shows how fast a turn ends once the model
says complete, not how often it would on a human voice.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from core.config import Settings
from tests.fixtures.server import run_server

FRAME_MS = 20
SPEECH_LEVEL = 0.02
SMART_TURN_BOUND_MS = 1000

TURN_CONFIGS: dict[str, dict[str, Any]] = {
    "silence 600": {"turn_detection": "silence", "endpoint_silence_ms": 600, "speculative_finals": False},
    "silence 600 + speculative": {"turn_detection": "silence", "endpoint_silence_ms": 600, "speculative_finals": True},
    "smart_turn + speculative": {
        "turn_detection": "smart_turn",
        "endpoint_silence_ms": SMART_TURN_BOUND_MS,
        "speculative_finals": True,
    },
    "smart_turn + speculative, no partials": {
        "turn_detection": "smart_turn",
        "endpoint_silence_ms": SMART_TURN_BOUND_MS,
        "speculative_finals": True,
        "partial_interval_ms": 0,
    },
}

FirstAudio = Callable[[str], tuple[float, dict[str, float]]]
"""Given the transcript, POST it to /tts/stream: (seconds to the first audio byte, Server-Timing in ms)."""


def speech_frames(text: str, sample_rate: int) -> tuple[list[bytes], int]:
    """Real-time PCM16 frames of `text` spoken by espeak-ng, and the index of the frame holding the last loud sample."""
    from core.audio import float32_to_pcm16
    from tests.fixtures.speech import make_speech

    audio = make_speech(text, sample_rate=sample_rate, lead_silence_s=0.5, trail_silence_s=2.0)
    loud = np.flatnonzero(np.abs(audio) >= SPEECH_LEVEL)
    step = sample_rate * FRAME_MS // 1000
    pcm = float32_to_pcm16(audio)
    frames = [pcm[i * 2 : (i + step) * 2] for i in range(0, len(audio), step)]
    return frames, int(loud[-1]) // step


def _final_message(ws: Any, frames: list[bytes], end_frame: int) -> tuple[dict[str, Any], float, float]:
    """Send `frames` in real time; (the final message, when the last speech frame was sent, when the final came)."""
    got: dict[str, Any] = {}
    done = threading.Event()

    def read() -> None:
        for raw in ws:
            message = json.loads(raw)
            if message.get("type") in ("transcript", "error", "no_speech"):
                got["at"], got["message"] = time.perf_counter(), message
                done.set()
                return

    threading.Thread(target=read, daemon=True).start()
    start = time.perf_counter()
    speech_end = 0.0
    for index, frame in enumerate(frames):
        if done.is_set():
            break
        delay = start + (index + 1) * FRAME_MS / 1000 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ws.send(frame)
        if index == end_frame:
            speech_end = time.perf_counter()
    if not done.wait(30):
        raise SystemExit("no transcript from /ws/stt")
    if not speech_end:
        raise SystemExit(f"/ws/stt answered before the end of speech: {got['message']}")
    if got["message"]["type"] != "transcript":
        raise SystemExit(f"/ws/stt answered {got['message']}")
    return got["message"], speech_end, got["at"]


def voice_turn(stt_ws_url: str, question: str, sample_rate: int, first_audio: FirstAudio) -> dict[str, Any]:
    from websockets.sync.client import connect

    frames, end_frame = speech_frames(question, sample_rate)
    with connect(stt_ws_url, open_timeout=10, close_timeout=5) as ws:
        ready = json.loads(ws.recv(timeout=30))
        if ready.get("type") != "ready":
            raise SystemExit(f"/ws/stt did not open a session: {ready}")
        message, speech_end, transcript_at = _final_message(ws, frames, end_frame)
        # The random-weight Whisper writes garbage (or nothing); the Ollama double answers anyway.
        text = message.get("text", "").strip() or question
        asked = time.perf_counter()
        seconds, timing = first_audio(text)
    stt_timings = message.get("timings") or {}
    return {
        "total": asked + seconds - speech_end,
        "speech_end_to_transcript": transcript_at - speech_end,
        "transcribe": float(message.get("transcribe_seconds", 0.0)),
        "transcript_to_request": asked - transcript_at,
        "tts_first_audio": seconds,
        "llm_ttft": timing.get("llm_ttft", 0.0) / 1000,
        "tts_first_synthesis": timing.get("tts", 0.0) / 1000,
        "queue": timing.get("queue", 0.0) / 1000,
        "server_ttfa": timing.get("ttfa", 0.0) / 1000,
        "stt_timings": stt_timings,
    }


@contextmanager
def stt_service(settings: Settings) -> Iterator[Any]:
    from stt.server import create_app as create_stt_app

    app = create_stt_app(settings)
    with run_server(app) as server:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=server.http_url, timeout=5) as client:
            while not _ready(client.get("/health").json()):
                if time.monotonic() > deadline:
                    raise SystemExit("the STT model (or the Smart Turn model) did not load")
                time.sleep(0.1)
        yield server


def _ready(health: dict[str, Any]) -> bool:
    turn = health["turn_detection"]
    if turn["error"]:
        raise SystemExit(f"the Smart Turn model did not load: {turn['error']}")
    return bool(health["whisper_loaded"]) and (turn["mode"] == "silence" or turn["model_loaded"])


def run_turns(
    settings: Settings, smart_turn_model: Path, question: str, turns: int, first_audio: FirstAudio
) -> dict[str, list[dict[str, Any]]]:
    """`turns` voice-to-voice turns per configuration, the configurations taken in turn, after one warm-up each."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in TURN_CONFIGS}
    with ExitStack() as stack:
        urls = {}
        for name, overrides in TURN_CONFIGS.items():
            stt = settings.stt.model_copy(update={**overrides, "smart_turn_model": smart_turn_model})
            server = stack.enter_context(stt_service(settings.model_copy(update={"stt": stt})))
            urls[name] = f"{server.ws_url}/ws/stt"
            voice_turn(urls[name], question, settings.stt.sample_rate, first_audio)
        for _ in range(turns):
            for name, url in urls.items():
                results[name].append(voice_turn(url, question, settings.stt.sample_rate, first_audio))
    return results


ROWS = (
    ("total", "total"),
    ("  end of speech -> final transcript", "speech_end_to_transcript"),
    ("    of which transcription (server)", "transcribe"),
    ("  transcript -> request sent", "transcript_to_request"),
    ("  request -> first audio byte (/tts/stream)", "tts_first_audio"),
    ("    LLM time to first token", "llm_ttft"),
    ("    waiting for a worker", "queue"),
    ("    synthesis of the first fragment", "tts_first_synthesis"),
    ("    server time to first audio", "server_ttfa"),
)


def print_turns(results: dict[str, list[dict[str, Any]]]) -> None:
    names = list(results)
    count = len(results[names[0]])
    print(f"voice to voice (end of speech -> first reply audio byte), {count} turns each, medians (ms):")
    print(f"{'':<46}" + "".join(f"{name:>40}" for name in names))
    for label, key in ROWS:
        cells = [statistics.median(turn[key] for turn in results[name]) * 1000 for name in names]
        print(f"{label:<46}" + "".join(f"{cell:>40.1f}" for cell in cells))
    for name in names:
        print(f"  STT timings of the last turn, {name}: {results[name][-1]['stt_timings']}")
