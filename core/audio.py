"""Audio conversions shared by both services: PCM16 <-> float32, in-memory WAV, resampling.

Everything works on mono float32 arrays in [-1, 1]; int16 appears only at the wire.
"""

from __future__ import annotations

import io
import struct
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
    """float32 samples -> little-endian PCM16 bytes, clipping instead of wrapping around.

    The same scale as pcm16_to_float32, rounded, so PCM16 -> float32 -> PCM16 is lossless.
    """
    scaled = np.rint(np.nan_to_num(np.asarray(audio, dtype=np.float32)) * PCM16_MAX)
    return np.clip(scaled, -PCM16_MAX, PCM16_MAX - 1).astype("<i2").tobytes()


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


WAV_UNKNOWN_SIZE = 0xFFFFFFFF
"""RIFF and data sizes of a streamed WAV, whose length is unknown when the header is sent. The largest
value (not 0) because readers that trust the header then read to the end of the stream (ffmpeg,
browsers, Python's wave), while a size of 0 makes some of them play nothing."""


def streaming_wav_header(sample_rate: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length (see WAV_UNKNOWN_SIZE)."""
    block = channels * sample_width
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, sample_width * 8)
    size = struct.pack("<I", WAV_UNKNOWN_SIZE)
    return b"RIFF" + size + b"WAVEfmt " + fmt + b"data" + size


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
            av.AudioResampler(format="flt", layout="mono", rate=dst_rate) if src_rate != dst_rate else None
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


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes (PCM16 or float32, any channel count) -> mono float32 samples and the sample rate.

    Tolerates the placeholder sizes (0 or 0xFFFFFFFF) that streaming servers write into the header:
    the data chunk then runs to the end of the bytes. Raises ValueError on anything else.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file (no RIFF/WAVE header)")
    offset = 12
    fmt: tuple[int, int, int, int] | None = None
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        body_start = offset + 8
        if chunk_id == b"fmt ":
            body = data[body_start : body_start + size]
            if len(body) < 16:
                raise ValueError("WAV fmt chunk is too short")
            audio_format = int.from_bytes(body[0:2], "little")
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            if audio_format == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real format follows
                audio_format = int.from_bytes(body[24:26], "little")
            if channels < 1 or rate < 1:
                raise ValueError(f"WAV fmt chunk declares {channels} channels at {rate} Hz")
            fmt = (audio_format, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk comes before its fmt chunk")
            end = len(data) if size in (0, 0xFFFFFFFF) or body_start + size > len(data) else body_start + size
            audio_format, channels, rate, bits = fmt
            payload = data[body_start:end]
            if audio_format == 1 and bits == 16:
                payload = payload[: len(payload) - len(payload) % (2 * channels)]
                samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / PCM16_MAX
            elif audio_format == 3 and bits == 32:
                payload = payload[: len(payload) - len(payload) % (4 * channels)]
                samples = np.frombuffer(payload, dtype="<f4").astype(np.float32)
            else:
                raise ValueError(
                    f"unsupported WAV encoding (format {audio_format}, {bits} bits); PCM16 or float32 needed"
                )
            if channels > 1:
                samples = samples.reshape(-1, channels).mean(axis=1).astype(np.float32)
            return samples, rate
        offset = body_start + size + (size % 2)
    raise ValueError("WAV file has no data chunk")


def decode_file(data: bytes, rate: int, max_seconds: float, setting: str) -> np.ndarray:
    """Any container and codec FFmpeg (PyAV) reads -> mono float32 at `rate`. Raises BadAudio naming what
    is wrong with the file, and RequestTooLarge past `max_seconds` (`setting` names that limit).
    Blocking: run it in a worker thread."""
    from core.errors import BadAudio, RequestTooLarge

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise BadAudio(f"the file cannot be read as audio ({_reason(exc)}); send wav, mp3, ogg/opus, webm, m4a or flac") from None
    with container:
        if not container.streams.audio:
            raise BadAudio("the file holds no audio stream; send wav, mp3, ogg/opus, webm, m4a or flac")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        limit = int(max_seconds * rate)
        parts: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray()[0])
                    total += out.samples
                if total > limit:
                    raise RequestTooLarge(
                        f"the audio is longer than the limit of {max_seconds:g} s ({setting}); send a shorter file"
                    )
            parts.extend(out.to_ndarray()[0] for out in resampler.resample(None))
        except av.FFmpegError as exc:
            raise BadAudio(f"the audio cannot be decoded ({_reason(exc)}); the file may be damaged or cut short") from None
    if not parts:
        raise BadAudio("the file's audio stream holds no samples")
    return np.concatenate(parts).astype(np.float32, copy=False)


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip().rstrip(".")
