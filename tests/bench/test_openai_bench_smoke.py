"""The OpenAI-routes benchmark runs end to end on the toy voice and model and reports every figure.
Structure only: what the figures are is the bench's own business."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import openai_bench


def test_openai_bench_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = openai_bench.main(["--voice", "toy", "--shape", "toy", "--rounds", "1", "--seconds", "4", "--json", "--cache-dir", str(tmp_path)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["speech"]["medians"]) == {"pcm", "mp3", "opus"}
    assert set(result["speech"]["ratios"]) == {"mp3", "opus"}
    assert set(result["file"]["medians"]) == {"direct", "server"}
    assert set(result["checks"]) == {"mp3_first_byte", "opus_first_byte", "file_transcription"}
    assert all(value > 0 for value in [*result["speech"]["medians"].values(), *result["file"]["medians"].values()])
