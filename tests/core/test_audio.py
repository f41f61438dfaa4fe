"""core.audio: PCM16 <-> float32, in-memory WAV, whole-array and streaming resampling (PyAV)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from core.audio import (
    StreamResampler,
    float32_to_pcm16,
    pcm16_to_float32,
    resample,
    wav_bytes,
)

LSB = 1 / 32767


def sine(freq: float, rate: int, samples: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(samples) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


# --- PCM16 <-> float32 --------------------------------------------------------------------------


def test_pcm16_to_float32_known_values() -> None:
    data = np.array([0, 16384, -16384, 32767, -32768], dtype="<i2").tobytes()
    audio = pcm16_to_float32(data)
    assert audio.dtype == np.float32
    assert audio.shape == (5,)
    np.testing.assert_allclose(audio, [0.0, 0.5, -0.5, 32767 / 32768, -1.0], atol=1e-7)


def test_pcm16_is_little_endian() -> None:
    assert pcm16_to_float32(b"\x00\x40")[0] == pytest.approx(0.5)  # 0x4000 = 16384


def test_empty_pcm16_gives_empty_float32() -> None:
    audio = pcm16_to_float32(b"")
    assert audio.dtype == np.float32
    assert audio.shape == (0,)
    assert float32_to_pcm16(np.zeros(0, dtype=np.float32)) == b""


@pytest.mark.parametrize("count", [1, 3, 1025])
def test_odd_byte_count_is_refused_with_the_count(count: int) -> None:
    with pytest.raises(ValueError, match=rf"even number of bytes, got {count}\b"):
        pcm16_to_float32(b"\x01" * count)


def test_float32_to_pcm16_known_values() -> None:
    pcm = float32_to_pcm16(np.array([0.0, 1.0, -1.0], dtype=np.float32))
    assert len(pcm) == 6
    values = np.frombuffer(pcm, dtype="<i2").tolist()
    assert values[:2] == [0, 32767]
    assert values[2] in (-32767, -32768)  # either symmetric or full-range scaling is fine


def test_float_round_trip_within_one_step() -> None:
    rng = np.random.default_rng(1234)
    audio = rng.uniform(-1.0, 1.0, 20_000).astype(np.float32)
    back = pcm16_to_float32(float32_to_pcm16(audio))
    assert back.shape == audio.shape
    assert np.max(np.abs(back - audio)) <= LSB


def test_pcm16_round_trip_is_lossless() -> None:
    """Decoding and re-encoding wire audio (e.g. at an unchanged sample rate) must not alter it."""
    every_value = np.arange(-32768, 32768, dtype="<i2")
    back = np.frombuffer(float32_to_pcm16(pcm16_to_float32(every_value.tobytes())), dtype="<i2")
    changed = np.flatnonzero(back != every_value)
    assert changed.size == 0, (
        f"{changed.size} of 65536 values changed, e.g. {every_value[changed[:3]].tolist()} "
        f"-> {back[changed[:3]].tolist()}"
    )


def test_out_of_range_values_clip_instead_of_wrapping() -> None:
    audio = np.array([1.5, 2.0, 100.0, -1.5, -100.0], dtype=np.float32)
    values = np.frombuffer(float32_to_pcm16(audio), dtype="<i2")
    assert values[:3].tolist() == [32767, 32767, 32767]
    assert all(v <= -32767 for v in values[3:].tolist())


def test_float32_to_pcm16_accepts_float64_and_lists() -> None:
    expected = float32_to_pcm16(np.array([0.25, -0.25], dtype=np.float32))
    assert float32_to_pcm16(np.array([0.25, -0.25], dtype=np.float64)) == expected
    assert float32_to_pcm16([0.25, -0.25]) == expected  # type: ignore[arg-type]


# --- WAV --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 22050])
def test_wav_bytes_header_and_data(rate: int) -> None:
    pcm = float32_to_pcm16(sine(440, rate, 1234))
    data = wav_bytes(pcm, rate)

    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    assert len(data) == 44 + len(pcm)
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getframerate() == rate
        assert reader.getnframes() == len(pcm) // 2 == 1234
        assert reader.readframes(reader.getnframes()) == pcm


def test_wav_bytes_stereo_frames() -> None:
    pcm = np.arange(8, dtype="<i2").tobytes()  # 4 stereo frames
    with wave.open(io.BytesIO(wav_bytes(pcm, 8000, channels=2)), "rb") as reader:
        assert reader.getnchannels() == 2
        assert reader.getnframes() == 4


def test_wav_bytes_of_no_audio() -> None:
    with wave.open(io.BytesIO(wav_bytes(b"", 16000)), "rb") as reader:
        assert reader.getnframes() == 0
        assert reader.getframerate() == 16000


# --- resampling -------------------------------------------------------------------------------


def test_resample_one_second_22050_to_16000() -> None:
    audio = sine(440, 22050, 22050)
    out = resample(audio, 22050, 16000)
    assert out.dtype == np.float32
    assert out.shape == (16000,)
    assert peak_frequency(out, 16000) == pytest.approx(440, abs=2)
    # A resampler keeps the level of an in-band tone (0.5 peak, RMS 0.5/sqrt(2)).
    middle = out[2000:-2000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize(("src", "dst"), [(16000, 48000), (48000, 16000), (44100, 16000), (8000, 16000)])
def test_resample_length_follows_the_rate_ratio(src: int, dst: int) -> None:
    out = resample(sine(300, src, src // 2), src, dst)
    assert abs(len(out) - dst // 2) <= 2
    assert peak_frequency(out, dst) == pytest.approx(300, abs=4)


def test_resample_same_rate_returns_the_same_samples() -> None:
    audio = sine(440, 16000, 4000)
    out = resample(audio, 16000, 16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, audio)


def test_resample_empty_input() -> None:
    out = resample(np.zeros(0, dtype=np.float32), 22050, 16000)
    assert out.dtype == np.float32
    assert out.shape == (0,)


def test_stream_resampler_chunked_matches_one_shot() -> None:
    audio = sine(440, 22050, 22050)
    one_shot = resample(audio, 22050, 16000)

    stream = StreamResampler(22050, 16000)
    parts = [stream.process(audio[i : i + 1000]) for i in range(0, len(audio), 1000)]
    parts.append(stream.flush())
    chunked = np.concatenate(parts)

    assert all(part.dtype == np.float32 for part in parts)
    assert abs(len(chunked) - len(one_shot)) <= 4
    n = min(len(chunked), len(one_shot))
    np.testing.assert_allclose(chunked[:n], one_shot[:n], atol=1e-4)
    # Each chunk yields output as it arrives (not everything at flush time).
    assert sum(len(p) for p in parts[:-1]) >= len(one_shot) - 100


def test_stream_resampler_chunk_borders_leave_no_clicks() -> None:
    audio = sine(440, 22050, 22050)
    stream = StreamResampler(22050, 16000)
    out = np.concatenate(
        [stream.process(audio[i : i + 1000]) for i in range(0, len(audio), 1000)] + [stream.flush()]
    )
    # A 0.5-amplitude 440 Hz sine at 16 kHz moves at most 0.5 * 2*pi*440/16000 ~ 0.086 per sample.
    assert np.max(np.abs(np.diff(out[100:-100]))) < 0.1


def test_stream_resampler_empty_chunk_yields_nothing() -> None:
    stream = StreamResampler(22050, 16000)
    out = stream.process(np.zeros(0, dtype=np.float32))
    assert out.dtype == np.float32
    assert out.shape == (0,)


def test_stream_resampler_same_rate_passes_through() -> None:
    stream = StreamResampler(16000, 16000)
    audio = sine(440, 16000, 1000)
    np.testing.assert_array_equal(stream.process(audio), audio)
    assert stream.process(audio.astype(np.float64)).dtype == np.float32
    assert stream.flush().shape == (0,)
