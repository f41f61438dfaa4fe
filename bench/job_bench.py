"""Job throughput benchmark: a 5,000-word document as a job, in audio seconds produced per wall-clock second,
against direct Piper synthesis of the same text in one thread, all in one run.

The costed synthetic medium voice (bench/costed_piper_voice.py: real medium compute, noise for audio).
Runs: direct `PiperVoice.synthesize` (one Python thread, onnxruntime's default threads), then the same text
as a job embedded with 1 and 2 worker threads (jobs.backend sqlite), then distributed with 2 `python -m
tts.worker` processes on a Redis server started here (Debian's redis-server; skipped when missing). Each
job is timed from POST /v1/speech/jobs to its state `done` (render, join and WAV writing included).

    python -m bench.job_bench [--words 5000] [--threads 1] [--per-part 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.costed_piper_voice import VOICE_NAME, build_costed_voice
from core.config import PROJECT_ROOT, Settings
from tests.fixtures.ollama_double import down_url
from tests.fixtures.server import run_server
from tts.server import create_app

SENTENCES = [
    "The quick brown fox jumps over the lazy dog while a busy farmer counts twelve sheep near the quiet river.",
    "Every morning the old baker opens his small shop before the sun rises over the sleeping town below.",
    "A long train crossed the wide valley slowly, and the children waved at the passengers from the bridge.",
    "She wrote a letter to her brother about the storm that had closed the harbour for three whole days.",
]


def document_text(words: int) -> str:
    """About `words` words of plain sentences, cut at a sentence end."""
    sentences, count = [], 0
    while count < words:
        sentence = SENTENCES[len(sentences) % len(SENTENCES)]
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


def direct(model_path: Path, text: str) -> tuple[float, float]:
    from piper import PiperVoice

    voice = PiperVoice.load(model_path)
    list(voice.synthesize(SENTENCES[0]))  # warm
    started = time.perf_counter()
    samples = sum(len(chunk.audio_float_array) for chunk in voice.synthesize(text))
    return samples / voice.config.sample_rate, time.perf_counter() - started


def settings_for(voices_dir: Path, data_dir: Path, threads: int, jobs: dict[str, Any]) -> dict[str, Any]:
    return {
        "logging": {"level": "warning"},
        "tts": {"voices_dir": str(voices_dir), "voice": VOICE_NAME, "piper": {"download": False, "threads": threads},
                "wyoming": {"enabled": False}},
        "llm": {"url": down_url()},
        "data_dir": str(data_dir),
        "jobs": {"max_document_chars": 1_000_000, **jobs},
    }  # fmt: skip


def run_job(settings: dict[str, Any], text: str) -> tuple[float, float]:
    """(audio seconds, wall seconds) of the text as one job on a service with `settings`."""
    app = create_app(Settings(**settings))
    logging.getLogger().setLevel(logging.WARNING)
    with run_server(app) as server, httpx.Client(base_url=server.http_url, timeout=120) as client:
        while app.state.service.engines.loading:
            time.sleep(0.05)
        started = time.perf_counter()
        job = client.post("/v1/speech/jobs", json={"text": text, "format": "wav"})
        job.raise_for_status()
        state = job.json()
        while state["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.05)
            state = client.get(f"/v1/speech/jobs/{state['id']}").json()
        elapsed = time.perf_counter() - started
    if state["state"] != "done":
        raise SystemExit(f"the job ended {state['state']}: {state['reason']}")
    return state["progress"]["audio_s"], elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_distributed(base: dict[str, Any], text: str, workers: int, folder: Path) -> tuple[float, float] | None:
    server = shutil.which("redis-server")
    if server is None:
        return None
    port = free_port()
    redis = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    settings = {**base, "jobs": {**base["jobs"], "backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0",
                                 "results_dir": str(folder / "shared")}}  # fmt: skip
    config = folder / "worker.yaml"
    config.write_text(yaml.safe_dump({**settings, "jobs": {**settings["jobs"], "workers": 1}}), encoding="utf-8")
    processes = []
    try:
        time.sleep(0.5)  # redis-server binds its port
        command = [sys.executable, "-m", "tts.worker", "--config", str(config)]
        processes = [subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ}) for _ in range(workers)]
        return run_job(settings, text)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=120)
        redis.terminate()
        redis.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=5000, help="words in the document (default 5000)")
    parser.add_argument("--threads", type=int, default=1, help="tts.piper.threads of each job worker (default 1)")
    parser.add_argument("--per-part", type=int, default=8, help="jobs.sentences_per_part (default 8)")
    args = parser.parse_args()

    model_path = build_costed_voice()
    text = document_text(args.words)
    audio_s, direct_s = direct(model_path, text)
    baseline = audio_s / direct_s
    print(f"document: {len(text.split())} words, {audio_s:.1f} s of audio; voice: costed synthetic medium; cores: {os.cpu_count()}")
    print(f"direct PiperVoice.synthesize, one thread: {direct_s:7.2f} s  {baseline:6.1f} audio s/s  (1.00x)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        runs: dict[str, tuple[float, float] | None] = {}
        for workers in (1, 2):
            jobs = {"workers": workers, "sentences_per_part": args.per_part}
            runs[f"embedded, {workers} worker thread(s)"] = run_job(
                settings_for(model_path.parent, folder / f"embedded-{workers}", args.threads, jobs), text
            )
        base = settings_for(model_path.parent, folder / "service", args.threads, {"sentences_per_part": args.per_part})
        runs["distributed, 2 worker processes"] = run_distributed(base, text, 2, folder)
    for name, result in runs.items():
        if result is None:
            print(f"{name}: skipped (redis-server is not installed)")
            continue
        job_audio_s, wall_s = result
        rate = job_audio_s / wall_s
        print(f"{name:<38} {wall_s:7.2f} s  {rate:6.1f} audio s/s  ({rate / baseline:.2f}x)")
    print(f"tts.piper.threads = {args.threads} per worker, jobs.sentences_per_part = {args.per_part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
