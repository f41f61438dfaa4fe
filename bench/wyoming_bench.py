"""Wyoming side by side: our services against the peers a Home Assistant user would otherwise run,
in one run, on the same models.

- TTS: ours against wyoming-piper, the costed synthetic Piper voice (real medium cost): time to the
  first audio-chunk and to audio-stop of a `synthesize`, for one sentence and for a 60-word paragraph,
  with 1 and with 4 clients at once.
- STT: ours against wyoming-faster-whisper, the tiny-shaped synthetic Whisper: audio-stop -> transcript
  for a spoken command, sent in real time as Home Assistant streams a microphone, and sent at once;
  same beam size (1) and language (en), faster-whisper's default temperatures on both.

Each side runs as its own process (ours: `python -m tts.server`/`stt.server`; the peers from a separate
virtual environment, bench/peers_venv.py, created on first use: their pins clash with ours). Rounds alternate which side
goes first. Ours must be no slower on any figure (median ratio <= 1.0 + noise allowance) and faster on
the paragraph's time to first audio.

    python -m bench.wyoming_bench [--rounds 10] [--peers-venv DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe
from wyoming.tts import Synthesize

from bench.costed_piper_voice import VOICE_NAME, build_costed_voice
from bench.peers_venv import DEFAULT_VENV, peers_python
from bench.stt_bench import _free_port, _server_environment, default_cache_dir
from core.audio import float32_to_pcm16
from core.config import PROJECT_ROOT
from tests.fixtures.speech import make_speech
from tests.fixtures.whisper_model import build_whisper_model

SENTENCE = "The quick brown fox jumps over the lazy dog while a busy farmer counts twelve sheep near the river."
PARAGRAPH = (
    "Good morning, here is your summary for today. The weather is mild with a light breeze from the west, "
    "and rain is expected late in the evening. You have two meetings, one at ten with the design team and "
    "one after lunch with the new supplier. Remember to call your sister about the weekend plans."
)
COMMAND = "Please turn on the lights in the kitchen and close the blinds."
SETTLE_S = 1.0
"""Pause before each side's turn: onnxruntime's threads spin on for a while after a run, and the other
side's process must not pay for them."""
NOISE = 1.03
"""Ratios up to this count as even: the rounds of one run on a shared 2-core VM drift by a few percent."""


@contextlib.contextmanager
def process(command: list[str], log: Path) -> Iterator[int]:
    """The command as a child process, its output in `log`; yields its pid."""
    with open(log, "wb") as output:
        child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=_server_environment(), stdout=output, stderr=subprocess.STDOUT)
    try:
        yield child.pid
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def ready(port: int, kind: str, timeout: float = 180.0) -> None:
    """Until a describe is answered with an info that offers `kind` (asr or tts) and a warm-up works."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with AsyncTcpClient("127.0.0.1", port, connect_timeout=2, read_timeout=5) as client:
                await client.write_event(Describe().event())
                event = await client.read_event()
                if event is not None and event.type == "info" and event.data.get(kind):
                    return
        await asyncio.sleep(0.2)
    raise SystemExit(f"nothing answered a Wyoming describe on port {port} within {timeout:.0f} s")


async def synthesize(port: int, text: str) -> tuple[float, float]:
    """(seconds to the first audio-chunk, seconds to audio-stop) of one synthesize."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as client:
        started = time.perf_counter()
        await client.write_event(Synthesize(text=text).event())
        return await audio_until(client, started, "audio-stop", f"synthesize failed on port {port}")


async def audio_until(client: AsyncTcpClient, started: float, last: str, failed: str) -> tuple[float, float]:
    """(seconds from `started` to the first audio-chunk, to the event `last`) of a synthesis being answered."""
    first = None
    while True:
        event = await client.read_event()
        if event is None or event.type == "error":
            raise SystemExit(f"{failed}: {event}")
        if event.type == "audio-chunk" and first is None:
            first = time.perf_counter() - started
        if event.type == last:
            return first or 0.0, time.perf_counter() - started


async def transcribe(port: int, pcm: bytes, realtime: bool) -> float:
    """Seconds from audio-stop to the transcript. `realtime`: the audio is sent as a microphone gives it
    (what Home Assistant does), 100 ms at a time; otherwise as fast as the socket takes it."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        started = time.perf_counter()
        for index, offset in enumerate(range(0, len(pcm), 3200)):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[offset : offset + 3200]).event())
            if realtime:
                await asyncio.sleep(max(0.0, started + (index + 1) * 0.1 - time.perf_counter()))
        stopped = time.perf_counter()
        await client.write_event(AudioStop().event())
        while True:
            event = await client.read_event()
            if event is None or event.type == "error":
                raise SystemExit(f"transcribe failed on port {port}: {event}")
            if event.type == "transcript":
                return time.perf_counter() - stopped


async def concurrent(port: int, text: str, clients: int) -> tuple[float, float]:
    """Medians over `clients` synthesizes started at once."""
    results = await asyncio.gather(*(synthesize(port, text) for _ in range(clients)))
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def _our_config(workdir: Path, voices: Path, model: Path, tts_port: int, stt_port: int) -> Path:
    config = {
        "logging": {"level": "warning"},
        "stt": {
            "port": _free_port(), "model": str(model), "beam_size": 1, "language": "en", "max_concurrent": 1,
            "wyoming": {"port": stt_port}, "partial_interval_ms": 0,
        },
        "tts": {"port": _free_port(), "voices_dir": str(voices), "voice": VOICE_NAME, "max_concurrent": 1, "wyoming": {"port": tts_port}},
    }  # fmt: skip
    path = workdir / "wyoming-bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(rounds: int, peers_venv: Path) -> dict[str, dict[str, list[float]]]:
    cache = default_cache_dir()
    voice = build_costed_voice()
    model = build_whisper_model(cache / "whisper-tiny", shape="tiny")
    python = peers_python(peers_venv)
    ports = {name: _free_port() for name in ("ours_tts", "ours_stt", "peer_tts", "peer_stt")}
    config = _our_config(cache, voice.parent, model, ports["ours_tts"], ports["ours_stt"])
    pcm = float32_to_pcm16(make_speech(COMMAND, lead_silence_s=0.3, trail_silence_s=0.5))
    piper = [str(python), "-m", "wyoming_piper", "--uri", f"tcp://127.0.0.1:{ports['peer_tts']}", "--voice", VOICE_NAME, "--data-dir", str(voice.parent)]
    whisper = [
        str(python), "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{ports['peer_stt']}", "--model", str(model),
        "--data-dir", str(cache), "--beam-size", "1", "--language", "en", "--cpu-threads", "2", "--local-files-only",
    ]  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {}

    def record(side: str, figure: str, value: float) -> None:
        results.setdefault(figure, {}).setdefault(side, []).append(value)

    with (
        process([sys.executable, "-m", "tts.server", "--config", str(config)], cache / "wyoming-ours-tts.log"),
        process([sys.executable, "-m", "stt.server", "--config", str(config)], cache / "wyoming-ours-stt.log"),
        process(piper, cache / "wyoming-peer-tts.log"),
        process(whisper, cache / "wyoming-peer-stt.log"),
    ):
        for port, kind in ((ports["ours_tts"], "tts"), (ports["ours_stt"], "asr"), (ports["peer_tts"], "tts"), (ports["peer_stt"], "asr")):
            asyncio.run(ready(port, kind))
        sides = {"ours": (ports["ours_tts"], ports["ours_stt"]), "peer": (ports["peer_tts"], ports["peer_stt"])}
        for side, (tts, stt) in sides.items():  # warm-up: voice and model loads, first calls
            asyncio.run(synthesize(tts, SENTENCE))
            asyncio.run(transcribe(stt, pcm, realtime=False))
        for index in range(rounds):
            order = list(sides.items()) if index % 2 == 0 else list(reversed(sides.items()))
            for side, (tts, stt) in order:
                time.sleep(SETTLE_S)
                for label, text in (("sentence", SENTENCE), ("paragraph", PARAGRAPH)):
                    first, stop = asyncio.run(synthesize(tts, text))
                    record(side, f"tts {label}: first audio", first)
                    record(side, f"tts {label}: audio-stop", stop)
                    first, stop = asyncio.run(concurrent(tts, text, 4))
                    record(side, f"tts {label}, 4 clients: first audio", first)
                    record(side, f"tts {label}, 4 clients: audio-stop", stop)
                record(side, "stt, audio in real time: audio-stop -> transcript", asyncio.run(transcribe(stt, pcm, realtime=True)))
                record(side, "stt, audio at once: audio-stop -> transcript", asyncio.run(transcribe(stt, pcm, realtime=False)))
    return results


def report(results: dict[str, dict[str, list[float]]]) -> tuple[str, bool]:
    """Medians of each side, and the median of the per-round ratios (the two sides of one round ran
    moments apart, so the pairs cancel most of the machine's drift)."""
    lines = [
        "| figure | ours (median) | peer (median) | ours / peer, paired median | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    passed = True
    for figure, sides in results.items():
        ours, peer = statistics.median(sides["ours"]), statistics.median(sides["peer"])
        ratio = statistics.median(a / b for a, b in zip(sides["ours"], sides["peer"], strict=True))
        needs_faster = figure == "tts paragraph: first audio"
        ok = ratio < 1.0 if needs_faster else ratio <= NOISE
        passed &= ok
        verdict = ("faster" if ratio < 1.0 else "even" if ratio <= NOISE else "SLOWER") + ("" if ok else " FAIL")
        lines.append(f"| {figure} | {ours * 1000:.0f} ms | {peer * 1000:.0f} ms | {ratio:.3f} | {verdict} |")
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args(argv)
    table, passed = report(measure(args.rounds, args.peers_venv))
    print(f"\nour Wyoming listeners against wyoming-piper and wyoming-faster-whisper, {args.rounds} rounds:\n")
    print(table)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())


