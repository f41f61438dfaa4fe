"""The synthetic Piper voice runs through the real PiperVoice with exactly predictable lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from piper import PiperVoice, SynthesisConfig
from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

from tests.fixtures.piper_voice import HOP_LENGTH, build_piper_voice, expected_samples

TWO_SENTENCES = "Hello world. How are you today?"


@pytest.fixture(scope="module")
def voice_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_piper_voice(tmp_path_factory.mktemp("voices"))


def _total(voice: PiperVoice, text: str, config: SynthesisConfig) -> tuple[int, int]:
    chunks = list(voice.synthesize(text, config))
    return len(chunks), sum(len(chunk.audio_float_array) for chunk in chunks)


def test_files_and_config(voice_path: Path) -> None:
    assert voice_path.name == "en_US-test-medium.onnx"
    assert voice_path.stat().st_size < 2048
    config = json.loads(Path(f"{voice_path}.json").read_text(encoding="utf-8"))
    assert config["audio"]["sample_rate"] == 22050
    assert config["espeak"]["voice"] == "en-us"
    assert config["phoneme_type"] == "espeak"
    assert config["phoneme_id_map"] == DEFAULT_PHONEME_ID_MAP
    # piper 1.8.0's map has 166 symbols (ids 0-165)
    highest_id = max(i for ids in DEFAULT_PHONEME_ID_MAP.values() for i in ids)
    assert config["num_symbols"] == highest_id + 1
    assert (config["num_speakers"], config["speaker_id_map"]) == (1, {})


def test_build_is_byte_identical(tmp_path: Path, voice_path: Path) -> None:
    again = build_piper_voice(tmp_path)
    assert again.read_bytes() == voice_path.read_bytes()
    assert Path(f"{again}.json").read_bytes() == Path(f"{voice_path}.json").read_bytes()


@pytest.mark.parametrize("length_scale", [1.0, 0.5])
@pytest.mark.parametrize(("text", "sentences"), [("Hello world.", 1), (TWO_SENTENCES, 2)])
def test_exact_length(voice_path: Path, text: str, sentences: int, length_scale: float) -> None:
    voice = PiperVoice.load(voice_path)

    chunks, samples = _total(voice, text, SynthesisConfig(length_scale=length_scale))

    assert chunks == sentences
    assert samples == expected_samples(voice_path, text, length_scale)


def test_length_is_ids_times_hop(voice_path: Path) -> None:
    voice = PiperVoice.load(voice_path)
    chunks = list(voice.synthesize(TWO_SENTENCES, SynthesisConfig(length_scale=1.0)))

    for chunk in chunks:
        assert len(chunk.audio_float_array) == len(chunk.phoneme_ids) * HOP_LENGTH
    half = list(voice.synthesize(TWO_SENTENCES, SynthesisConfig(length_scale=0.5)))
    full_lengths = [len(c.audio_float_array) for c in chunks]
    assert [len(c.audio_float_array) * 2 for c in half] == full_lengths


def test_odd_length_scale_matches_float32_rounding(voice_path: Path) -> None:
    voice = PiperVoice.load(voice_path)
    for length_scale in (1.1, 0.77, 1.333):
        _, samples = _total(voice, TWO_SENTENCES, SynthesisConfig(length_scale=length_scale))
        assert samples == expected_samples(voice_path, TWO_SENTENCES, length_scale)


def test_volume_and_normalization_change_amplitude_not_length(voice_path: Path) -> None:
    voice = PiperVoice.load(voice_path)
    raw = list(voice.synthesize("Hello.", SynthesisConfig(normalize_audio=False)))[0]
    loud = list(voice.synthesize("Hello.", SynthesisConfig(normalize_audio=True, volume=0.5)))[0]

    assert len(raw.audio_float_array) == len(loud.audio_float_array)
    assert np.isclose(np.abs(raw.audio_float_array).max(), 0.5, atol=1e-3)
    assert np.isclose(np.abs(loud.audio_float_array).max(), 0.5, atol=1e-3)
    assert raw.sample_rate == 22050


def test_empty_text_yields_nothing(voice_path: Path) -> None:
    voice = PiperVoice.load(voice_path)
    assert _total(voice, "", SynthesisConfig()) == (0, 0)
    assert expected_samples(voice_path, "") == 0


def test_multi_speaker_voice(tmp_path: Path) -> None:
    path = build_piper_voice(tmp_path, "en_US-multi-medium", sample_rate=16000, num_speakers=3)
    voice = PiperVoice.load(path)
    assert voice.config.num_speakers == 3
    assert voice.config.speaker_id_map == {"speaker_0": 0, "speaker_1": 1, "speaker_2": 2}

    peaks = []
    for speaker_id in (0, 1, 2):
        chunk = list(voice.synthesize("Hello.", SynthesisConfig(speaker_id=speaker_id)))[0]
        assert chunk.sample_rate == 16000
        assert len(chunk.audio_float_array) == expected_samples(path, "Hello.")
        spectrum = np.abs(np.fft.rfft(chunk.audio_float_array))
        peaks.append(np.argmax(spectrum) * chunk.sample_rate / len(chunk.audio_float_array))

    # 220 Hz + 110 Hz per speaker, within one FFT bin.
    bin_hz = 16000 / len(chunk.audio_float_array)
    assert np.allclose(peaks, [220, 330, 440], atol=bin_hz)
