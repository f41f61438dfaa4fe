"""The many-streams benchmark runs end to end on the toy model and reports a complete result.

Structure and counts only: its timings are its own business (ARCHITECTURE.md, "Tests").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import streams_bench


def test_streams_bench_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = streams_bench.main(
        ["--shape", "toy", "--sizes", "1,2", "--rounds", "1", "--streams", "2", "--seconds", "3", "--json"]
        + ["--cache-dir", str(tmp_path)]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["streams"] for row in result["ending"]] == [1, 2]
    for row in result["ending"]:
        assert set(row) == {"streams", "off", "on", "p50_ratio_on_off", "p95_ratio_on_off"}
        assert row["off"]["mean_batch"] == 1.0  # batching off: every final alone
        assert row["on"]["p50_s"] > 0 and row["off"]["p95_s"] >= row["off"]["p50_s"]
    assert result["ending"][0]["on"]["mean_batch"] == 1.0  # one session: nothing to batch with
    assert [row["kind"] for row in result["realtime"]] == ["silence", "speech"]
    for row in result["realtime"]:
        assert (row["streams"], row["dropped"], row["unanswered"], row["unfinished"]) == (2, 0, 0, 0)
        assert row["health_p99_ms"] > 0
        assert row["new_session_at_bound"] == "not reached"  # two short streams never build 30 s of backlog
    silence, speech = result["realtime"]
    assert silence["transcripts"] == 0 and speech["transcripts"] >= 2  # 3 s of the looped sentence per stream
