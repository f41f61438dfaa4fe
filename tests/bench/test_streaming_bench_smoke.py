"""The streaming benchmark's TTS half runs end to end on the toy voice (the costed one needs torch) and prints every
figure of its table. Structure only: the figures are the bench's own business (ARCHITECTURE.md, "Tests")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import streaming_bench


def test_the_tts_half_prints_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    streaming_bench.main(["--voice", "toy", "--no-voice", "--rounds", "1", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    for label, _ in streaming_bench.ROWS:
        row = re.search(rf"^{re.escape(label)}\s+(-?\d+\.\d) ms\s+(-?\d+\.\d) ms\s+(-?\d+\.\d) ms$", out, re.MULTILINE)
        assert row, f"no figures for {label!r} in:\n{out}"
        assert float(row[1]) > 0, label
    assert re.search(r"^stream - floor: [+-]\d+\.\d ms", out, re.MULTILINE)
    assert re.search(r"^/tts / stream: \d+\.\dx sooner", out, re.MULTILINE)
    assert "first fragment (" in out
