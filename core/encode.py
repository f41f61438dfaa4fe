"""Streaming audio encoders (PyAV, in process: no ffmpeg subprocess): PCM16 in, encoded bytes out,
piece by piece, so the first sentence leaves encoded before the last one is synthesized.

Formats as OpenAI's audio API serves them: mp3, opus (Ogg Opus), aac (ADTS), flac, wav (a streaming
header of unknown length, then PCM16) and pcm (raw 16-bit little-endian mono). Blocking (codec work):
callers run `encode` and `finish` in a worker thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from core.audio import StreamResampler, float32_to_pcm16, pcm16_to_float32, streaming_wav_header


@dataclass(frozen=True)
class AudioFormat:
    name: str
    content_type: str
    container: str | None
    """PyAV container format; None for the formats written by hand (wav, pcm)."""
    codec: str | None = None
    bit_rate: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    """Container options: Ogg pages of 20 ms, so each piece of audio leaves at once."""


FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("mp3", "audio/mpeg", "mp3", "libmp3lame", 64_000),
    "opus": AudioFormat("opus", "audio/ogg", "ogg", "libopus", 32_000, (("page_duration", "20000"),)),
    "aac": AudioFormat("aac", "audio/aac", "adts", "aac", 64_000),
    "flac": AudioFormat("flac", "audio/flac", "flac", "flac"),
    "wav": AudioFormat("wav", "audio/wav", None),
    "pcm": AudioFormat("pcm", "audio/pcm", None),
}


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: PyAV writes the container into it; `take` hands the bytes on."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


class StreamEncoder:
    """Encodes one stream of mono PCM16 at `input_rate` into `fmt`, resampled to `output_rate`."""

    def __init__(self, fmt: str, input_rate: int, output_rate: int) -> None:
        self.format = FORMATS[fmt]
        self.output_rate = output_rate
        self._resampler = StreamResampler(input_rate, output_rate)
        self._started = False
        self._container: av.container.OutputContainer | None = None
        self._sink = _Sink()
        if self.format.container is not None:
            self._container = av.open(
                self._sink, mode="w", format=self.format.container, options=dict(self.format.options)
            )
            stream = self._container.add_stream(self.format.codec, rate=output_rate)
            stream.layout = "mono"
            if self.format.bit_rate:
                stream.bit_rate = self.format.bit_rate
            self._stream = stream

    def encode(self, pcm16: bytes) -> bytes:
        """The encoded bytes this audio completes (the first call also carries the header)."""
        return self._write(self._resampler.process(pcm16_to_float32(pcm16)), last=False)

    def finish(self) -> bytes:
        """The rest: the resampler's and the codec's held samples, and the container's trailer."""
        return self._write(self._resampler.flush(), last=True)

    def _write(self, samples: np.ndarray, *, last: bool) -> bytes:
        out = b""
        if self.format.name == "wav" and not self._started:
            out = streaming_wav_header(self.output_rate)
        self._started = True
        pcm = float32_to_pcm16(samples)
        if self._container is None:
            return out + pcm
        packets = []
        if len(samples):
            frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2")[None, :], format="s16", layout="mono")
            frame.sample_rate = self.output_rate
            packets.extend(self._stream.encode(frame))
        if last:
            packets.extend(self._stream.encode(None))
        for packet in packets:
            self._container.mux(packet)
        if last:
            self._container.close()
        return out + self._sink.take()
