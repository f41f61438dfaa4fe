"""A synthetic Piper voice that costs what a real "medium" voice costs, for benchmarks.

A randomly initialised VITS network with Piper's medium shapes (hidden 192, filter 768, 6 layers,
resblock "2", upsample 8/8/4 from 256 channels, deterministic duration predictor) from piper-tts's own
training modules, exported to ONNX the way `piper/train/export_onnx.py` does (opset 15, the legacy
exporter). Its audio is noise, but its compute is a real medium voice's. The duration predictor's
output bias is set so every phoneme id lasts about 2.5 frames (ceil: 3 frames of 256 samples), so a
20-word sentence gives roughly 8 s of audio, like natural speech.

Needs CPU torch (bench only, never a runtime requirement): `.venv/bin/pip install -r requirements-bench.txt`
(torch 2.13.0's CPU build, from PyTorch's CPU index).
The ~60 MB voice is built once into a cache outside the repository
(~/.cache/voice-assistant-bench/ or $VOICE_ASSISTANT_BENCH_CACHE).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.stt_bench import default_cache_dir
from tests.fixtures.piper_voice import voice_config

BUILDER_VERSION = "costed-piper-medium-1"
VOICE_NAME = "en_US-bench-medium"
SAMPLE_RATE = 22050
FRAMES_PER_ID = 2.5
"""exp(duration logit): each phoneme id lasts ceil(2.5 * length_scale) frames."""


def build_costed_voice(voices_dir: Path | None = None, *, seed: int = 1234) -> Path:
    """The voice's .onnx path, building it first when the cache lacks this builder version."""
    voices_dir = voices_dir or default_cache_dir() / "piper"
    model_path = voices_dir / f"{VOICE_NAME}.onnx"
    marker = voices_dir / f".{VOICE_NAME}.version"
    if model_path.is_file() and marker.is_file() and marker.read_text() == BUILDER_VERSION:
        return model_path

    try:
        import torch
    except ImportError as exc:
        raise SystemExit(
            f"the costed voice needs CPU torch ({exc}): .venv/bin/pip install -r requirements-bench.txt "
            "(or .venv/bin/pip install torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    from piper.train.vits.models import SynthesizerTrn

    voices_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    num_symbols = 256  # what Piper's real medium voices declare (the id map uses 0..160)
    model = SynthesizerTrn(
        n_vocab=num_symbols,
        spec_channels=1024 // 2 + 1,
        segment_size=8192 // 256,
        inter_channels=192,
        hidden_channels=192,
        filter_channels=768,
        n_heads=2,
        n_layers=6,
        kernel_size=3,
        p_dropout=0.1,
        resblock="2",
        resblock_kernel_sizes=(3, 5, 7),
        resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
        upsample_rates=(8, 8, 4),
        upsample_initial_channel=256,
        upsample_kernel_sizes=(16, 16, 8),
        n_speakers=1,
        gin_channels=0,
        use_sdp=False,
    )
    model.eval()
    with torch.no_grad():
        # A fixed duration per phoneme id: zero weights, bias log(2.5) -> exp() = 2.5 frames.
        model.dp.proj.weight.zero_()
        model.dp.proj.bias.fill_(math.log(FRAMES_PER_ID))
        model.dec.remove_weight_norm()

    def infer_forward(text, text_lengths, scales, sid=None):  # as piper/train/export_onnx.py does
        return model.infer(
            text, text_lengths, noise_scale=scales[0], length_scale=scales[1], noise_scale_w=scales[2], sid=sid
        )[0].unsqueeze(1)

    model.forward = infer_forward  # type: ignore[method-assign,assignment]
    sequences = torch.randint(low=0, high=num_symbols, size=(1, 50), dtype=torch.long)
    dummy = (sequences, torch.LongTensor([50]), torch.FloatTensor([0.667, 1.0, 0.8]), None)
    tmp_path = model_path.with_suffix(".onnx.tmp")
    torch.onnx.export(
        model=model,
        args=dummy,
        f=str(tmp_path),
        verbose=False,
        opset_version=15,
        input_names=["input", "input_lengths", "scales", "sid"],
        output_names=["output"],
        dynamic_axes={
            "input": {0: "batch_size", 1: "phonemes"},
            "input_lengths": {0: "batch_size"},
            "output": {0: "batch_size", 2: "time"},
        },
        dynamo=False,
    )
    config = voice_config(VOICE_NAME, sample_rate=SAMPLE_RATE, num_symbols=num_symbols)
    (voices_dir / f"{VOICE_NAME}.onnx.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tmp_path.replace(model_path)
    marker.write_text(BUILDER_VERSION)
    return model_path


def bench_voice(kind: str, cache: Path) -> tuple[Path, str]:
    """(voices folder, voice name): this costed medium voice, or the test suite's toy voice (no torch needed)."""
    if kind == "costed":
        return build_costed_voice().parent, VOICE_NAME
    from tests.fixtures.piper_voice import build_piper_voice

    build_piper_voice(cache / "toy-voices", "en_US-test-medium")
    return cache / "toy-voices", "en_US-test-medium"


if __name__ == "__main__":
    print(build_costed_voice())  # noqa: T201 (a command-line tool's answer)

