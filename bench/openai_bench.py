"""OpenAI-compatible routes: what encoding and file transcription cost, each against a baseline measured
in the same run.

1. Time to first byte of POST /v1/audio/speech for mp3 and for opus against pcm (the same text and the
   costed synthetic Piper voice): streaming encoders must add little (ratio of medians <= 1.10).
2. A 60-second file through POST /v1/audio/transcriptions against a direct faster-whisper call on the
   same audio with the same options (tiny-shaped synthetic Whisper, voice activity detection on): the
   service (upload, PyAV decode, worker pool) must stay within 1.05 of the model call.

Rounds alternate (baseline, then each candidate) so drift hits all sides alike.

    python -m bench.openai_bench [--rounds 10] [--voice costed|toy] [--shape tiny|toy] [--seconds 60] [--json]

`--voice toy --shape toy` runs on the test suite's sub-kilobyte voice and 1 MB model (no torch needed):
a smoke run of the code, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.costed_piper_voice import bench_voice
from bench.stt_bench import default_cache_dir
from core.audio import float32_to_pcm16, wav_bytes
from core.config import Settings
from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import down_url
from tests.fixtures.server import run_server
from tests.fixtures.speech import make_speech
from tests.fixtures.whisper_model import build_whisper_model
from tts.server import create_app as create_tts_app

# Three sentences: the first one's audio is what the first byte waits for.
TEXT = (
    "The quick brown fox jumps over the lazy dog near the river. A busy farmer counts twelve sheep "
    "before the rain. Then everyone goes home for a warm dinner."
)
TTFB_TARGET = 1.10
FILE_TARGET = 1.05
FILE_SECONDS = 60.0


def first_byte(client: httpx.Client, fmt: str) -> float:
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt}
    started = time.perf_counter()
    elapsed = 0.0
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk and not elapsed:
                elapsed = time.perf_counter() - started
    return elapsed


def bench_speech(rounds: int, voices: Path, name: str) -> dict[str, Any]:
    settings = Settings(
        logging={"level": "warning"}, tts={"voices_dir": str(voices), "voice": name, "max_concurrent": 1, "wyoming": {"enabled": False}}, llm={"url": down_url()}
    )
    app = create_tts_app(settings)
    samples: dict[str, list[float]] = {"pcm": [], "mp3": [], "opus": []}
    with run_server(app) as server, httpx.Client(base_url=server.http_url, timeout=60) as client:
        while app.state.service.engines.loading:
            time.sleep(0.05)
        for fmt in samples:  # warm-up: voice load, codec initialisation
            first_byte(client, fmt)
        for _ in range(rounds):
            for fmt in samples:
                samples[fmt].append(first_byte(client, fmt))
    medians = {fmt: statistics.median(values) for fmt, values in samples.items()}
    return {"medians": medians, "ratios": {fmt: medians[fmt] / medians["pcm"] for fmt in ("mp3", "opus")}}


def file_audio(seconds: float) -> np.ndarray:
    sentence = make_speech("Please turn on the lights in the kitchen and close the blinds.", lead_silence_s=0.4, trail_silence_s=0.8)
    repeats = int(np.ceil(seconds * 16000 / len(sentence)))
    return np.tile(sentence, repeats)[: int(seconds * 16000)]


def bench_file(rounds: int, shape: str, seconds: float, cache: Path) -> dict[str, Any]:
    from faster_whisper import WhisperModel

    from stt.engine import cpu_threads

    model_dir = build_whisper_model(cache / f"whisper-{shape}", shape=shape)  # type: ignore[arg-type]
    settings = Settings(logging={"level": "warning"}, stt={"model": str(model_dir), "beam_size": 1, "temperatures": [0.0], "language": "en", "wyoming": {"enabled": False}})
    stt = settings.stt
    audio = file_audio(seconds)
    upload = wav_bytes(float32_to_pcm16(audio), 16000)
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads(stt), num_workers=stt.max_concurrent)

    def direct() -> float:
        started = time.perf_counter()
        segments, _ = model.transcribe(audio, language="en", beam_size=1, temperature=0.0, vad_filter=True)
        list(segments)
        return time.perf_counter() - started

    app = create_stt_app(settings)
    direct_times, server_times = [], []
    with run_server(app) as server, httpx.Client(base_url=server.http_url, timeout=300) as client:
        while app.state.service.model.loading:
            time.sleep(0.05)

        def served() -> float:
            started = time.perf_counter()
            response = client.post(
                "/v1/audio/transcriptions", files={"file": ("minute.wav", upload)}, data={"model": "whisper-1", "language": "en"}
            )
            response.raise_for_status()
            return time.perf_counter() - started

        direct(), served()  # warm-up
        for _ in range(rounds):
            direct_times.append(direct())
            server_times.append(served())
    medians = {"direct": statistics.median(direct_times), "server": statistics.median(server_times)}
    return {"medians": medians, "ratio": medians["server"] / medians["direct"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--voice", choices=("costed", "toy"), default="costed")
    parser.add_argument("--shape", choices=("tiny", "toy"), default="tiny")
    parser.add_argument("--seconds", type=float, default=FILE_SECONDS, help="length of the file transcribed")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    speech = bench_speech(args.rounds, *bench_voice(args.voice, args.cache_dir))
    files = bench_file(max(1, args.rounds // 2), args.shape, args.seconds, args.cache_dir)
    checks = {
        "mp3_first_byte": speech["ratios"]["mp3"] <= TTFB_TARGET,
        "opus_first_byte": speech["ratios"]["opus"] <= TTFB_TARGET,
        "file_transcription": files["ratio"] <= FILE_TARGET,
    }
    if args.json:
        print(json.dumps({"speech": speech, "file": files, "checks": checks, "seconds": args.seconds}))
        return 0
    ms = {fmt: round(value * 1000, 1) for fmt, value in speech["medians"].items()}
    print("\n| what | figure | target |\n| --- | --- | --- |")
    for fmt in ("mp3", "opus"):
        ratio = speech["ratios"][fmt]
        verdict = "PASS" if checks[f"{fmt}_first_byte"] else "FAIL"
        print(f"| /v1/audio/speech first byte, {fmt} / pcm | {ms[fmt]} / {ms['pcm']} ms = {ratio:.3f} | <= {TTFB_TARGET} {verdict} |")
    direct_s, server_s = files["medians"]["direct"], files["medians"]["server"]
    verdict = "PASS" if checks["file_transcription"] else "FAIL"
    print(
        f"| {args.seconds:g} s file: /v1/audio/transcriptions / direct transcribe | {server_s:.3f} / {direct_s:.3f} s "
        f"= {files['ratio']:.3f} | <= {FILE_TARGET} {verdict} |"
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

