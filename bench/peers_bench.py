"""Side by side with the peers, in one run, on the same models: ours against wyoming-faster-whisper
3.8.1, wyoming-piper 2.5.2 and piper-tts's own HTTP server (`python -m piper.http_server`).

Same costed synthetic Piper voice (bench/costed_piper_voice.py: real medium compute), same tiny-shaped
synthetic Whisper (tests/fixtures/whisper_model.py), beam 1, language en. Every side is its own process
(ours: `python -m stt.server` / `tts.server` with their defaults otherwise; the peers from their own
virtual environment, bench/peers_venv.py). Rounds alternate which side goes first; each figure is the
median of the per-round ratios ours / peer (the two sides of a round ran seconds apart, so the pairs
cancel most of a shared machine's drift): below 1 ours is faster. A throughput's ratio is of the time
the batch took (peer requests/s over ours), so below 1 is faster there too.

- STT (ours over /ws/stt and over Wyoming, against wyoming-faster-whisper over Wyoming): end of audio ->
  transcript, the utterance streamed in real time and sent at once; 4 clients sending it at once (the
  median client); the STT process's resident memory (peak, and at the end after IDLE_BEFORE_MEMORY_S idle).
- TTS against piper-http (whole WAV per request): ours `/tts/stream` first audio byte for a sentence and
  a 60-word paragraph, `POST /tts` whole 20-word sentence, requests/s with 4 clients.
- TTS against wyoming-piper, both streaming (synthesize-start, the text in one chunk, synthesize-stop, as
  Home Assistant sends an LLM's reply): first audio-chunk and synthesize-stopped for the sentence and the
  paragraph, requests/s with 4 clients.

    python -m bench.peers_bench [--rounds 10] [--peers-venv DIR] [--only stt|tts] [--transcribe-nice 0] [--piper-threads 0] [--partial-interval-ms 700] [--set SECTION.KEY=VALUE] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import websockets
import yaml
from wyoming.client import AsyncTcpClient
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop

from bench.costed_piper_voice import VOICE_NAME, build_costed_voice
from bench.peers_venv import DEFAULT_VENV, peers_python
from bench.stt_bench import _free_port, _is_final, default_cache_dir
from bench.wyoming_bench import COMMAND, PARAGRAPH, SENTENCE, SETTLE_S, audio_until, process, ready, transcribe
from core.audio import float32_to_pcm16
from core.config import SttSettings
from tests.fixtures.speech import make_speech
from tests.fixtures.whisper_model import build_whisper_model

CLIENTS = 4
REQUESTS_PER_CLIENT = 2
IDLE_BEFORE_MEMORY_S = SttSettings().trim_memory_after_s + 1.0
"""Idle time before the memory is read at the end, as a voice assistant spends most of its time between
conversations: longer than our stt.trim_memory_after_s, after which the memory the transcriptions freed is
handed back (core/memory.py)."""
FRAME_BYTES = 3200
"""100 ms of 16 kHz PCM16, what the real-time clients send at a time."""
Figures = dict[str, dict[str, list[float]]]


# --------------------------------------------------------------------------- clients


async def http_speech(url: str, body: dict) -> tuple[float, float]:
    """(seconds to the first audio byte after the header, seconds to the end) of one POST."""
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        first = None
        async with client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for _ in response.aiter_bytes():
                first = first or time.perf_counter() - started
        return first or 0.0, time.perf_counter() - started


async def wyoming_stream(port: int, text: str) -> tuple[float, float]:
    """(first audio-chunk, synthesize-stopped) of a streamed synthesis whose text comes in one chunk."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as client:
        started = time.perf_counter()
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text=text).event())
        await client.write_event(SynthesizeStop().event())
        return await audio_until(client, started, "synthesize-stopped", f"streamed synthesis failed on port {port}")


async def ws_transcribe(url: str, pcm: bytes, realtime: bool) -> float:
    """Seconds from the end of the audio ({"type": "end"} after the last frame) to the transcript."""
    async with websockets.connect(url, open_timeout=10) as ws:
        if json.loads(await ws.recv()).get("type") != "ready":
            raise SystemExit("our /ws/stt did not open a session")
        started = time.perf_counter()
        for index, offset in enumerate(range(0, len(pcm), FRAME_BYTES)):
            await ws.send(pcm[offset : offset + FRAME_BYTES])
            if realtime:
                await asyncio.sleep(max(0.0, started + (index + 1) * 0.1 - time.perf_counter()))
        stopped = time.perf_counter()
        await ws.send(json.dumps({"type": "end"}))
        while not _is_final(message := json.loads(await ws.recv())):
            pass
        if message.get("type") != "transcript":
            raise SystemExit(f"our /ws/stt sent {message} instead of a transcript")
        return time.perf_counter() - stopped


async def together(call: Callable[[], Awaitable[object]], clients: int, per_client: int) -> float:
    """Seconds for `clients` clients, started at once, to make `per_client` calls each, one after another."""

    async def client() -> None:
        for _ in range(per_client):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


async def median_of_clients(call: Callable[[], Awaitable[float]], clients: int) -> float:
    return statistics.median(await asyncio.gather(*(call() for _ in range(clients))))


def memory_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of a process, MB (VmHWM, VmRSS of /proc/PID/status)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


# --------------------------------------------------------------------------- the sides


def our_config(path: Path, voice: Path, model: Path, ports: dict[str, int], nice: int, piper_threads: int, partials_ms: int = 700,
               settings: Sequence[str] = ()) -> Path:
    """Our services' config file; `settings`: more of them as "section.key=value" (a YAML value), set last."""
    config = {
        "logging": {"level": "warning"},
        "stt": {"host": "127.0.0.1", "port": ports["ours_stt_http"], "model": str(model), "beam_size": 1, "language": "en",
                "transcribe_nice": nice, "partial_interval_ms": partials_ms, "wyoming": {"port": ports["ours_stt_wyoming"]}},
        "tts": {"host": "127.0.0.1", "port": ports["ours_tts_http"], "voices_dir": str(voice.parent), "voice": VOICE_NAME,
                "piper": {"download": False, "threads": piper_threads}, "wyoming": {"port": ports["ours_tts_wyoming"]}},
    }  # fmt: skip
    for setting in settings:
        dotted, _, value = setting.partition("=")
        *sections, key = dotted.split(".")
        section = config
        for name in sections:
            section = section.setdefault(name, {})
        section[key] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(config))
    return path


def commands(python: Path, config: Path, voice: Path, model: Path, cache: Path, ports: dict[str, int]) -> dict[str, list[str]]:
    peer = str(python)
    return {
        "ours_tts": [sys.executable, "-m", "tts.server", "--config", str(config)],
        "ours_stt": [sys.executable, "-m", "stt.server", "--config", str(config)],
        "piper_http": [peer, "-m", "piper.http_server", "--host", "127.0.0.1", "--port", str(ports["piper_http"]), "-m", str(voice)],
        "wyoming_piper": [peer, "-m", "wyoming_piper", "--uri", f"tcp://127.0.0.1:{ports['wyoming_piper']}", "--voice", VOICE_NAME,
                          "--data-dir", str(voice.parent), "--local-files-only"],
        "wyoming_whisper": [peer, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{ports['wyoming_whisper']}",
                            "--model", str(model), "--data-dir", str(cache), "--beam-size", "1", "--language", "en",
                            "--cpu-threads", str(os.cpu_count() or 1), "--local-files-only"],
    }  # fmt: skip


async def http_ready(url: str, loaded: str | None = None, timeout: float = 180.0) -> None:
    """Until `url` answers 200 (with the JSON field `loaded` true, when given)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(url)
                if response.status_code == 200 and (loaded is None or response.json().get(loaded)):
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


class Bench:
    """The figures of one run; `pair` measures both sides of a figure, in the round's order."""

    def __init__(self, ports: dict[str, int], pcm: bytes) -> None:
        self.ports, self.pcm, self.figures, self.round = ports, pcm, {}, 0
        self.ours_tts = f"http://127.0.0.1:{ports['ours_tts_http']}"
        self.ours_ws = f"ws://127.0.0.1:{ports['ours_stt_http']}/ws/stt"
        self.piper_http = f"http://127.0.0.1:{ports['piper_http']}/synthesize"

    def record(self, figure: str, side: str, value: float) -> None:
        self.figures.setdefault(figure, {}).setdefault(side, []).append(value)

    async def pair(self, sides: dict[str, Callable[[], Awaitable[dict[str, float]]]]) -> None:
        order = list(sides.items())
        for side, measure in order if self.round % 2 == 0 else reversed(order):
            await asyncio.sleep(SETTLE_S)  # onnxruntime's and CTranslate2's threads spin on after a run
            for figure, value in (await measure()).items():
                self.record(figure, side, value)

    async def tts_http(self, ours: bool) -> dict[str, float]:
        stream = f"{self.ours_tts}/tts/stream" if ours else self.piper_http
        whole = f"{self.ours_tts}/tts" if ours else self.piper_http
        body = {"reply": False} if ours else {}
        sentence, _ = await http_speech(stream, {**body, "text": SENTENCE})
        paragraph, _ = await http_speech(stream, {**body, "text": PARAGRAPH})
        _, full = await http_speech(whole, {**body, "text": SENTENCE})
        took = await together(lambda: http_speech(whole, {**body, "text": SENTENCE}), CLIENTS, REQUESTS_PER_CLIENT)
        return {"http sentence: first audio": sentence, "http paragraph: first audio": paragraph,
                "http 20-word sentence: whole": full, f"http {CLIENTS} clients: requests/s": CLIENTS * REQUESTS_PER_CLIENT / took}  # fmt: skip

    async def tts_wyoming(self, port: int) -> dict[str, float]:
        sentence = await wyoming_stream(port, SENTENCE)
        paragraph = await wyoming_stream(port, PARAGRAPH)
        took = await together(lambda: wyoming_stream(port, SENTENCE), CLIENTS, REQUESTS_PER_CLIENT)
        return {"wyoming sentence: first audio": sentence[0], "wyoming sentence: whole": sentence[1],
                "wyoming paragraph: first audio": paragraph[0], "wyoming paragraph: whole": paragraph[1],
                f"wyoming {CLIENTS} clients: requests/s": CLIENTS * REQUESTS_PER_CLIENT / took}  # fmt: skip

    async def stt(self, port: int, ws: bool) -> dict[str, float]:
        pcm = self.pcm
        figures = {
            "stt real time: end of audio -> transcript": await transcribe(port, pcm, realtime=True),
            "stt at once: end of audio -> transcript": await transcribe(port, pcm, realtime=False),
            f"stt {CLIENTS} clients at once (median client)": await median_of_clients(lambda: transcribe(port, pcm, False), CLIENTS),
        }  # fmt: skip
        # Ours also over its native socket; the peer has only Wyoming, so its real-time figure stands beside it.
        figures["stt real time, ours over /ws/stt"] = (
            await ws_transcribe(self.ours_ws, pcm, realtime=True) if ws else figures["stt real time: end of audio -> transcript"]
        )
        return figures

    async def one_round(self, only: str | None) -> None:
        ports = self.ports
        if only != "tts":
            await self.pair({"ours": lambda: self.stt(ports["ours_stt_wyoming"], ws=True),
                             "wyoming-faster-whisper": lambda: self.stt(ports["wyoming_whisper"], ws=False)})  # fmt: skip
        if only != "stt":
            await self.pair({"ours": lambda: self.tts_http(True), "piper-http": lambda: self.tts_http(False)})
            await self.pair({"ours": lambda: self.tts_wyoming(ports["ours_tts_wyoming"]),
                             "wyoming-piper": lambda: self.tts_wyoming(ports["wyoming_piper"])})  # fmt: skip
        self.round += 1


async def warm_up(bench: Bench, only: str | None) -> None:
    ports = bench.ports
    if only != "tts":
        await ready(ports["ours_stt_wyoming"], "asr")
        await ready(ports["wyoming_whisper"], "asr")
        await bench.stt(ports["ours_stt_wyoming"], ws=True)
        await bench.stt(ports["wyoming_whisper"], ws=False)
    if only != "stt":
        await ready(ports["ours_tts_wyoming"], "tts")
        await ready(ports["wyoming_piper"], "tts")
        await http_ready(f"{bench.ours_tts}/health", loaded="voice_loaded")
        await http_ready(bench.piper_http.replace("/synthesize", "/info"))
        await bench.tts_http(True)
        await bench.tts_http(False)
        await bench.tts_wyoming(ports["ours_tts_wyoming"])
        await bench.tts_wyoming(ports["wyoming_piper"])


def measure(rounds: int, venv: Path, only: str | None, nice: int, piper_threads: int, partials_ms: int,
            settings: Sequence[str] = ()) -> tuple[Figures, dict[str, tuple[float, float]]]:
    cache = default_cache_dir()
    voice = build_costed_voice()
    model = build_whisper_model(cache / "whisper-tiny", shape="tiny")
    python = peers_python(venv)
    names = ("ours_stt_http", "ours_stt_wyoming", "ours_tts_http", "ours_tts_wyoming", "piper_http", "wyoming_piper", "wyoming_whisper")
    ports = {name: _free_port() for name in names}
    config = our_config(cache / "peers-bench.yaml", voice, model, ports, nice, piper_threads, partials_ms, settings)
    wanted = {"stt": ("ours_stt", "wyoming_whisper"), "tts": ("ours_tts", "piper_http", "wyoming_piper")}
    started = [name for kind, group in wanted.items() if only in (None, kind) for name in group]
    bench = Bench(ports, float32_to_pcm16(make_speech(COMMAND, lead_silence_s=0.3, trail_silence_s=0.5)))
    with contextlib.ExitStack() as stack:
        pids = {name: stack.enter_context(process(command, cache / f"peers-{name}.log"))
                for name, command in commands(python, config, voice, model, cache, ports).items() if name in started}  # fmt: skip
        asyncio.run(warm_up(bench, only))
        for _ in range(rounds):
            asyncio.run(bench.one_round(only))
        memory: dict[str, tuple[float, float]] = {}
        if only != "tts":
            time.sleep(IDLE_BEFORE_MEMORY_S)
            memory = {name: memory_mb(pids[name]) for name in ("ours_stt", "wyoming_whisper")}
    return bench.figures, memory


# --------------------------------------------------------------------------- the table


def table(figures: Figures, memory: dict[str, tuple[float, float]]) -> str:
    lines = ["| figure | peer | ours (median) | peer (median) | ours / peer (paired median) |", "|---|---|---|---|---|"]
    for figure, sides in figures.items():
        ours = sides["ours"]
        peer_name, peer = next((name, values) for name, values in sides.items() if name != "ours")
        rate = figure.endswith("requests/s")
        ratios = [(b / a) if rate else (a / b) for a, b in zip(ours, peer, strict=True)]
        unit = (lambda v: f"{v:.2f}/s") if rate else (lambda v: f"{v * 1000:.0f} ms")
        lines.append(f"| {figure} | {peer_name} | {unit(statistics.median(ours))} | {unit(statistics.median(peer))} | "
                     f"{statistics.median(ratios):.3f} |")  # fmt: skip
    if len(memory) == 2:
        (ours_peak, ours_now), (peer_peak, peer_now) = memory["ours_stt"], memory["wyoming_whisper"]
        lines.append(f"| stt process resident memory, peak / at the end | wyoming-faster-whisper | {ours_peak:.0f} / {ours_now:.0f} MB | "
                     f"{peer_peak:.0f} / {peer_now:.0f} MB | {ours_peak / peer_peak:.3f} / {ours_now / peer_now:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--only", choices=("stt", "tts"))
    parser.add_argument("--transcribe-nice", type=int, default=0, help=(
        "our stt.transcribe_nice (default 0, not the service's 10: the peer transcribes at normal priority, and on a "
        "machine that other programs keep busy a niced transcription yields to them)"))  # fmt: skip
    parser.add_argument("--piper-threads", type=int, default=0, help="our tts.piper.threads (default 0, the service's)")
    parser.add_argument("--partial-interval-ms", type=int, default=700, help="our stt.partial_interval_ms (default 700, the service's; 0: no partials)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="another of our settings, e.g. tts.piper.adaptive_threads=true (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args = parser.parse_args(argv)
    figures, memory = measure(args.rounds, args.peers_venv, args.only, args.transcribe_nice, args.piper_threads,
                              args.partial_interval_ms, args.set)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "memory_mb": memory}, indent=1))
    print(f"\nours against the peers, {args.rounds} interleaved rounds, {os.cpu_count()} cores:\n")
    print(table(figures, memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
