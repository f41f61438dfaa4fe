"""The turn benchmark runs end to end on a few espeak turns and reports every figure.

Structure only: what the detectors score is the bench's business (ARCHITECTURE.md, "Tests").
"""

from __future__ import annotations

import json

import pytest

from bench import turn_bench
from stt.smart_turn import fetch
from tests.stt.conftest import SMART_TURN_CACHE


def test_turn_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    model = fetch(SMART_TURN_CACHE)
    assert turn_bench.main(["--sources", "espeak", "--limit", "5", "--json", "--model", str(model)]) == 0
    result = json.loads(capsys.readouterr().out)

    assert result["items"] == {"espeak": 5}
    expected = [f"silence {t} ms" for t in turn_bench.SILENCE_TIMEOUTS_MS]
    expected += [f"smart_turn {turn_bench.MIN_SILENCE_MS}/{b} ms" for b in turn_bench.SMART_TURN_BOUNDS_MS]
    assert list(result["results"]) == expected
    for by_source in result["results"].values():
        figures = by_source["espeak"]
        assert figures["items"] == {"pause": 4, "complete": 1}
        assert set(figures["premature_cutoffs"]) == {"pause", "complete"}
        assert figures["delay_s"]["all"]["n"] == 1 and set(figures["delay_s"]["all"]) == {"median", "p90", "n"}
    # A 1,500 ms timeout outlasts every pause of the set (1,200 ms at most), and a longer timeout never cuts more.
    cuts = [result["results"][name]["espeak"]["premature_cutoffs"]["pause"] for name in expected[:5]]
    assert cuts == sorted(cuts, reverse=True) and cuts[-1] == 0
    assert result["model"]["file_bytes"] == 8_679_182 and result["model"]["inference_s"]["n"] == 30
    assert set(result["verdicts"]["espeak"]) == set(expected[len(turn_bench.SILENCE_TIMEOUTS_MS) :])
