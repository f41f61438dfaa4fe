"""Streaming benchmark: time to first audio of POST /tts against POST /tts/stream, against the floor,
and the voice-to-voice latency of one full turn through both services, all in one run.

Set-up (everything real except the models' weights):
* LLM: the HTTP Ollama double (tests/fixtures/ollama_double.py) streaming a 60-word reply word by word
  at a steady 30 tokens per second (the first token 1/30 s after the request).
* TTS: the real service on uvicorn, Piper with the costed synthetic medium voice (real medium compute,
  bench/costed_piper_voice.py), default tts.first_fragment_* settings.
* STT (voice to voice only): the real service with a Whisper model of tiny's real shapes
  (tests/fixtures/whisper_model.py), espeak-ng speech streamed into /ws/stt in real time.

Measured, alternately so drift hits every side equally (medians over --rounds):
* /tts          request sent -> first byte of the WAV (the whole reply, synthesized whole);
* /tts/stream   request sent -> first byte of PCM after the WAV header;
* floor         the same LLM stream read directly (core.llm + core.text.SpeechSplitter with the service's
                settings) until its first fragment, plus that fragment's direct PiperVoice synthesis:
                what no server can beat. Targets: stream within 30 ms of the floor, and >= 3x sooner
                than /tts.
* voice to voice: end of speech (the frame holding the last loud sample, sent in real time) -> the
  final transcript -> POST /tts/stream (reply true) -> its first audio byte, with each stage, for
  `silence` at 600 ms (with and without speculative finals) and `smart_turn` with speculative finals,
  with partials on and off (bench/voice_turn.py). Goal: <= 900 ms with smart_turn.

    python -m bench.streaming_bench [--rounds 5] [--turns 3] [--no-voice] [--smart-turn-model PATH] [--voice costed|toy]

`--voice toy --no-voice` runs the TTS half on the test suite's toy voice (no torch): a smoke run, its figures
mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.costed_piper_voice import bench_voice
from bench.stt_bench import default_cache_dir
from bench.turn_bench import cached_model as cached_smart_turn_model
from bench.voice_turn import print_turns, run_turns
from core.config import Settings
from core.llm import OllamaClient, chat_messages
from core.text import SpeechSplitter
from tests.fixtures.ollama_double import OllamaDouble, ollama_double
from tests.fixtures.server import run_server

REPLY = (
    "Good question, the short answer is yes. The forecast for today shows clear skies in the morning, "
    "a few clouds after lunch and a light breeze from the west. Temperatures should reach about twenty "
    "degrees by the afternoon, so a light jacket is enough. If you plan to walk by the river this evening, "
    "take an umbrella just in case."
)
TOKEN_RATE = 30.0
FLOOR_SLACK_S = 0.030
SPEEDUP_TARGET = 3.0
QUESTION = "What is the weather like today?"


def _settings(voices_dir: Path, voice: str, llm_url: str, whisper_dir: Path | None) -> Settings:
    stt: dict[str, Any] = {}
    if whisper_dir is not None:
        stt = {
            "model": str(whisper_dir),
            "device": "cpu",
            "compute_type": "int8",
            "beam_size": 1,
            "temperatures": [0.0],
            "wyoming": {"enabled": False},  # not measured here; its fixed port would collide with another run
        }
    return Settings(
        logging={"level": "warning"},
        stt=stt,
        tts={
            "voices_dir": str(voices_dir),
            "voice": voice,
            "max_concurrent": 2,
            "queue_timeout_s": 600,
            "piper": {"download": False},
            "wyoming": {"enabled": False},
        },
        llm={"url": llm_url, "retry_attempts": 0, "timeout_s": 120},
    )


def wait_engine(app: Any) -> None:
    while app.state.service.engines.loading:
        time.sleep(0.02)
    state = app.state.service.engines
    if state.engine is None or state.fallback:
        raise SystemExit(f"the piper engine did not start: {state.error}")


# -- the three TTS measurements -----------------------------------------------------------------


def ttfa_whole(client: httpx.Client) -> float:
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/tts", json={"text": QUESTION, "reply": True}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - started
    assert first is not None
    return first


def ttfa_stream(client: httpx.Client, text: str = QUESTION) -> tuple[float, dict[str, float]]:
    """Seconds to the first PCM byte after the WAV header, and the response's Server-Timing (ms)."""
    started = time.perf_counter()
    received = 0
    first = None
    with client.stream("POST", "/tts/stream", json={"text": text, "reply": True}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            received += len(chunk)
            if first is None and received > 44:
                first = time.perf_counter() - started
        timing = server_timing(response.headers.get("server-timing", ""))
    assert first is not None
    return first, timing


def server_timing(header: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for part in header.split(","):
        fields = part.strip().split(";")
        for field in fields[1:]:
            if field.startswith("dur="):
                values[fields[0]] = float(field[4:])
    return values


def floor_once(settings: Settings, voice: Any) -> tuple[float, float, str]:
    """(seconds until the LLM's first fragment, that fragment's direct synthesis, the fragment)."""

    async def first_fragment() -> tuple[float, str]:
        llm = OllamaClient(settings.llm)
        splitter = SpeechSplitter(settings.tts.first_fragment_min_words, settings.tts.first_fragment_max_words)
        started = time.perf_counter()
        stream = llm.stream_reply(chat_messages(settings.llm.system_prompt, [], QUESTION))
        try:
            async for piece in stream:
                for fragment in splitter.feed(piece):
                    return time.perf_counter() - started, fragment
            for fragment in splitter.flush():
                return time.perf_counter() - started, fragment
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await llm.aclose()
        raise SystemExit("the LLM gave no fragment")

    until_fragment, fragment = anyio.run(first_fragment)
    started = time.perf_counter()
    chunks = list(voice.synthesize(fragment))
    synthesis = time.perf_counter() - started
    assert chunks
    return until_fragment, synthesis, fragment


# -- the run ---------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


ROWS = (
    ("POST /tts (whole reply)", "whole"),
    ("POST /tts/stream (client side)", "stream"),
    ("  in the server (Server-Timing ttfa)", "server_ttfa"),
    ("    until the first fragment was cut", "server_until_fragment"),
    ("    synthesis of the first fragment", "server_synthesis"),
    ("floor: LLM's first fragment + its synthesis", "floor"),
    ("  LLM until the first fragment", "until_fragment"),
    ("  direct synthesis of that fragment", "first_synthesis"),
)
"""(label, key) of each time-to-first-audio figure, in the order printed."""


def tts_rounds(client: httpx.Client, settings: Settings, voice: Any, rounds: int) -> tuple[dict[str, list[float]], str]:
    """Each figure of ROWS per round, sides alternating within a round; and the floor's first fragment."""
    ttfa_whole(client)  # warm both paths and the voice
    ttfa_stream(client)
    floor_once(settings, voice)
    figures: dict[str, list[float]] = {key: [] for _, key in ROWS}
    fragment = ""
    for _ in range(rounds):
        figures["whole"].append(ttfa_whole(client))
        seconds, timing = ttfa_stream(client)
        figures["stream"].append(seconds)
        ttfa, synthesis, queue = (timing.get(name, 0.0) / 1000 for name in ("ttfa", "tts", "queue"))
        figures["server_ttfa"].append(ttfa)
        figures["server_synthesis"].append(synthesis)
        figures["server_until_fragment"].append(ttfa - synthesis - queue)
        until, synth, fragment = floor_once(settings, voice)
        figures["until_fragment"].append(until)
        figures["first_synthesis"].append(synth)
        figures["floor"].append(until + synth)
    return figures, fragment


def print_tts(figures: dict[str, list[float]], fragment: str, voice: str, rounds: int) -> bool:
    """The table, and whether both targets were met."""
    median = statistics.median
    words = len(REPLY.split())
    print(f"reply: {words} words at {TOKEN_RATE:g} tokens/s from the Ollama double ({words / TOKEN_RATE:.1f} s)")
    print(f"voice: {voice}; tts.max_concurrent 2; medians of {rounds} rounds")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"first fragment ({len(fragment.split())} words): {fragment!r}")
    print()
    print(f"{'time to first audio':<44}{'median':>10}{'min':>11}{'max':>11}")
    for label, key in ROWS:
        values = figures[key]
        print(f"{label:<44}{_ms(median(values)):>10} {_ms(min(values)):>10} {_ms(max(values)):>10}")
    gap = median(figures["stream"]) - median(figures["floor"])
    speedup = median(figures["whole"]) / median(figures["stream"])
    ok_floor = gap <= FLOOR_SLACK_S
    ok_speedup = speedup >= SPEEDUP_TARGET
    print()
    print(f"stream - floor: {gap * 1000:+.1f} ms (target <= {FLOOR_SLACK_S * 1000:.0f} ms): {'met' if ok_floor else 'MISSED'}")
    print(f"/tts / stream: {speedup:.1f}x sooner (target >= {SPEEDUP_TARGET:g}x): {'met' if ok_speedup else 'MISSED'}")
    return ok_floor and ok_speedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="TTFA samples per side (default 5)")
    parser.add_argument("--turns", type=int, default=3, help="voice-to-voice turns (default 3)")
    parser.add_argument("--no-voice", action="store_true", help="skip the voice-to-voice part (no STT model)")
    parser.add_argument("--smart-turn-model", type=Path, help="the Smart Turn ONNX file (default: fetched into the bench cache)")
    parser.add_argument("--voice", choices=("costed", "toy"), default="costed",
                        help="the costed medium voice (needs torch), or the test suite's toy voice (a smoke run)")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)

    from piper import PiperVoice

    from tts.server import create_app

    voices_dir, voice_name = bench_voice(args.voice, args.cache_dir)
    whisper_dir = None
    if not args.no_voice:
        from tests.fixtures.whisper_model import build_whisper_model

        whisper_dir = build_whisper_model(args.cache_dir / "whisper-tiny", shape="tiny")

    double: OllamaDouble
    with ollama_double() as double:
        behaviour = double.behaviour
        behaviour.reply, behaviour.tokens = REPLY, "words"
        behaviour.token_rate, behaviour.first_token_s = TOKEN_RATE, 1 / TOKEN_RATE
        settings = _settings(voices_dir, voice_name, double.url, whisper_dir)
        voice = PiperVoice.load(voices_dir / f"{voice_name}.onnx")
        app = create_app(settings)
        logging.getLogger().setLevel(logging.WARNING)
        with run_server(app) as server, httpx.Client(base_url=server.http_url, timeout=120) as client:
            wait_engine(app)
            figures, fragment = tts_rounds(client, settings, voice, args.rounds)
            turns: dict[str, list[dict[str, Any]]] = {}
            if whisper_dir is not None:
                model = args.smart_turn_model or cached_smart_turn_model()
                turns = run_turns(settings, model, QUESTION, args.turns, lambda text: ttfa_stream(client, text))

    met = print_tts(figures, fragment, voice_name, args.rounds)
    if turns:
        print()
        print_turns(turns)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
