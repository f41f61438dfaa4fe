"""The voice-to-voice benchmark's turns run end to end through the real STT service, for every way of ending a
turn, and report each stage. The reply side is a recorder here (the costed voice needs torch, a bench-only
dependency): it must be handed each turn's transcript once.

Structure only: the timings are the bench's business (ARCHITECTURE.md, "Tests").
"""

from __future__ import annotations

from collections.abc import Callable

from bench.voice_turn import ROWS, TURN_CONFIGS, run_turns
from core.config import Settings
from stt.smart_turn import fetch
from tests.stt.conftest import SMART_TURN_CACHE


def test_every_turn_config_gives_a_transcript_to_the_reply_side(make_settings: Callable[..., Settings]) -> None:
    asked: list[str] = []

    def first_audio(text: str) -> tuple[float, dict[str, float]]:
        asked.append(text)
        return 0.25, {"ttfa": 240.0, "tts": 200.0, "queue": 0.0, "llm_ttft": 30.0}

    settings = make_settings(stt={"language": "en"})
    results = run_turns(settings, fetch(SMART_TURN_CACHE), "Turn on the light.", 1, first_audio)

    assert list(results) == list(TURN_CONFIGS)
    assert len(asked) == 2 * len(TURN_CONFIGS)  # a warm-up and one turn each
    assert all(text.strip() for text in asked)
    for turns in results.values():
        (turn,) = turns
        assert {key for _, key in ROWS} <= set(turn)
        assert turn["tts_first_audio"] == 0.25 and turn["server_ttfa"] == 0.24
        # Measured from the last speech frame sent (not from zero), and the server transcribed something.
        assert 0 < turn["speech_end_to_transcript"] < 30 and turn["transcribe"] > 0
    smart = results["smart_turn + speculative"][0]["stt_timings"]
    assert "turn_probability" in smart and "turn_probability" not in results["silence 600"][0]["stt_timings"]
