"""Smart Turn v3: an end-of-turn classifier (pipecat's, BSD-2-Clause) run with onnxruntime.

The model takes Whisper log-mel features (80 mels x 800 frames) of the last 8 s of 16 kHz audio, zero-padded
at the front, after zero-mean unit-variance normalisation of the waveform; it returns the probability that
the speaker has finished their turn. faster-whisper's own feature extractor computes those features (to
within 1e-5 of pipecat's numpy copy of transformers' extractor), so neither pipecat nor transformers is needed.

The ONNX file ships only inside the `pipecat-ai` wheel, whose dependencies are heavy: `fetch` downloads that
one wheel (no dependencies) with pip, which honours the user's own index settings, and extracts the file.

    python -m stt.smart_turn fetch [--to PATH]     # default: stt.smart_turn_model
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.logging import get_logger

log = get_logger(__name__)

PIPECAT_VERSION = "1.14.0"
"""The pipecat-ai release whose wheel the model is taken from."""
WHEEL_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
SAMPLE_RATE = 16000
WINDOW_SAMPLES = 8 * SAMPLE_RATE
"""The model sees the last 8 s of the turn; shorter audio is padded with zeros at the start."""
FETCH_TIMEOUT_S = 600


class SmartTurnError(Exception):
    """The model could not be fetched or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class TurnVerdict:
    complete: bool
    probability: float
    """The model's probability that the turn is complete."""
    seconds: float
    """Time the features and the inference took."""


class SmartTurnModel:
    """One per process, shared by every session. `judge` blocks (onnxruntime): run it in a worker thread."""

    def __init__(self, path: Path, threshold: float = 0.5) -> None:
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        options = onnxruntime.SessionOptions()
        # One thread per inference: the VAD pool already bounds how many run at once, and more threads per
        # call would fight the transcription workers for the same cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (unexported) error types for a bad or missing file
            raise SmartTurnError(f"could not load the Smart Turn model {path}: {exc}") from exc
        self._features = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=8)
        self.path = path
        self.threshold = threshold

    def features(self, audio: np.ndarray) -> np.ndarray:
        """float32 [80, 800]: the model's input for the end of `audio` (16 kHz float32)."""
        window = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
        window = np.pad(window, (WINDOW_SAMPLES - len(window), 0))
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        # padding=0: 128,000 samples give the 800 frames the model was trained on (the extractor's default
        # 160 extra samples would give 801).
        return np.asarray(self._features(window, padding=0), dtype=np.float32)

    def probability(self, audio: np.ndarray) -> float:
        (logits,) = self._session.run(None, {"input_features": self.features(audio)[None]})
        return float(np.asarray(logits).reshape(-1)[0])  # the graph ends in a sigmoid already

    def judge(self, audio: np.ndarray) -> TurnVerdict:
        started = time.perf_counter()
        probability = self.probability(audio)
        return TurnVerdict(probability > self.threshold, round(probability, 4), time.perf_counter() - started)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_fetched(target: Path) -> bool:
    return target.is_file() and _sha256(target) == MODEL_SHA256


def fetch(target: Path) -> Path:
    """Put the Smart Turn model at `target` (from the pipecat-ai wheel on PyPI), unless it is there already.
    Blocking (a pip download of about 12 MB); raises SmartTurnError with what to do."""
    if is_fetched(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".smart-turn-") as scratch:
            partial = _extract(_download(Path(scratch), target), Path(scratch) / "model.onnx")
            # Renamed into place only once whole and checked: a concurrent or an interrupted fetch never leaves
            # a half-written model where a service would load it.
            os.replace(partial, target)
    except OSError as exc:
        raise SmartTurnError(f"could not write the Smart Turn model to {target}: {exc}") from exc
    return target


def _download(scratch: Path, target: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", f"pipecat-ai=={PIPECAT_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d", str(scratch)]  # fmt: skip
    log.info("smart_turn_fetch", package=f"pipecat-ai=={PIPECAT_VERSION}", target=str(target))
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip()[-300:]
        raise SmartTurnError(
            f"could not download pipecat-ai=={PIPECAT_VERSION} with pip ({detail}); check the network, "
            f"or copy {WHEEL_MEMBER} out of that wheel to {target}"
        ) from exc
    wheels = sorted(scratch.glob("pipecat_ai-*.whl"))
    if not wheels:
        raise SmartTurnError(f"pip downloaded no pipecat-ai wheel into {scratch}")
    return wheels[0]


def _extract(wheel_path: Path, partial: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(WHEEL_MEMBER) as source, partial.open("wb") as out:
            while block := source.read(1 << 20):
                out.write(block)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SmartTurnError(f"{wheel_path.name} does not hold {WHEEL_MEMBER}: {exc}") from exc
    if _sha256(partial) != MODEL_SHA256:
        raise SmartTurnError(f"{WHEEL_MEMBER} in {wheel_path.name} does not match its pinned SHA-256")
    return partial


def main(argv: Sequence[str] | None = None) -> int:
    from core.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m stt.smart_turn", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_command = commands.add_parser("fetch", help="download the Smart Turn model from the pipecat-ai wheel on PyPI")
    fetch_command.add_argument("--to", type=Path, help="where to put it (default: stt.smart_turn_model)")
    args = parser.parse_args(argv)
    settings = get_settings()
    target = args.to or settings.resolve_path(settings.stt.smart_turn_model)
    try:
        path = fetch(target)
    except SmartTurnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
