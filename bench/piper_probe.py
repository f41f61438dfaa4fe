"""Where a Piper synthesis's time goes, direct library calls only (no service): the two TTS figures of
bench/peers_bench.py on which ours was behind.

1. The early first fragment (tts.first_fragment_*): the 20-word sentence synthesized whole against the
   same sentence as the two fragments our splitter cuts it into (the first cut after 12 words), rounds
   interleaved; the split's cost is split into phonemization and the ONNX run with cProfile.
2. Concurrency: 8 syntheses of the sentence by 1, 2 and 4 threads sharing one voice (what wyoming-piper's
   global lock, our tts.max_concurrent: 2 and piper-http's threaded Flask do), with onnxruntime's default
   threads and with tts.piper.threads-style sessions (intra_op threads set, inter_op 1), and with the
   intra-op pool's spinning off, and with the engine's adaptive sessions (tts/engines/piper_sessions.py:
   all cores for a lone synthesis, a share of them each while several run).

    python -m bench.piper_probe [--rounds 10]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

import onnxruntime
from piper import PiperVoice
from piper.config import PiperConfig

from bench.costed_piper_voice import build_costed_voice
from bench.wyoming_bench import SENTENCE
from core.priority import available_cores
from core.text import SpeechSplitter
from tts.engines.piper_sessions import SynthesisLoad, load_aware_session

JOBS = 8


def voice_with(model: Path, threads: int | None, spinning: bool = True) -> PiperVoice:
    """The voice as PiperVoice.load builds it (threads None), or with the session options set."""
    if threads is None and spinning:
        return PiperVoice.load(model)
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text(encoding="utf-8")))
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(config=config, session=session)


LOAD = SynthesisLoad()
"""Counts every synthesis of this probe, as PiperEngine counts its own: the adaptive voice picks its sessions by it."""


def adaptive_voice(model: Path) -> PiperVoice:
    """The voice as PiperEngine builds it with tts.piper.adaptive_threads: all cores alone, a share when shared."""
    config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text(encoding="utf-8")))
    plain = PiperVoice.load(model).session
    session = load_aware_session(model, LOAD, max(1, available_cores() // 2), plain)
    if session is None:
        raise SystemExit(f"{model}: its shared sessions do not speak as a plain session does")
    return PiperVoice(config=config, session=session)  # type: ignore[arg-type]


def speak(voice: PiperVoice, texts: list[str]) -> tuple[float, float]:
    """(seconds, seconds of audio) of synthesizing `texts` one after another."""
    started = time.perf_counter()
    samples = 0
    for text in texts:
        with LOAD.run():
            samples += sum(len(chunk.audio_float_array) for chunk in voice.synthesize(text))
    return time.perf_counter() - started, samples / voice.config.sample_rate


def early_cut(voice: PiperVoice, rounds: int) -> None:
    splitter = SpeechSplitter(4, 12)
    fragments = [*splitter.feed(SENTENCE), *splitter.flush()]
    whole, split = [], []
    for index in range(rounds):
        pair = [(whole, [SENTENCE]), (split, fragments)]
        for results, texts in pair if index % 2 == 0 else reversed(pair):
            results.append(speak(voice, texts))
    print(f"fragments: {fragments}")
    for name, results in (("whole", whole), ("two fragments", split)):
        print(f"  {name:14s} median {statistics.median(r[0] for r in results) * 1000:6.0f} ms, "
              f"{statistics.median(r[1] for r in results):.2f} s of audio")  # fmt: skip
    ratio = statistics.median(s[0] / w[0] for w, s in zip(whole, split, strict=True))
    print(f"  two fragments / whole, paired median: {ratio:.3f}")
    for name, texts in (("whole", [SENTENCE]), ("two fragments", fragments)):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(3):
            speak(voice, texts)
        profile.disable()
        stats = pstats.Stats(profile)
        print(f"  cProfile, {name}, 3 runs (cumulative s): " + ", ".join(
            f"{label} {_cumulative(stats, function):.3f}"
            for label, function in (("onnx run", "run"), ("phonemize", "phonemize"), ("synthesize", "synthesize"))
        ))  # fmt: skip


def _cumulative(stats: pstats.Stats, function: str) -> float:
    return sum(row[3] for key, row in stats.stats.items() if key[2] == function)  # type: ignore[attr-defined]


def throughput(voice: PiperVoice, threads: int) -> float:
    """Syntheses per second: JOBS sentences shared among `threads` threads started at once."""
    jobs = iter(range(JOBS))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if next(jobs, None) is None:
                    return
            speak(voice, [SENTENCE])

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return JOBS / (time.perf_counter() - started)


def concurrency(model: Path, rounds: int) -> None:
    sessions = {
        "onnxruntime default threads": voice_with(model, None),
        "intra_op 1 (tts.piper.threads: 1)": voice_with(model, 1),
        "intra_op 2 (tts.piper.threads: 2)": voice_with(model, 2),
        "default threads, spinning off": voice_with(model, None, spinning=False),
        "adaptive (tts.piper.adaptive_threads)": adaptive_voice(model),
    }
    cases = [(name, threads) for name in sessions for threads in (1, 2, 4)]
    rates: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for voice in sessions.values():
        speak(voice, [SENTENCE])
    for index in range(rounds):
        for name, threads in cases if index % 2 == 0 else reversed(cases):
            time.sleep(0.5)  # the previous case's spinning threads settle
            rates[(name, threads)].append(throughput(sessions[name], threads))
    print(f"syntheses/s, {JOBS} sentences shared among 1 / 2 / 4 threads on one voice (medians of {rounds} rounds):")
    for name in sessions:
        print(f"  {name:36s} " + " / ".join(f"{statistics.median(rates[(name, t)]):.2f}" for t in (1, 2, 4)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", choices=("cut", "threads"))
    args = parser.parse_args(argv)
    model = build_costed_voice()
    if args.only != "threads":
        early_cut(voice_with(model, None), args.rounds)
    if args.only != "cut":
        concurrency(model, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
