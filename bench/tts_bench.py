"""TTS benchmark: POST /tts (reply false) against direct PiperVoice synthesis of the same text, in one run.

Both sides use the same costed synthetic medium voice (bench/costed_piper_voice.py: real medium compute,
noise for audio). Latency is measured alternately (direct, HTTP, direct, HTTP, ...) so drift hits both
equally; the ratio of medians is the service's overhead (HTTP, JSON, worker pool, WAV encoding) and
must stay under 1.05. Then requests per second at 1, 2, 4 and 8 concurrent clients, beside the worker
count (tts.max_concurrent).

    python -m bench.tts_bench [--rounds 15] [--workers 2] [--requests-per-client 4]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.costed_piper_voice import VOICE_NAME, build_costed_voice
from core.config import Settings
from tests.fixtures.ollama_double import down_url
from tests.fixtures.server import run_server
from tts.server import create_app

# 20 words, one sentence: about 8 s of audio from the costed voice.
TEXT = "The quick brown fox jumps over the lazy dog while a busy farmer counts twelve sheep near the quiet river."
MAX_RATIO = 1.05


def direct_once(voice: object) -> float:
    started = time.perf_counter()
    chunks = list(voice.synthesize(TEXT))  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    assert chunks
    return elapsed


def http_once(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.post("/tts", json={"text": TEXT, "reply": False})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def throughput(url: str, clients: int, per_client: int) -> float:
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def run() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            barrier.wait()
            try:
                for _ in range(per_client):
                    client.post("/tts", json={"text": TEXT, "reply": False}).raise_for_status()
            except BaseException as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return clients * per_client / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="latency samples per side (default 15)")
    parser.add_argument("--workers", type=int, default=2, help="tts.max_concurrent (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="tts.piper.threads (default 0: onnxruntime decides)")
    parser.add_argument("--requests-per-client", type=int, default=4, help="throughput requests per client")
    args = parser.parse_args()

    from piper import PiperVoice

    model_path = build_costed_voice()
    voices_dir: Path = model_path.parent
    settings = Settings(
        logging={"level": "warning"},
        tts={
            "voices_dir": str(voices_dir),
            "voice": VOICE_NAME,
            "max_concurrent": args.workers,
            "queue_timeout_s": 600,
            "piper": {"download": False, "threads": args.threads},
            "wyoming": {"enabled": False},  # not measured here; its fixed port would collide with another run
        },
        llm={"url": down_url()},
    )
    # The baseline is the plain library call, with onnxruntime's default threads.
    voice = PiperVoice.load(model_path)
    audio_s = sum(len(c.audio_float_array) for c in voice.synthesize(TEXT)) / voice.config.sample_rate
    app = create_app(settings)
    logging.getLogger().setLevel(logging.WARNING)
    with run_server(app) as server, httpx.Client(base_url=server.http_url, timeout=120) as client:
        while app.state.service.engines.loading:
            time.sleep(0.05)
        if app.state.service.engines.engine is None or app.state.service.engines.fallback:
            print(f"engine did not start: {app.state.service.engines.error}", file=sys.stderr)
            return 1
        for _ in range(2):  # warm both paths
            direct_once(voice)
            http_once(client)
        direct, served = [], []
        for _ in range(args.rounds):
            direct.append(direct_once(voice))
            served.append(http_once(client))
        direct_median, served_median = statistics.median(direct), statistics.median(served)
        ratio = served_median / direct_median

        rates = {clients: throughput(server.http_url, clients, args.requests_per_client) for clients in (1, 2, 4, 8)}

    print(
        f"text: {len(TEXT.split())} words, {audio_s:.2f} s of audio; voice: costed synthetic medium ({model_path.name})"
    )
    print(
        f"direct PiperVoice.synthesize  median {direct_median * 1000:7.1f} ms  "
        f"(n={len(direct)}, RTF {direct_median / audio_s:.3f})"
    )
    print(f"POST /tts (reply false)       median {served_median * 1000:7.1f} ms  (n={len(served)})")
    print(f"ratio of medians /tts / direct: {ratio:.3f}  (must be < {MAX_RATIO})")
    threads = args.threads or "onnxruntime default"
    print(f"throughput with tts.max_concurrent = {args.workers} workers, tts.piper.threads = {threads}:")
    for clients, rate in rates.items():
        print(
            f"  {clients} concurrent client(s): {rate:5.2f} requests/s  ({rate * audio_s:5.1f} s of audio per second)"
        )
    return 0 if ratio < MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
