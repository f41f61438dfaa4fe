"""End-of-turn detection: `silence` at several timeouts against `smart_turn`, on a labelled set of turns.

    python -m bench.turn_bench [--json] [--model PATH] [--sources human,espeak] [--limit N]

The set
-------
* human: the eight spoken recordings Debian's `alsa-utils` installs in /usr/share/sounds/alsa/ ("Front
  center", "Rear left", ...; one speaker, 1.3-1.5 s each, clean studio takes; `apt-get install -y alsa-utils`).
  Each is a complete turn as recorded (its two words are already 0.2-0.4 s apart), and it gives four turns with
  a thinking pause: the gap between its two words widened to 300, 600, 900 and 1,200 ms of silence.
* espeak: ten short commands in three espeak-ng voices (en-us, en-gb, en-us+f3), each a complete turn, and
  each cut at the word gap nearest its middle ("Set a timer | for ten minutes") with the same four pauses.

How far to trust it: the human part is 8 phrases of two words by one speaker, read rather than said, with the
pause spliced in as digital silence (its recordings are silent between words, so the splice is seamless), and
the words before a pause were spoken as part of the whole phrase, so they carry its prosody rather than a
hesitation's. espeak-ng's prosody is flat: Smart Turn scores its sentences and their cuts alike (FIXTURES.md),
so its figures say little about the model. The set shows the mechanism and its costs, not production accuracy;
judge on the human rows, and on your own recordings before relying on it.

What runs
---------
Each turn, with 0.5 s of silence before and 3.5 s after, goes through the session's own components in the order
SttSession.feed_audio calls them (stt/session.py): AudioChain (Silero VAD, UtteranceSegmenter) window by
window, then TurnTaker, which asks the real Smart Turn model (stt/smart_turn.py) once per pause of
turn_min_silence_ms and ends a complete turn with `end_turn`. Audio time is counted in samples, so the
figures do not depend on the machine, except the model's own time, which is measured and added to each
turn it ended (the audio does not wait for it in a live session).

* premature cut-off: a turn ended (an utterance closed at a silence) before the speaker's last word: the
  pause items are cut inside their pause, the complete items inside their own word gap.
* end-of-turn delay: from the last sample of speech (above -50 dBFS) to the end of the turn, for the
  complete items: the wait a user has before the reply can start.

This is a benchmark, not a test: it exits 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.stt_bench import default_cache_dir
from core.audio import float32_to_pcm16, resample
from core.config import LoggingSettings, Settings
from stt.chain import AudioChain
from stt.smart_turn import SmartTurnModel, TurnVerdict, fetch
from stt.stream import SAMPLE_RATE, Utterance
from stt.turns import TurnModelHolder, TurnTaker
from stt.vad import WINDOW_SAMPLES

ALSA_DIR = Path("/usr/share/sounds/alsa")
ALSA_NAMES = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left", "Side_Right")
SENTENCES = (
    "Set a timer for ten minutes.", "Turn off the lights in the kitchen.", "Play some music by the Beatles.",
    "What is the weather like in Paris today?", "Remind me to buy milk tomorrow.", "Call my mother on her mobile.",
    "How long does it take to boil an egg?", "Add bread and butter to the shopping list.",
    "Tell me a joke about computers.", "Read me the news from this morning.",
)  # fmt: skip
VOICES = ("en-us", "en-gb", "en-us+f3")
PAUSES_MS = (300, 600, 900, 1200)
SILENCE_TIMEOUTS_MS = (300, 600, 900, 1200, 1500)
SMART_TURN_BOUNDS_MS = (1000, 2000, 3000)
"""endpoint_silence_ms, the upper bound, for smart_turn (pipecat's own default is 3 s)."""
MIN_SILENCE_MS = 200
LEAD_S, TRAIL_S = 0.5, 3.5
SPEECH_LEVEL = 10 ** (-50 / 20)


@dataclass(frozen=True)
class Turn:
    name: str
    source: str
    """human or espeak."""
    audio: np.ndarray
    """16 kHz float32: lead silence, the turn, trailing silence."""
    speech_end: int
    """Sample after the last one above -50 dBFS."""
    pause_ms: int
    """0 for a complete item."""


def _quiet_run(speech: np.ndarray, at: int) -> tuple[int, int]:
    """The stretch of samples below -50 dBFS (10 ms average) around `at`."""
    level = np.sqrt(np.convolve(speech**2, np.ones(160) / 160, mode="same")) < SPEECH_LEVEL
    start = end = at
    while start > 0 and level[start - 1]:
        start -= 1
    while end < len(speech) and level[end]:
        end += 1
    return start, end


def _turn(name: str, source: str, speech: np.ndarray, pause_ms: int = 0, split: int = 0) -> Turn:
    if pause_ms:
        start, end = _quiet_run(speech, split)
        # The pause is the quiet gap between the words, widened with silence to pause_ms.
        extra = max(0, int(pause_ms * SAMPLE_RATE / 1000) - (end - start))
        speech = np.concatenate([speech[:split], np.zeros(extra, np.float32), speech[split:]])
    loud = np.flatnonzero(np.abs(speech) >= SPEECH_LEVEL)
    lead, trail = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32), np.zeros(int(TRAIL_S * SAMPLE_RATE), np.float32)
    audio = np.concatenate([lead, speech, trail])
    return Turn(name, source, audio, int(LEAD_S * SAMPLE_RATE) + int(loud[-1]) + 1, pause_ms)


def _word_gap(speech: np.ndarray, lo: float, hi: float) -> int:
    """The quietest 50 ms between fractions lo and hi of the speech: the gap between two words."""
    energy = np.convolve(speech**2, np.ones(800) / 800, mode="same")
    a, b = int(lo * len(speech)), int(hi * len(speech))
    return a + int(np.argmin(energy[a:b]))


def human_turns() -> list[Turn]:
    if not all((ALSA_DIR / f"{name}.wav").exists() for name in ALSA_NAMES):
        raise SystemExit(f"the human recordings are missing from {ALSA_DIR}: apt-get install -y alsa-utils (or --sources espeak)")
    turns = []
    for name in ALSA_NAMES:
        with wave.open(str(ALSA_DIR / f"{name}.wav")) as file:
            raw = np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16).astype(np.float32) / 32768
            speech = resample(raw.reshape(-1, file.getnchannels()).mean(axis=1), file.getframerate(), SAMPLE_RATE)
        split = _word_gap(speech, 0.3, 0.7)
        turns.append(_turn(name, "human", speech))
        turns += [_turn(f"{name} +{p}ms", "human", speech, p, split) for p in PAUSES_MS]
    return turns


def espeak_turns() -> list[Turn]:
    from tests.fixtures.speech import make_speech

    turns = []
    for voice in VOICES:
        for text in SENTENCES:
            speech = make_speech(text, lead_silence_s=0.0, trail_silence_s=0.0, voice=voice)
            split = _word_gap(speech, 0.4, 0.6)
            turns.append(_turn(f"{voice}: {text}", "espeak", speech))
            turns += [_turn(f"{voice}: {text} +{p}ms", "espeak", speech, p, split) for p in PAUSES_MS]
    return turns


class CachedModel:
    """The real model, asked once per distinct audio: every smart_turn configuration asks the same pauses."""

    def __init__(self, model: SmartTurnModel) -> None:
        self._model = model
        self._verdicts: dict[tuple[int, int], TurnVerdict] = {}
        self.turn_id = 0

    def judge(self, audio: np.ndarray) -> TurnVerdict:
        key = (self.turn_id, len(audio))
        if key not in self._verdicts:
            self._verdicts[key] = self._model.judge(audio)
        return self._verdicts[key]

    @property
    def seconds(self) -> list[float]:
        return [verdict.seconds for verdict in self._verdicts.values()]


def turn_ends(settings: Settings, holder: TurnModelHolder, turn: Turn) -> list[tuple[int, float]]:
    """(sample at which a turn ended, model seconds that ended it) for each utterance closed at a silence."""
    chain = AudioChain(settings.stt)
    turns = TurnTaker(settings.stt, holder)
    pcm, ends = float32_to_pcm16(turn.audio), []
    for offset in range(0, len(pcm), WINDOW_SAMPLES * 2):
        events, model_seconds = chain.push(pcm[offset : offset + WINDOW_SAMPLES * 2]), 0.0
        model = turns.model_due(chain.segmenter)
        if model is not None:
            mark = chain.segmenter.speech_mark
            verdict = model.judge(chain.segmenter.current_audio())
            turns.judged(mark, verdict)
            if verdict.complete:
                events, model_seconds = events + chain.segmenter.end_turn(), verdict.seconds
        fed = offset // 2 + WINDOW_SAMPLES
        ends += [(fed, model_seconds) for e in events if isinstance(e, Utterance) and e.reason == "silence"]
    return ends


def evaluate(settings: Settings, holder: TurnModelHolder, turns: Sequence[Turn]) -> dict[str, Any]:
    cut = {"pause": 0, "complete": 0}
    delays: dict[str, list[float]] = {"human": [], "espeak": []}
    for turn_id, turn in enumerate(turns):
        if isinstance(holder.model, CachedModel):
            holder.model.turn_id = turn_id
        ends = turn_ends(settings, holder, turn)
        if any(at < turn.speech_end for at, _ in ends):
            cut["pause" if turn.pause_ms else "complete"] += 1
        final = [(at, seconds) for at, seconds in ends if at >= turn.speech_end]
        if not turn.pause_ms and final:
            delays[turn.source].append((final[0][0] - turn.speech_end) / SAMPLE_RATE + final[0][1])
    every = delays["human"] + delays["espeak"]
    return {
        "premature_cutoffs": cut,
        "items": {"pause": sum(1 for t in turns if t.pause_ms), "complete": sum(1 for t in turns if not t.pause_ms)},
        "delay_s": {name: _stats(values) for name, values in (("all", every), *delays.items()) if values},
    }


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": round(float(np.median(values)), 3), "p90": round(float(np.percentile(values, 90)), 3), "n": len(values)}


def run_bench(model_path: Path, sources: Sequence[str], limit: int | None) -> dict[str, Any]:
    turns = [*(human_turns() if "human" in sources else []), *(espeak_turns() if "espeak" in sources else [])][:limit]
    model = SmartTurnModel(model_path)
    cached = CachedModel(model)
    results: dict[str, Any] = {}
    for source in sources:
        subset = [t for t in turns if t.source == source]
        for timeout in SILENCE_TIMEOUTS_MS:
            settings = Settings(stt={"endpoint_silence_ms": timeout})
            results.setdefault(f"silence {timeout} ms", {})[source] = evaluate(settings, TurnModelHolder(settings), subset)
        for bound in SMART_TURN_BOUNDS_MS:
            stt = {"turn_detection": "smart_turn", "endpoint_silence_ms": bound, "turn_min_silence_ms": MIN_SILENCE_MS}
            settings = Settings(stt=stt)
            holder = TurnModelHolder(settings)
            holder.model = cached  # type: ignore[assignment]  # the real model behind a cache of its verdicts
            cached.turn_id = 0
            results.setdefault(f"smart_turn {MIN_SILENCE_MS}/{bound} ms", {})[source] = evaluate(settings, holder, subset)
    items = {source: sum(1 for t in turns if t.source == source) for source in sources}
    return {"items": items, "results": results, "model": cost(model, cached)}


def cost(model: SmartTurnModel, cached: CachedModel) -> dict[str, Any]:
    """Size, and per-inference time (features included) on one thread: over the bench's own calls and over 8 s windows."""
    window = np.random.default_rng(0).normal(0, 0.1, 8 * SAMPLE_RATE).astype(np.float32)
    model.judge(window)
    runs = []
    for _ in range(30):
        started = time.perf_counter()
        model.judge(window)
        runs.append(time.perf_counter() - started)
    features = time.perf_counter()
    for _ in range(30):
        model.features(window)
    features_s = (time.perf_counter() - features) / 30
    return {
        "file_bytes": model.path.stat().st_size,
        "load_average": round(os.getloadavg()[0], 2),
        "inference_s": _stats(runs),
        "features_s": round(features_s, 4),
        "bench_calls_s": _stats(cached.seconds) if cached.seconds else None,
    }


def verdict(results: dict[str, Any], source: str) -> dict[str, Any]:
    """Does any smart_turn configuration beat silence at 600 ms on both cut-offs and delay (median and p90)?"""
    base = results["silence 600 ms"][source]

    def cutoffs(r: dict[str, Any]) -> int:
        return sum(r["premature_cutoffs"].values())

    beats = {}
    for name, by_source in results.items():
        if name.startswith("smart_turn"):
            r, b = by_source[source]["delay_s"]["all"], base["delay_s"]["all"]
            fewer_cuts = cutoffs(by_source[source]) < cutoffs(base)
            beats[name] = fewer_cuts and r["median"] < b["median"] and r["p90"] < b["p90"]
    return beats


def format_table(result: dict[str, Any]) -> str:
    lines = [f"Turns: {result['items']} (each source: complete items and pause items of {PAUSES_MS} ms)", ""]
    header = f"{'detector':<24} {'source':<7} {'cut in pause':>13} {'cut complete':>13} {'delay median':>13} {'delay p90':>10}"
    lines += [header, "-" * len(header)]
    for name, by_source in result["results"].items():
        for source, r in by_source.items():
            cut, items, delay = r["premature_cutoffs"], r["items"], r["delay_s"].get("all", {})
            lines.append(
                f"{name:<24} {source:<7} {cut['pause']:>6} of {items['pause']:<4} {cut['complete']:>6} of {items['complete']:<4}"
                f" {delay.get('median', float('nan')) * 1000:>10.0f} ms {delay.get('p90', float('nan')) * 1000:>7.0f} ms"
            )
    cost_ = result["model"]
    lines += ["", f"Smart Turn: {cost_['file_bytes'] / 1e6:.1f} MB; one inference on an 8 s window "
              f"(features included, one thread): median {cost_['inference_s']['median'] * 1000:.0f} ms, p90 {cost_['inference_s']['p90'] * 1000:.0f} ms "
              f"(features alone {cost_['features_s'] * 1000:.1f} ms; load average {cost_['load_average']})"]  # fmt: skip
    for source, beats in result["verdicts"].items():
        answers = ", ".join(f"{name}: {'yes' if beaten else 'no'}" for name, beaten in beats.items())
        lines.append(f"Beats silence 600 ms on both ({source}): {answers}")
    return "\n".join(lines)


def cached_model() -> Path:
    """The Smart Turn model in the bench cache, fetched from the pipecat-ai wheel when it is missing."""
    return fetch(default_cache_dir() / "smart-turn-v3.2-cpu.onnx")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--model", type=Path, help="the Smart Turn ONNX file (default: fetched into the bench cache)")
    parser.add_argument("--sources", default="human,espeak", help="comma-separated: human, espeak (default both)")
    parser.add_argument("--limit", type=int, help="only the first N turns (smoke tests)")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    if not sources or set(sources) - {"human", "espeak"}:
        parser.error("--sources takes human and/or espeak")

    from core.logging import configure_logging

    configure_logging(LoggingSettings(level="warning"), "bench")
    model_path = args.model or cached_model()
    result = run_bench(model_path, sources, args.limit)
    result["verdicts"] = {source: verdict(result["results"], source) for source in sources}
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
