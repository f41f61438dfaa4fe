"""A file's transcript in the response formats of OpenAI's transcription API: json, text, srt, vtt and
verbose_json (segments, and words when they were asked for). Pure functions."""

from __future__ import annotations

from typing import Any

from stt.engine import FileInfo, Segment


def _clock(seconds: float, separator: str) -> str:
    milliseconds = round(max(seconds, 0.0) * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"


def srt(segments: list[Segment]) -> str:
    blocks = [
        f"{index}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for index, s in enumerate((s for s in segments if s.text), start=1)
    ]
    return "\n".join(blocks)


def vtt(segments: list[Segment]) -> str:
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments if s.text]
    return "WEBVTT\n\n" + "\n".join(blocks)


def text(segments: list[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text).strip() + "\n"


def verbose_json(task: str, info: FileInfo, segments: list[Segment], words: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": info.language,
        "duration": info.duration,
        "text": text(segments).strip(),
        "segments": [
            {
                "id": s.id,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in segments
        ],
    }
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end} for s in segments for w in (s.words or ())
        ]
    return body
