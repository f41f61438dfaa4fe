"""The STT benchmark runs end to end on the toy model and reports a complete result.

Structure only: the bench's timings are its own business (ARCHITECTURE.md, "Tests"), so nothing
here compares a duration with a threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import stt_bench


def test_stt_bench_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = stt_bench.main(
        ["--shape", "toy", "--runs", "1", "--warmup", "0", "--json"]
        + ["--cache-dir", str(tmp_path), "--text", "Turn on the lights."]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)

    assert set(result) >= {
        "settings", "recording", "direct_transcribe_s", "fast_stream", "realtime_stream",
        "overhead_ratio", "paired_overhead_ratio", "latency_budget_s", "checks", "consistency",
    }  # fmt: skip
    settings = result["settings"]
    assert (settings["model_shape"], settings["runs"], settings["warmup"]) == ("toy", 1, 0)
    assert (settings["beam_size"], settings["temperatures"], settings["endpoint_silence_ms"]) == (1, [0.0], 600)

    series = [
        result["direct_transcribe_s"],
        result["fast_stream"]["server_transcribe_s"],
        result["fast_stream"]["after_last_frame_s"],
        result["realtime_stream"]["server_transcribe_s"],
        result["realtime_stream"]["latency_after_speech_s"],
    ]
    for stats in series:
        assert set(stats) == {"median", "p90", "min", "max", "samples"}
        assert len(stats["samples"]) == 1
        assert stats["median"] > 0 and stats["p90"] > 0
    assert result["overhead_ratio"] > 0 and result["paired_overhead_ratio"] > 0

    # Audio-time facts, not wall-clock ones: the server needs the configured silence (rounded up
    # to whole 32 ms VAD windows) after the last speech frame before it closes the utterance.
    recording = result["recording"]
    assert recording["endpoint_delay_s"] >= 0.6
    assert 0 < recording["speech_start_s"] < recording["speech_end_s"] < recording["seconds"]
    assert result["latency_budget_s"] == pytest.approx(0.6 + result["direct_transcribe_s"]["median"] + 0.05)

    # The direct call transcribed exactly what the server did: same utterance, same text.
    assert result["consistency"] == {"same_audio_and_text": True, "mismatches": []}
    assert set(result["checks"]) == {"overhead", "latency"}
    for check in result["checks"].values():
        assert set(check) == {"value", "target", "pass"} and isinstance(check["pass"], bool)
