"""The in-process espeak-ng binding, against the real library shipped by espeakng-loader."""

from __future__ import annotations

import re
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from tests.fixtures.speech import make_speech, to_pcm16, write_wav
from tts.engines.espeak_lib import EspeakAudio, EspeakError, EspeakNG

# espeak-ng's pitch flutter carries over between utterances (see espeak_lib's docstring), so the
# same text varies by a few samples; anything beyond this would mean corrupted or mixed audio.
_LENGTH_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def engine() -> EspeakNG:
    return EspeakNG()


def test_hello_world_is_audible_float32_at_22050(engine: EspeakNG) -> None:
    audio = engine.synthesize("hello world")

    assert isinstance(audio, EspeakAudio)
    assert audio.sample_rate == 22050 == engine.sample_rate
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    # "hello world" takes about 0.75 s at 175 wpm.
    assert 0.4 < len(audio.samples) / audio.sample_rate < 1.5
    assert float(np.abs(audio.samples).max()) <= 1.0
    rms = float(np.sqrt(np.mean(np.square(audio.samples))))
    assert rms > 0.02


def test_rate_changes_duration(engine: EspeakNG) -> None:
    text = "the rate parameter is in words per minute"
    slow = len(engine.synthesize(text, rate_wpm=100).samples)
    fast = len(engine.synthesize(text, rate_wpm=300).samples)

    assert fast < slow * 0.6


def test_vad_finds_speech_between_the_silences() -> None:
    rate, lead, trail = 16000, 0.5, 1.0
    audio = make_speech(
        "hello world, this is a test of the speech detector.",
        sample_rate=rate,
        lead_silence_s=lead,
        trail_silence_s=trail,
    )
    duration = len(audio) / rate

    # No padding, so the timestamps mark the detected speech itself.
    spans = get_speech_timestamps(
        audio, VadOptions(speech_pad_ms=0, min_silence_duration_ms=500), sampling_rate=rate
    )

    assert len(spans) == 1
    start, end = spans[0]["start"] / rate, spans[0]["end"] / rate
    # Silero decides per 32 ms window and espeak starts with a few ms of its own quiet.
    assert lead <= start < lead + 0.15
    assert duration - trail - 0.3 < end < duration - trail + 0.1


def test_make_speech_layout_and_copies() -> None:
    layout = {"sample_rate": 8000, "lead_silence_s": 0.25, "trail_silence_s": 0.5}
    first = make_speech("cached phrase", **layout)
    second = make_speech("cached phrase", **layout)

    assert first.dtype == np.float32
    assert np.array_equal(first, second)
    assert not np.any(first[:2000]) and not np.any(first[-4000:])
    assert np.any(first[2000:-4000])
    first[:] = 1.0  # the caller owns its copy: the cache must not change
    assert not np.any(make_speech("cached phrase", sample_rate=8000, lead_silence_s=0.25)[:2000])


def test_pcm16_and_wav(tmp_path: Path) -> None:
    assert to_pcm16(np.array([0.0, 2.0, -2.0], dtype=np.float32)) == b"\x00\x00\xff\x7f\x00\x80"

    audio = make_speech("wave file", sample_rate=16000)
    path = write_wav(tmp_path / "speech.wav", audio, 16000)
    with wave.open(str(path), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getframerate() == 16000
        assert reader.getnframes() == len(audio)


@pytest.mark.parametrize(
    "voice",
    [
        "no-such-voice",  # espeak-ng's own language search would pick Norwegian ("no")
        "xx",
        "en-us+no-such-variant",  # espeak-ng would silently ignore the variant
    ],
)
def test_unknown_voice_names_it(engine: EspeakNG, voice: str) -> None:
    with pytest.raises(EspeakError, match=re.escape(f"unknown espeak-ng voice: '{voice}'")):
        engine.synthesize("hello", voice=voice)


@pytest.mark.parametrize("voice", ["en-us", "EN-US", "en-us+f3", "gmw/en-US", "English (America)"])
def test_known_voice_spellings(engine: EspeakNG, voice: str) -> None:
    assert len(engine.synthesize("hello", voice=voice).samples) > 0


def test_voices_lists_language_codes_names_and_identifiers(engine: EspeakNG) -> None:
    voices = engine.voices()

    assert {"en-us", "en", "de", "English (America)", "gmw/en-US"} <= set(voices)
    assert "no-such-voice" not in voices
    # A language code that is only an alias inside a voice file still resolves.
    assert len(engine.synthesize("hello", voice="en-gb").samples) > 0


def test_empty_text_gives_no_samples(engine: EspeakNG) -> None:
    for text in ("", "   \n"):
        audio = engine.synthesize(text)
        assert audio.samples.shape == (0,)
        assert audio.samples.dtype == np.float32
        assert audio.sample_rate == 22050


def test_concurrent_calls_are_serialized(engine: EspeakNG) -> None:
    text = "four threads speak this sentence at the same time"
    reference = len(engine.synthesize(text).samples)
    barrier = Barrier(4)

    def speak(_: int) -> int:
        barrier.wait()
        return len(engine.synthesize(text).samples)

    with ThreadPoolExecutor(max_workers=4) as pool:
        lengths = list(pool.map(speak, range(4)))

    assert all(abs(length - reference) <= reference * _LENGTH_TOLERANCE for length in lengths)
