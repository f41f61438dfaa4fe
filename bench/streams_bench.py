"""Many STT streams at once: finals ending together (batching on and off), and 64 real-time streams.

    python -m bench.streams_bench [--sizes 1,8,32] [--rounds 2] [--streams 64] [--seconds 20]
                                  [--batch 16] [--json] [--cache-dir DIR] [--shape tiny|toy]

What runs
---------
* The model and the server as in bench/stt_bench.py: the tiny-shaped random-weight CTranslate2 Whisper,
  the real service in its own process (`python -m stt.server`), greedy decoding, device cpu, int8,
  stt.max_concurrent 2, plus language en (no detection pass) and stt.max_connections 128.
* Two servers run side by side for the first part, identical but for batching: `off`
  (stt.batch_max_size 1, the default) and `on` (--batch, stt.batch_window_ms 20). Rounds alternate
  between them, so drift in the machine's load hits both alike.

1. Ending together: N sessions (--sizes) each send one espeak-ng sentence (about 2.6 s) as fast as
   the socket takes it, without trailing silence, and prove it processed (a `config` answered).
   Then every session sends `end` at once; latency is from a session's own `end` to its transcript
   (end of speech -> transcript). p50 and p95 over all sessions of all rounds, the mean batch size
   the server reported, and the ratio on/off.
2. Real time: --streams sessions send 20 ms frames paced as a microphone would (frame k at (k+1) x 20 ms
   after the session's start), for --seconds, against the default server (batching off). `silence`:
   digital silence; `speech`: the sentence and 1.5 s of silence, over and over (each stream
   offset). At the end each session sends a `config` and times its answer from when its last frame
   was due: the intake lag (how far behind real time the server's audio chain is; the answer comes
   once every frame before it went through the VAD). Also: sessions the server closed (must be 0),
   the client's own worst lateness in sending (if it is large, the client, not the server, fell
   behind), transcripts (each session then sends `end` and waits for the result of every utterance it
   started; `unfinished` counts sessions still waiting after RESULTS_TIMEOUT_S), `buffer_limit_reached`,
   and `/health` p50/p99 polled every 100 ms from a thread of this process, with the largest `backlog_seconds` it saw; once that passes
   stt.max_backlog_seconds (30 s by default) one more session tries to join, and what it was told
   first is shown (`error overloaded`, then close code 1013, is the design).

The machine is shared (2 cores, other work running): absolute numbers are noisy; read the ratios
measured in the same run. A benchmark, not a test: it exits 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.stt_bench import bench_settings, default_cache_dir, stt_server
from core.config import LoggingSettings, SttSettings
from core.logging import configure_logging
from tests.fixtures.whisper_model import build_whisper_model

TEXT = "Please turn on the lights in the kitchen."
FRAME_MS = 20
FRAME_BYTES = 16000 * FRAME_MS // 1000 * 2
PAUSE_S = 1.5
TIMEOUT_S = 300.0
RESULTS_TIMEOUT_S = 120.0
"""How long a stream waits, after its end, for the results of the utterances it started."""


def _speech_pcm() -> bytes:
    from core.audio import float32_to_pcm16
    from tests.fixtures.speech import make_speech

    return float32_to_pcm16(make_speech(TEXT, lead_silence_s=0.1, trail_silence_s=0.0))


def _frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _message(ws: Any, kind: str) -> dict[str, Any]:
    """The next message of this type; the others are skipped."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        if message["type"] == kind or message["type"] == "error":
            return message


# --------------------------------------------------------------------------- 1. ending together


async def _ending_round(url: str, n: int, frames: list[bytes]) -> tuple[list[float], list[int]]:
    from websockets.asyncio.client import connect

    async with _Sockets(n, url, connect) as sockets:
        for ws in sockets:
            await _message(ws, "ready")
            await ws.send(json.dumps({"type": "config", "partials": False}))
            for frame in frames:
                await ws.send(frame)
        for ws in sockets:  # the answer to config proves every frame before it was processed
            await ws.send(json.dumps({"type": "config", "language": "en"}))
        for ws in sockets:
            await _message(ws, "config_applied")
            await _message(ws, "config_applied")

        async def end(ws: Any) -> tuple[float, int]:
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "end"}))
            transcript = await _message(ws, "transcript")
            return time.perf_counter() - sent, int(transcript.get("timings", {}).get("batch_size", 0))

        results = await asyncio.gather(*(end(ws) for ws in sockets))
    return [r[0] for r in results], [r[1] for r in results]


class _Sockets:
    """n client sockets opened together and closed together."""

    def __init__(self, n: int, url: str, connect: Any) -> None:
        self._n, self._url, self._connect = n, url, connect
        self._sockets: list[Any] = []

    async def __aenter__(self) -> list[Any]:
        self._sockets = [await self._connect(self._url, max_size=None, open_timeout=30) for _ in range(self._n)]
        return self._sockets

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.gather(*(ws.close() for ws in self._sockets), return_exceptions=True)


def run_ending(urls: dict[str, str], sizes: Sequence[int], rounds: int, say: Any) -> list[dict[str, Any]]:
    frames = _frames(_speech_pcm())
    rows = []
    for n in sizes:
        latencies: dict[str, list[float]] = {mode: [] for mode in urls}
        batches: dict[str, list[int]] = {mode: [] for mode in urls}
        for round_ in range(rounds):
            for mode in urls if round_ % 2 == 0 else reversed(list(urls)):
                got, sizes_seen = asyncio.run(_ending_round(urls[mode], n, frames))
                latencies[mode] += got
                batches[mode] += sizes_seen
                time.sleep(0.3)
        row: dict[str, Any] = {"streams": n}
        for mode in urls:
            row[mode] = {
                "p50_s": round(_pct(latencies[mode], 50), 3),
                "p95_s": round(_pct(latencies[mode], 95), 3),
                "mean_batch": round(float(np.mean(batches[mode])), 2),
            }
        row["p50_ratio_on_off"] = round(row["on"]["p50_s"] / row["off"]["p50_s"], 2)
        row["p95_ratio_on_off"] = round(row["on"]["p95_s"] / row["off"]["p95_s"], 2)
        say(f"ending together, {n} streams: {row}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- 2. real time


def _poll_health(base: str, stop: threading.Event, out: list[float], probe: dict[str, Any]) -> None:
    """/health every 100 ms; once the backlog passes stt.max_backlog_seconds, one new session tries to join."""
    import httpx
    from websockets.sync.client import connect

    with httpx.Client(timeout=30) as client:
        while not stop.wait(0.1):
            started = time.perf_counter()
            health = client.get(f"{base}/health").json()
            out.append(time.perf_counter() - started)
            probe["backlog_max_s"] = max(probe.get("backlog_max_s", 0.0), health["backlog_seconds"])
            if "refused" not in probe and health["backlog_seconds"] >= probe["bound_s"]:
                with connect(base.replace("http://", "ws://") + "/ws/stt") as ws:
                    first = json.loads(ws.recv(timeout=30))
                    probe["refused"] = f"{first['type']} {first.get('code', '')}".strip()


async def _realtime_stream(url: str, i: int, content: bytes, seconds: float, stats: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    frames = _frames(content)
    total = int(seconds * 1000 / FRAME_MS)
    counts: Counter[str] = Counter()
    try:
        async with connect(url, max_size=None, open_timeout=60) as ws:
            await _message(ws, "ready")
            lateness = 0.0

            async def read() -> None:
                async for raw in ws:
                    if isinstance(raw, str):
                        kind = json.loads(raw)["type"]
                        counts[kind] += 1
                        # Only the answer to our config: a transcript may follow it before the reader stops.
                        if kind == "config_applied" and counts[kind] == 1:
                            stats["lag"].append(time.perf_counter() - due)

            reader = asyncio.create_task(read())
            start = time.perf_counter() + i * FRAME_MS / 1000 / 64  # spread the streams over one frame
            offset = (i * 7) % len(frames)
            for k in range(total):
                due = start + (k + 1) * FRAME_MS / 1000
                await asyncio.sleep(max(0.0, due - time.perf_counter()))  # when its last sample leaves the mic
                lateness = max(lateness, time.perf_counter() - due)
                await ws.send(frames[(offset + k) % len(frames)])
            await ws.send(json.dumps({"type": "config", "language": "en"}))
            while counts["config_applied"] == 0 and not reader.done():
                await asyncio.sleep(0.01)
            # Then the utterance under way ends, and every utterance that started gets its result: the
            # transcripts counted do not depend on how far transcription had got when the audio stopped.
            await ws.send(json.dumps({"type": "end"}))
            deadline = time.perf_counter() + RESULTS_TIMEOUT_S
            while counts["transcript"] + counts["no_speech"] < counts["speech_started"] and not reader.done():
                if time.perf_counter() > deadline:
                    stats["unfinished"] += 1
                    break
                await asyncio.sleep(0.01)
            reader.cancel()
            stats["lateness"].append(lateness)
    except ConnectionClosed as closed:
        stats["dropped"].append(f"{closed.rcvd.code if closed.rcvd else None}")
    stats["messages"].update(counts)


async def _realtime(url: str, n: int, content: bytes, seconds: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"lag": [], "lateness": [], "dropped": [], "messages": Counter(), "unfinished": 0}
    await asyncio.gather(*(_realtime_stream(url, i, content, seconds, stats) for i in range(n)))
    return stats


def run_realtime(url: str, n: int, seconds: float, bound_s: float, say: Any) -> list[dict[str, Any]]:
    base = url.replace("ws://", "http://").removesuffix("/ws/stt")
    speech = _speech_pcm() + bytes(int(PAUSE_S * 16000) * 2)
    rows = []
    for kind, content in (("silence", bytes(FRAME_BYTES * 50)), ("speech", speech)):
        health: list[float] = []
        probe: dict[str, Any] = {"bound_s": bound_s}
        stop = threading.Event()
        poller = threading.Thread(target=_poll_health, args=(base, stop, health, probe), daemon=True)
        poller.start()
        stats = asyncio.run(_realtime(url, n, content, seconds))
        stop.set()
        poller.join()
        messages = stats["messages"]
        row = {
            "kind": kind,
            "streams": n,
            "seconds": seconds,
            "intake_lag_p50_s": round(_pct(stats["lag"], 50), 3),
            "intake_lag_max_s": round(max(stats["lag"], default=float("nan")), 3),
            "client_lateness_max_s": round(max(stats["lateness"], default=float("nan")), 3),
            "dropped": len(stats["dropped"]),
            "unanswered": n - len(stats["lag"]),
            "unfinished": stats["unfinished"],
            "transcripts": messages["transcript"],
            "buffer_limit_reached": messages["buffer_limit_reached"],
            "health_p50_ms": round(_pct(health, 50) * 1000, 1),
            "health_p99_ms": round(_pct(health, 99) * 1000, 1),
            "backlog_max_s": round(probe.get("backlog_max_s", 0.0), 1),
            "new_session_at_bound": probe.get("refused", "not reached"),
        }
        say(f"real time, {kind}: {row}")
        rows.append(row)
        time.sleep(1.0)
    return rows


# --------------------------------------------------------------------------- the run


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "Ending together: end of speech -> transcript (s)",
        "| streams | off p50 | off p95 | on p50 | on p95 | on mean batch | p50 on/off | p95 on/off |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["ending"]:
        off, on = row["off"], row["on"]
        lines.append(
            f"| {row['streams']} | {off['p50_s']:.3f} | {off['p95_s']:.3f} | {on['p50_s']:.3f} | {on['p95_s']:.3f} "
            f"| {on['mean_batch']:.1f} | {row['p50_ratio_on_off']:.2f} | {row['p95_ratio_on_off']:.2f} |"
        )
    lines += [
        "",
        "Real time: intake lag at the end, sessions dropped, /health",
        "| audio | streams | seconds | lag p50 (s) | lag max (s) | client late max (s) | dropped | transcripts "
        "| buffer_limit_reached | /health p50 (ms) | /health p99 (ms) | backlog max (s) | new session at the bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["realtime"]:
        lines.append(
            f"| {row['kind']} | {row['streams']} | {row['seconds']:g} | {row['intake_lag_p50_s']:.3f} "
            f"| {row['intake_lag_max_s']:.3f} | {row['client_lateness_max_s']:.3f} | {row['dropped']} "
            f"| {row['transcripts']} | {row['buffer_limit_reached']} | {row['health_p50_ms']:.1f} | {row['health_p99_ms']:.1f} "
            f"| {row['backlog_max_s']:.1f} | {row['new_session_at_bound']} |"
        )
    return "\n".join(lines)


def _settings(model_dir: Path, batch: int, threads: int, workers: int) -> SttSettings:
    base = bench_settings(model_dir, threads=threads)
    return base.model_copy(
        update={
            "language": "en",
            "max_connections": 128,
            "batch_max_size": batch,
            "batch_window_ms": 20,
            "max_concurrent": workers,
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="stt.cpu_threads (0: one per core)")
    parser.add_argument("--workers", type=int, default=2, help="stt.max_concurrent")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--shape", choices=("tiny", "toy"), default="tiny", help="toy: the 1 MB test model (smoke test)")
    args = parser.parse_args(argv)
    # Library and espeak log lines go to stderr, never into the table or the JSON on stdout.
    configure_logging(LoggingSettings(level="warning"), "bench")
    cache = args.cache_dir or default_cache_dir()
    model_dir = build_whisper_model(cache / f"whisper-{args.shape}", shape=args.shape)
    say = (lambda message: None) if args.json else print
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        urls = {}
        for mode, batch in (("off", 1), ("on", args.batch)):
            folder = Path(work) / mode
            folder.mkdir()
            settings = _settings(model_dir, batch, args.threads, args.workers)
            urls[mode] = stack.enter_context(stt_server(settings, folder, folder / "server.log"))
        sizes = [int(size) for size in args.sizes.split(",") if size]
        result["ending"] = run_ending(urls, sizes, args.rounds, say)
        bound = SttSettings().max_backlog_seconds
        result["realtime"] = run_realtime(urls["off"], args.streams, args.seconds, bound, say) if args.streams else []
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
