"""Audio conversions shared by both services: PCM16 <-> float32, in-memory WAV, resampling.

Everything works on mono float32 arrays in [-1, 1]; int16 appears only at the wire.
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np

PCM16_MAX = 32768.0


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes -> float32 samples. Raises ValueError on an odd byte count."""
    if len(data) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_MAX


def float32_to_pcm16(audio: np.ndarray) -> bytes:
    """float32 samples -> little-endian PCM16 bytes, clipping instead of wrapping around."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * (PCM16_MAX - 1)
    return scaled.astype("<i2").tobytes()


def wav_bytes(pcm16: bytes, sample_rate: int, channels: int = 1) -> bytes:
    """Wrap PCM16 bytes in a WAV container, entirely in memory."""
    buffer = io.BytesIO()
    # The writer must be closed before reading: only then does the header carry the final sizes.
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm16)
    return buffer.getvalue()


def _to_frame(audio: np.ndarray, sample_rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = sample_rate
    return frame


def _frames_to_array(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([frame.to_ndarray()[0] for frame in frames]).astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a stream chunk by chunk; keeps filter state so chunk borders leave no clicks."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=dst_rate)
            if src_rate != dst_rate
            else None
        )

    def process(self, audio: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            return np.asarray(audio, dtype=np.float32)
        if len(audio) == 0:
            return np.zeros(0, dtype=np.float32)
        return _frames_to_array(self._resampler.resample(_to_frame(audio, self.src_rate)))

    def flush(self) -> np.ndarray:
        """Returns the samples still held in the filter; the resampler cannot be used afterwards."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return _frames_to_array(self._resampler.resample(None))


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole mono float32 array."""
    resampler = StreamResampler(src_rate, dst_rate)
    return np.concatenate([resampler.process(audio), resampler.flush()])
