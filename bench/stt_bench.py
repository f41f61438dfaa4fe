"""STT service overhead and end-of-speech latency, against a direct faster-whisper call.

    python -m bench.stt_bench [--runs 10] [--warmup 2] [--threads 0] [--json] [--cache-dir DIR]
                              [--no-partials] [--no-realtime]

What runs
---------
* The model: a CTranslate2 Whisper with real "tiny" shapes (d_model 384, 4+4 layers, 6 heads,
  51,866 tokens; tests/fixtures/whisper_model.py), built once into ~/.cache/voice-assistant-bench/
  ($VOICE_ASSISTANT_BENCH_CACHE or --cache-dir). Random weights, real tiny's compute; the words are
  garbage and steered to 16 per window, about what real tiny emits for this much speech.
* The recording: two sentences of espeak-ng speech (about 3.9 s) between 0.5 s of silence before
  and 2.0 s after, quantised to PCM16 exactly as a client sends it, cut into 20 ms frames.
* The server: the real service, `python -m stt.server --config <generated yaml>`, in its own
  process (its own GIL and thread pools, as deployed), on a free port of 127.0.0.1, with our
  variables (STT__*, CONFIG_PATH, ...) removed from its environment so the generated file is the
  whole configuration. The client is the `websockets` library, which, like a browser, offers
  permessage-deflate. The server logs at info into a file next to the model, as in production.
* Settings, the same on both sides: the defaults of SttSettings (endpoint_silence_ms 600,
  max_concurrent 2 -> num_workers 2, language null = detect) plus device cpu, compute_type int8,
  cpu_threads from --threads (0 = one per available core, as the server resolves it), and greedy decoding:
  beam_size 1, temperatures [0.0]. On random weights the shipped default (beam 5 with temperature
  fallback) takes seconds (FIXTURES.md): it would measure the fixture's erratic decoding, not the
  server. Both sides always get the same values.

Three measurements, interleaved round by round (direct, fast stream, real-time stream, with a
short pause between them) so that drift in machine load hits all three alike; --warmup rounds
first, not recorded.

1. Direct: `WhisperModel.transcribe` in this process, on a WhisperModel built as WhisperEngine.load
   builds it, with the options WhisperEngine.transcribe passes (language, beam_size, temperature,
   vad_filter=False, condition_on_previous_text=False), timed over the call and the full iteration
   of the lazy segments, as the engine times it. The audio is exactly the utterance the server
   transcribes: this script runs the session's own audio chain (stt.chain.AudioChain: resampler,
   streaming Silero VAD, UtteranceSegmenter) over the same 20 ms frames to cut it, and checks the
   result against the server's (same duration, same start, same text; a mismatch is printed).
2. Fast stream: every frame sent as fast as the socket takes it; the transcript's
   `transcribe_seconds` (measured by the engine inside the server's worker thread) against the
   direct median gives the overhead ratio (target < 1.05). It shows what serving costs the model
   call itself: the worker thread hop, the GIL shared with the event loop, and the VAD of the
   frames still arriving while the model runs. It cannot show time spent outside the model.
   This session asks for no partial transcripts (`{"type": "config", "partials": false}`): with
   4 s of speech arriving in a few milliseconds, a partial started at the first speech would
   still be running beside the final, a collision no microphone produces.
3. Real-time stream: each frame sent when its last sample would leave a microphone (frame k at
   (k+1) x 20 ms), the trailing silence included, until the transcript arrives. Latency is
   measured from the frame holding the last sample of speech (the last sample above -50 dBFS)
   to the transcript's arrival: the time a user waits after they stop talking. That span holds
   the endpoint silence the server must hear, the model call, and everything else the server
   does, so it is judged against the issue's budget endpoint_silence_ms + direct transcribe
   median + 50 ms. When audio is streamed as fast as possible the endpoint silence is already in
   the socket, so "after the last frame" would hide the endpointing; that figure is printed only
   for reference. The latency is split into the endpoint delay, known from the replayed
   segmenter (audio time from the last speech frame to the frame at which it closes the
   utterance: the configured silence rounded up to whole 32 ms VAD windows, plus the windows in
   which Silero still hears the speech fading), the server's transcribe time, and the rest
   ("plumbing": queueing, thread hops, JSON, the socket). This session keeps the server's default
   for partial transcripts (on; --no-partials asks them off), so what partials running beside
   the final cost shows in its transcribe time, whose ratio to the direct median is printed too.
   Messages that come before the transcript (speech_started, partial, speech_ended) are timed
   from the same point; the server's own `speech_end_to_transcript_s`, counted from the arrival
   of its last speech window, is shown next to ours.

The figures are timings on a shared machine: read the ratios, which are measured in the same run,
rather than the absolute seconds. This is a benchmark, not a test: it exits 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import PROJECT_ROOT, LoggingSettings, SttSettings
from stt.engine import cpu_threads

DEFAULT_TEXT = "Please turn on the lights in the kitchen. Then set a timer for ten minutes."
LEAD_SILENCE_S = 0.5
TRAIL_SILENCE_S = 2.0
FRAME_MS = 20
SPEECH_LEVEL = 10 ** (-50 / 20)
"""A sample at or above -50 dBFS counts as speech when finding where the speaker stopped."""
PAUSE_S = 0.3
"""Pause between measurements, so one's CPU tail (thread pools winding down) never lands in the next."""
SERVER_START_TIMEOUT_S = 180.0
TRANSCRIPT_TIMEOUT_S = 60.0
OVERHEAD_TARGET = 1.05
NOISY_SPREAD = 1.25
"""Direct transcribe p90 / median above this: the machine was too busy for a 5% verdict."""
LATENCY_SLACK_S = 0.050
_OUR_ENVIRONMENT = ("CONFIG_PATH", "ENVIRONMENT", "OLLAMA_URL", "GROQ_API_KEY")
_OUR_PREFIXES = ("STT__", "TTS__", "LLM__", "LOGGING__")


def default_cache_dir() -> Path:
    root = os.environ.get("VOICE_ASSISTANT_BENCH_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "voice-assistant-bench"


# --------------------------------------------------------------------------- the recording


@dataclass(frozen=True)
class Recording:
    frames: list[bytes]
    """PCM16LE frames of FRAME_MS each (the last one may be shorter)."""
    sample_rate: int
    seconds: float
    speech_start_s: float
    speech_end_s: float
    """Time of the last sample at or above SPEECH_LEVEL."""
    speech_end_frame: int
    """Index of the frame holding that sample: latency is measured from its sending."""


def make_recording(text: str, sample_rate: int) -> Recording:
    from core.audio import float32_to_pcm16, pcm16_to_float32
    from tests.fixtures.speech import make_speech

    audio = make_speech(text, sample_rate=sample_rate, lead_silence_s=LEAD_SILENCE_S, trail_silence_s=TRAIL_SILENCE_S)
    pcm = float32_to_pcm16(audio)
    heard = np.flatnonzero(np.abs(pcm16_to_float32(pcm)) >= SPEECH_LEVEL)
    if not len(heard):
        raise SystemExit("espeak-ng produced silence; cannot benchmark")
    frame_bytes = sample_rate * FRAME_MS // 1000 * 2
    frames = [pcm[offset : offset + frame_bytes] for offset in range(0, len(pcm), frame_bytes)]
    return Recording(
        frames=frames,
        sample_rate=sample_rate,
        seconds=len(audio) / sample_rate,
        speech_start_s=heard[0] / sample_rate,
        speech_end_s=(heard[-1] + 1) / sample_rate,
        speech_end_frame=int(heard[-1] * 2 // frame_bytes),
    )


@dataclass(frozen=True)
class ServerCut:
    """The utterance the server's session pipeline cuts from the recording, replayed here."""

    audio: np.ndarray
    """16 kHz float32: exactly what the server hands to the model."""
    start_s: float
    reason: str
    endpoint_frame: int
    """Index of the frame whose arrival makes the segmenter close the utterance."""


def cut_like_the_server(stt: SttSettings, recording: Recording) -> ServerCut:
    """The server's own audio chain (stt.chain.AudioChain, minus the threads) over the same frames."""
    from stt.chain import AudioChain
    from stt.stream import Utterance

    chain = AudioChain(stt)
    for index, frame in enumerate(recording.frames):
        for event in chain.push(frame):
            if isinstance(event, Utterance):
                return ServerCut(event.audio, event.start, event.reason, index)
    raise SystemExit(
        f"the server's segmenter finds no utterance ending in silence in this recording "
        f"({TRAIL_SILENCE_S} s of trailing silence, endpoint_silence_ms {stt.endpoint_silence_ms})"
    )


# --------------------------------------------------------------------------- the two sides


def load_direct_model(model_dir: Path, stt: SttSettings) -> Any:
    """A WhisperModel built with the arguments WhisperEngine.load gives it on the CPU."""
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(model_dir),
        device=stt.device,
        compute_type=stt.compute_type,
        cpu_threads=cpu_threads(stt),
        num_workers=stt.max_concurrent,
    )


def transcribe_direct(model: Any, audio: np.ndarray, stt: SttSettings) -> tuple[float, str]:
    """The call WhisperEngine.transcribe makes, timed the way it times it; seconds and text."""
    started = time.perf_counter()
    segments, _info = model.transcribe(
        audio,
        language=stt.language,
        beam_size=stt.beam_size,
        temperature=stt.temperatures,
        vad_filter=False,
        condition_on_previous_text=False,
    )
    texts = [segment.text.strip() for segment in segments]
    elapsed = time.perf_counter() - started
    return elapsed, " ".join(t for t in texts if t).strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_environment() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _OUR_ENVIRONMENT and not name.upper().startswith(_OUR_PREFIXES)
    }
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def stt_server(stt: SttSettings, workdir: Path, log_path: Path) -> Iterator[str]:
    """The real service in a child process; yields the /ws/stt URL once the model is loaded."""
    import httpx
    import yaml

    stt = stt.model_copy(update={"host": "127.0.0.1", "port": _free_port()})
    config = workdir / "stt-bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "logging": {"level": "info", "json": False},
                "stt": stt.model_dump(mode="json"),
            }
        )
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stt.server", "--config", str(config)],
            cwd=PROJECT_ROOT,
            env=_server_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{stt.port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the STT server exited with {process.returncode}; see {log_path}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the STT server did not load its model in {SERVER_START_TIMEOUT_S:.0f} s; see {log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{base}/health", timeout=2).json()
                if health.get("whisper_loaded"):
                    break
                if not health.get("loading", True):
                    raise SystemExit(f"the STT server could not load the model: {health.get('error')}")
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{stt.port}/ws/stt"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class StreamResult:
    transcript: dict[str, Any]
    server_transcribe_s: float
    after_last_frame_s: float
    """Transcript arrival minus the sending of the last frame sent (fast mode: the whole recording)."""
    after_speech_s: float
    """Transcript arrival minus the sending of the frame holding the last speech sample."""
    other_messages: dict[str, float]
    """Other message types the server sent first (e.g. speech events), each with its first
    arrival after the speech frame (negative: before it)."""
    message_counts: dict[str, int]
    """How many messages of each type the session received, the transcript included."""


def _is_final(message: dict[str, Any]) -> bool:
    """The message that ends the wait: the utterance's transcript (not a partial one) or a refusal."""
    if message.get("type") == "transcript":
        return message.get("final", True) is not False and not message.get("partial", False)
    return message.get("type") in ("error", "no_speech")


def stream_once(url: str, recording: Recording, *, realtime: bool, partials: bool = True) -> StreamResult:
    """One session: send the recording's frames, wait for the transcript of the utterance.

    partials=False asks the server for no partial transcripts (a `config` message) first;
    True leaves the server's default.
    """
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    frame_s = FRAME_MS / 1000
    arrived: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
    got_transcript = threading.Event()

    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ready = json.loads(ws.recv(timeout=10))
        if ready.get("type") != "ready":
            raise SystemExit(f"the server did not open a session: {ready}")
        if not partials:
            ws.send(json.dumps({"type": "config", "partials": False}))
            answer = json.loads(ws.recv(timeout=10))
            # A server without partial transcripts refuses the field: then there are none to turn off.
            if answer.get("type") not in ("config_applied", "error"):
                raise SystemExit(f"unexpected answer to a config message: {answer}")

        def read() -> None:
            # A thread of its own, so the arrival time is taken when the frame arrives, even while
            # the main thread is asleep until the next frame is due.
            try:
                for raw in ws:
                    message = json.loads(raw)
                    arrived.put((time.perf_counter(), message))
                    if _is_final(message):
                        got_transcript.set()
            except ConnectionClosed:
                pass
            finally:
                arrived.put(None)

        reader = threading.Thread(target=read, name="bench-ws-reader", daemon=True)
        reader.start()
        speech_end_sent = last_sent = 0.0
        start = time.perf_counter()
        for index, frame in enumerate(recording.frames):
            if realtime:
                if got_transcript.is_set():
                    break
                delay = start + (index + 1) * frame_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            ws.send(frame)
            last_sent = time.perf_counter()
            if index == recording.speech_end_frame:
                speech_end_sent = last_sent
        others: dict[str, float] = {}
        counts: dict[str, int] = {}
        deadline = time.monotonic() + TRANSCRIPT_TIMEOUT_S
        while True:
            item = arrived.get(timeout=max(0.0, deadline - time.monotonic()))
            if item is None:
                raise SystemExit("the server closed the session before sending a transcript")
            received_at, message = item
            kind = str(message.get("type"))
            counts[kind] = counts.get(kind, 0) + 1
            if _is_final(message):
                break
            others.setdefault(kind, received_at - speech_end_sent)
        if message.get("type") != "transcript":
            raise SystemExit(f"expected a transcript, the server sent {message}")
    reader.join(timeout=5)
    return StreamResult(
        transcript=message,
        server_transcribe_s=float(message["transcribe_seconds"]),
        after_last_frame_s=received_at - last_sent,
        after_speech_s=received_at - speech_end_sent,
        other_messages=others,
        message_counts=counts,
    )


# --------------------------------------------------------------------------- the run


def _stats(samples: Sequence[float]) -> dict[str, Any]:
    values = np.asarray(samples, dtype=float)
    return {
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "min": float(values.min()),
        "max": float(values.max()),
        "samples": [round(float(v), 4) for v in values],
    }


def _load_average() -> float | None:
    """The 1-minute load average: other work on the machine makes every figure slower."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def bench_settings(model_dir: Path, threads: int, speculative: bool = True) -> SttSettings:
    return SttSettings(
        model=str(model_dir),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
        beam_size=1,
        temperatures=[0.0],
        speculative_finals=speculative,
        wyoming={"enabled": False},  # not measured here; its fixed port would collide with another run
    )


def run_bench(
    *,
    runs: int = 10,
    warmup: int = 2,
    threads: int = 0,
    shape: str = "tiny",
    cache_dir: Path | None = None,
    text: str = DEFAULT_TEXT,
    realtime: bool = True,
    partials: bool = True,
    speculative: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure everything; returns the machine-readable result (see the module docstring)."""
    from tests.fixtures.whisper_model import build_whisper_model

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    started = time.perf_counter()
    load_before = _load_average()
    model_dir = build_whisper_model(cache_dir / f"whisper-{shape}", shape=shape)  # type: ignore[arg-type]
    say(f"model: {model_dir} ({time.perf_counter() - started:.1f} s)")
    stt = bench_settings(model_dir, threads, speculative)
    recording = make_recording(text, stt.sample_rate)
    cut = cut_like_the_server(stt, recording)
    endpoint_delay_s = (cut.endpoint_frame - recording.speech_end_frame) * FRAME_MS / 1000
    model = load_direct_model(model_dir, stt)

    direct: list[float] = []
    fast: list[StreamResult] = []
    paced: list[StreamResult] = []
    direct_texts: set[str] = set()
    mismatches: list[str] = []

    def check(result: StreamResult, mode: str) -> None:
        message = result.transcript
        expected_duration = round(len(cut.audio) / 16000, 3)
        server_cut = (message["duration"], message["start"], message["reason"])
        if server_cut != (expected_duration, cut.start_s, cut.reason):
            mismatches.append(
                f"{mode}: server cut {message['duration']} s from {message['start']} s ({message['reason']}), "
                f"replay cut {expected_duration} s from {cut.start_s} s ({cut.reason})"
            )
        if direct_texts and message["text"] not in direct_texts:
            mismatches.append(f"{mode}: server text differs from the direct call's: {message['text']!r}")

    log_path = cache_dir / "stt-bench-server.log"
    with tempfile.TemporaryDirectory(prefix="stt-bench-") as workdir, stt_server(stt, Path(workdir), log_path) as url:
        say(f"server up ({time.perf_counter() - started:.1f} s); {warmup} warm-up + {runs} measured rounds")
        for round_index in range(warmup + runs):
            measured = round_index >= warmup
            seconds, direct_text = transcribe_direct(model, cut.audio, stt)
            direct_texts.add(direct_text)
            time.sleep(PAUSE_S)
            fast_result = stream_once(url, recording, realtime=False, partials=False)
            time.sleep(PAUSE_S)
            paced_result = stream_once(url, recording, realtime=True, partials=partials) if realtime else None
            time.sleep(PAUSE_S)
            if measured:
                direct.append(seconds)
                check(fast_result, "fast")
                fast.append(fast_result)
                if paced_result:
                    check(paced_result, "real-time")
                    paced.append(paced_result)
            say(
                f"{'round' if measured else 'warm-up'} {round_index + 1 - (warmup if measured else 0)}: "
                f"direct {seconds:.3f} s, server {fast_result.server_transcribe_s:.3f} s"
                + (f", latency {paced_result.after_speech_s:.3f} s" if paced_result else "")
            )

    direct_stats = _stats(direct)
    fast_transcribe = _stats([r.server_transcribe_s for r in fast])
    overhead = fast_transcribe["median"] / direct_stats["median"]
    paired = float(np.median([r.server_transcribe_s / d for r, d in zip(fast, direct)]))
    budget = stt.endpoint_silence_ms / 1000 + direct_stats["median"] + LATENCY_SLACK_S
    result: dict[str, Any] = {
        "settings": {
            "model_shape": shape,
            "model_dir": str(model_dir),
            "device": stt.device,
            "compute_type": stt.compute_type,
            "cpu_threads": cpu_threads(stt),
            "num_workers": stt.max_concurrent,
            "beam_size": stt.beam_size,
            "temperatures": stt.temperatures,
            "language": stt.language,
            "endpoint_silence_ms": stt.endpoint_silence_ms,
            "partial_interval_ms": getattr(stt, "partial_interval_ms", None),
            "partials_fast_stream": False,
            "partials_realtime_stream": partials,
            "speculative_finals": stt.speculative_finals,
            "frame_ms": FRAME_MS,
            "runs": runs,
            "warmup": warmup,
            "cpu_count": os.cpu_count(),
        },
        "recording": {
            "text": text,
            "seconds": round(recording.seconds, 3),
            "speech_start_s": round(recording.speech_start_s, 3),
            "speech_end_s": round(recording.speech_end_s, 3),
            "utterance_seconds": round(len(cut.audio) / 16000, 3),
            "utterance_start_s": cut.start_s,
            "endpoint_delay_s": round(endpoint_delay_s, 3),
        },
        "direct_transcribe_s": direct_stats,
        "fast_stream": {
            "server_transcribe_s": fast_transcribe,
            "after_last_frame_s": _stats([r.after_last_frame_s for r in fast]),
        },
        "overhead_ratio": overhead,
        "paired_overhead_ratio": paired,
        "latency_budget_s": budget,
        "consistency": {"same_audio_and_text": not mismatches, "mismatches": sorted(set(mismatches))},
        "server_log": str(log_path),
    }
    checks: dict[str, Any] = {
        "overhead": {"value": overhead, "target": OVERHEAD_TARGET, "pass": overhead < OVERHEAD_TARGET},
    }
    if paced:
        latency = _stats([r.after_speech_s for r in paced])
        paced_transcribe = _stats([r.server_transcribe_s for r in paced])
        plumbing = _stats([r.after_speech_s - endpoint_delay_s - r.server_transcribe_s for r in paced])
        reported = [
            float(r.transcript["timings"]["speech_end_to_transcript_s"])
            for r in paced
            if "speech_end_to_transcript_s" in r.transcript.get("timings", {})
        ]
        result["realtime_stream"] = {
            "server_transcribe_s": paced_transcribe,
            "overhead_ratio": paced_transcribe["median"] / direct_stats["median"],
            "latency_after_speech_s": latency,
            "plumbing_s": plumbing,
            "partials_per_run": _stats([r.message_counts.get("partial", 0) for r in paced]),
            # The server's own figure, from its last speech window to sending (when it reports one).
            "server_reported_latency_s": _stats(reported) if len(reported) == len(paced) else None,
            # Messages the server sent before the transcript (speech events, if it sends them).
            "other_messages_after_speech_s": {
                kind: _stats([r.other_messages[kind] for r in paced])
                for kind in sorted(set.intersection(*(set(r.other_messages) for r in paced)))
            },
        }
        checks["latency"] = {"value": latency["median"], "target": budget, "pass": latency["median"] < budget}
    else:
        result["realtime_stream"] = None
    result["checks"] = checks
    result["load_average"] = {"before": load_before, "after": _load_average()}
    result["noise"] = {
        "direct_p90_over_median": direct_stats["p90"] / direct_stats["median"],
        "noisy": direct_stats["p90"] / direct_stats["median"] > NOISY_SPREAD,
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms"


def _row(label: str, stats: dict[str, Any] | float, note: str = "") -> str:
    if isinstance(stats, dict):
        figures = _ms(stats["median"]) + _ms(stats["p90"])
    else:
        figures = _ms(stats) + " " * 10
    return f"{label:44}{figures}" + (f"   {note}" if note else "")


def _verdict(check: dict[str, Any]) -> str:
    return "PASS" if check["pass"] else "FAIL"


def format_table(result: dict[str, Any]) -> str:
    s, rec = result["settings"], result["recording"]
    direct, fast, paced = result["direct_transcribe_s"], result["fast_stream"], result["realtime_stream"]
    threads = f"{s['cpu_threads']}"
    lines = [
        f"STT benchmark: {s['model_shape']}-shaped Whisper, {s['device']} {s['compute_type']}, "
        + f"cpu_threads {threads}, num_workers {s['num_workers']}, {s['cpu_count']} CPUs",
        f"decoding as the server: beam_size {s['beam_size']}, temperatures {s['temperatures']}, "
        + f"language {s['language'] or 'detect'}, vad_filter off, condition_on_previous_text off",
        f"recording: {rec['seconds']:.2f} s (speech {rec['speech_start_s']:.2f}-{rec['speech_end_s']:.2f} s), "
        + f"{s['frame_ms']} ms frames; utterance the server cuts: {rec['utterance_seconds']:.2f} s "
        + f"from {rec['utterance_start_s']:.2f} s",
        f"runs: {s['runs']} per measurement after {s['warmup']} warm-up, interleaved",
        "",
        f"{'':44}{'median':>10}{'p90':>10}",
        _row("direct WhisperModel.transcribe", direct),
        _row("server transcribe (fast stream)", fast["server_transcribe_s"]),
    ]
    if paced:
        lines += [
            _row(
                "server transcribe (real-time stream)",
                paced["server_transcribe_s"],
                f"(ratio {paced['overhead_ratio']:.3f}, frames arriving)",
            ),
            _row("latency, last speech frame -> transcript", paced["latency_after_speech_s"]),
            _row("  endpoint delay (VAD, replayed)", rec["endpoint_delay_s"]),
            _row("  server transcribe (as above)", paced["server_transcribe_s"]),
            _row("  plumbing (latency - endpoint - transcribe)", paced["plumbing_s"]),
        ]
        lines += [
            _row(f"  first '{kind}' message", stats, "(before the transcript)")
            for kind, stats in paced["other_messages_after_speech_s"].items()
        ]
        if paced["server_reported_latency_s"]:
            lines.append(
                _row(
                    "  server's own speech_end_to_transcript_s",
                    paced["server_reported_latency_s"],
                    "(from its last speech window)",
                )
            )
    lines.append(_row("fast stream: last frame -> transcript", fast["after_last_frame_s"], "(reference only)"))
    if paced:
        partials = "as the server's default" if s["partials_realtime_stream"] else "asked off"
        lines.append(
            f"partial transcripts: real-time stream {partials} (partial_interval_ms {s['partial_interval_ms']}), "
            f"median {paced['partials_per_run']['median']:.0f} partial messages per run; fast stream: asked off"
        )
    lines += [
        "",
        f"server overhead ratio (median server / median direct): {result['overhead_ratio']:.3f}"
        + f"  (paired per round: {result['paired_overhead_ratio']:.3f})"
        + f"  target < {OVERHEAD_TARGET:.2f}  {_verdict(result['checks']['overhead'])}",
    ]
    if paced:
        latency = result["checks"]["latency"]
        lines.append(
            f"latency median {latency['value'] * 1000:.0f} ms vs budget {latency['target'] * 1000:.0f} ms "
            f"(endpoint_silence_ms {s['endpoint_silence_ms']} + direct median {direct['median'] * 1000:.0f} ms "
            f"+ {LATENCY_SLACK_S * 1000:.0f} ms)  {_verdict(latency)}"
        )
    else:
        lines.append("latency: not measured (--no-realtime)")
    consistency = result["consistency"]
    if consistency["same_audio_and_text"]:
        lines.append("check: the server transcribed the same utterance to the same text as the direct call")
    else:
        lines.append("WARNING: the server and the direct call did not see the same work:")
        lines += [f"  {m}" for m in consistency["mismatches"]]
    load, noise = result["load_average"], result["noise"]
    if noise["noisy"]:
        lines.append(
            f"WARNING: noisy run (direct p90/median {noise['direct_p90_over_median']:.2f} > {NOISY_SPREAD}): "
            "other work on the machine; the PASS/FAIL verdicts above are not reliable"
        )
    lines.append(
        f"load average {load['before']} before, {load['after']} after (on {s['cpu_count']} CPUs); "
        f"server log: {result['server_log']}; total {result['elapsed_s']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stt_bench",
        description="Overhead and end-of-speech latency of the /ws/stt service against a direct faster-whisper call.",
    )
    parser.add_argument("--runs", type=int, default=10, help="measured rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded rounds first (default 2)")
    parser.add_argument(
        "--threads", type=int, default=0, help="stt.cpu_threads for both sides (default 0: one thread per available core, as the server does)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--cache-dir", type=Path, help="where the model is built (default ~/.cache/voice-assistant-bench)"
    )
    parser.add_argument(
        "--shape",
        choices=("tiny", "toy"),
        default="tiny",
        help="model shape (toy: the test suite's 1 MB model, for smoke tests)",
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="what espeak-ng says in the recording")
    parser.add_argument(
        "--no-realtime", dest="realtime", action="store_false", help="skip the real-time stream (no latency figure)"
    )
    parser.add_argument(
        "--no-partials",
        dest="partials",
        action="store_false",
        help="ask for no partial transcripts in the real-time stream too (the fast stream never asks for them)",
    )
    parser.add_argument(
        "--no-speculative",
        dest="speculative",
        action="store_false",
        help="stt.speculative_finals off on the server: the final starts at the endpoint, not in the pause",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--runs must be at least 1, --warmup and --threads at least 0")

    from core.logging import configure_logging

    # Library and espeak log lines go to stderr, never into the table or the JSON on stdout.
    configure_logging(LoggingSettings(level="warning"), "bench")
    result = run_bench(
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        shape=args.shape,
        cache_dir=args.cache_dir,
        text=args.text,
        realtime=args.realtime,
        partials=args.partials,
        speculative=args.speculative,
        progress=not args.json,
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
