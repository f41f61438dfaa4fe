"""The STT service hands the memory its transcriptions freed back to the system once its workers are idle."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from core import memory
from core.config import Settings
from tests.fixtures.speech import make_speech
from tests.stt.test_server import PHRASE, receive, session, stream, stt_server, wait_until_settled
from tests.tts.conftest import wait_for


@pytest.mark.skipif(not memory.trim_available(), reason="no malloc_trim in this C library")
@pytest.mark.parametrize("after_s", [0.05, 0.0])
def test_memory_is_trimmed_after_transcribing_unless_turned_off(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, after_s: float
) -> None:
    freed: list[float] = []
    real_trim = memory.trim
    monkeypatch.setattr(memory, "trim", lambda: freed.append(real_trim()))
    settings = make_settings(stt={"endpoint_silence_ms": 400, "partial_interval_ms": 0, "trim_memory_after_s": after_s})
    with stt_server(settings) as server:
        wait_until_settled(server)
        with session(server) as ws:
            stream(ws, make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.8))
            assert receive(ws)["type"] == "transcript"
            if after_s:
                wait_for(lambda: len(freed) >= 1, 15)
            else:
                time.sleep(0.5)  # ten times the idle time of the case above
    assert bool(freed) == bool(after_s)
