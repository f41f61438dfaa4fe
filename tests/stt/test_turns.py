"""End-of-turn detection and speculative finals in a live session: the service core (no protocol), the toy
Whisper model, real Silero VAD on espeak-ng speech; the wire form over a real WebSocket at the end."""

from __future__ import annotations

from collections.abc import Callable
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import pytest

from core.config import Settings
from stt.events import SessionEvent, Transcribed
from stt.service import SttService
from stt.smart_turn import TurnVerdict
from stt.stream import SpeechEnded
from tests.fixtures.server import RunningServer
from tests.fixtures.speech import make_speech, to_pcm16
from tests.stt.test_server import receive, receive_until, send_json, session, stream, stt_server, wait_until_settled

FRAME_SAMPLES = 320  # 20 ms frames, as a microphone client sends them
SENTENCE = "Please turn on the lights in the kitchen."
TURN = {"partial_interval_ms": 0, "speculative_finals": False, "turn_min_silence_ms": 200}
"""Partials off: a partial holding a worker would decide whether a speculation finds a free one."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedTurnModel:
    """A double of stt.smart_turn.SmartTurnModel that answers as told. Why a double: the session's two branches
    need the model to say "complete" and "incomplete" on demand, and the real model's verdict on espeak-ng
    speech cannot be steered (its prosody is flat: tests/stt/test_smart_turn.py tests the real model)."""

    def __init__(self, complete: bool, probability: float) -> None:
        self.verdict = TurnVerdict(complete, probability, 0.01)
        self.heard: list[int] = []
        """Samples of audio of each call."""

    def judge(self, audio: np.ndarray) -> TurnVerdict:
        self.heard.append(len(audio))
        return self.verdict


class Whole(NamedTuple):
    """Audio sent as one frame. A pause that arrives whole is speculated on at once; one sent in 20 ms frames
    as fast as the test can is not (it arrives faster than real time: stt/speculation.py), and pacing frames
    by the clock would make the tests depend on timing."""

    audio: np.ndarray


def spoken_then_paused(text: str, pause_s: float, lead_s: float = 0.0) -> list[np.ndarray | Whole]:
    """`text` in 20 ms frames, then its last 0.3 s and a pause of `pause_s` as one frame (the pause begins in it)."""
    speech = make_speech(text, lead_silence_s=lead_s, trail_silence_s=0.0)
    return [speech[:-4800], Whole(np.concatenate([speech[-4800:], np.zeros(round(pause_s * 16000), np.float32)]))]


async def run_session(service: SttService, *parts: np.ndarray | Whole, end: bool = False) -> list[SessionEvent]:
    """Feed the parts (arrays in 20 ms frames, `Whole` ones as one frame) and `end` after them when asked;
    every event of the session, in order."""
    await service.model.load()
    async with service.open_session() as live:
        for part in parts:
            pcm = to_pcm16(part.audio if isinstance(part, Whole) else part)
            step = len(pcm) if isinstance(part, Whole) else FRAME_SAMPLES * 2
            for offset in range(0, len(pcm), step):
                await live.feed_audio(pcm[offset : offset + step])
        if end:
            await live.end()
        await live.drain()  # every result of what was fed is out before the events end
        return [event async for event in live.events()]


def smart_turn_service(make_settings: Callable[..., Settings], model: ScriptedTurnModel, **stt: Any) -> SttService:
    settings = make_settings(stt={**TURN, "turn_detection": "smart_turn", "endpoint_silence_ms": 2000, **stt})
    service = SttService(settings)
    service.turn_models.model = model  # type: ignore[assignment]  # in place of the real one (see ScriptedTurnModel)
    return service


def transcripts(events: list[SessionEvent]) -> list[Transcribed]:
    return [event for event in events if isinstance(event, Transcribed)]


def counter(service: SttService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.anyio
async def test_a_turn_the_model_calls_complete_ends_at_once(make_settings: Callable[..., Settings]) -> None:
    model = ScriptedTurnModel(complete=True, probability=0.91)
    service = smart_turn_service(make_settings, model)
    # 0.5 s of pause, far below the 2 s upper bound: only the model can end this turn before the client's `end`.
    events = await run_session(service, make_speech(SENTENCE, lead_silence_s=0.5, trail_silence_s=0.5), end=True)

    (ended,) = [event for event in events if isinstance(event, SpeechEnded)]
    assert (ended.reason, ended.turn_complete, ended.turn_probability) == ("silence", True, 0.91)
    (final,) = transcripts(events)
    assert final.utterance.reason == "silence"
    assert {k: final.timings[k] for k in ("turn_complete", "turn_probability", "turn_model_s")} == {
        "turn_complete": True, "turn_probability": 0.91, "turn_model_s": 0.01,
    }  # fmt: skip
    assert len(model.heard) == 1, "one judgement per pause, however many windows it lasts"
    # The model heard the utterance up to the pause's 6th silent VAD window: pre-roll, speech and that silence.
    assert model.heard[0] == pytest.approx(len(final.utterance.audio), abs=512)
    assert counter(service, "stt_turn_judgements_total", verdict="complete") == 1


@pytest.mark.anyio
async def test_a_turn_the_model_calls_incomplete_stays_open(make_settings: Callable[..., Settings]) -> None:
    model = ScriptedTurnModel(complete=False, probability=0.12)
    service = smart_turn_service(make_settings, model)
    events = await run_session(service, make_speech(SENTENCE, lead_silence_s=0.5, trail_silence_s=0.5), end=True)
    # Still open after the pause: the client's `end` is what closed it.
    (ended,) = [event for event in events if isinstance(event, SpeechEnded)]
    assert (ended.reason, ended.turn_complete, ended.turn_probability) == ("end", False, 0.12)
    (final,) = transcripts(events)
    assert final.utterance.reason == "end" and final.timings["turn_complete"] is False
    assert len(model.heard) == 1


@pytest.mark.anyio
async def test_endpoint_silence_still_ends_a_turn_the_model_calls_incomplete(make_settings: Callable[..., Settings]) -> None:
    model = ScriptedTurnModel(complete=False, probability=0.12)
    service = smart_turn_service(make_settings, model, endpoint_silence_ms=800)
    events = await run_session(service, make_speech(SENTENCE, lead_silence_s=0.5, trail_silence_s=1.5))
    (ended,) = [event for event in events if isinstance(event, SpeechEnded)]
    assert (ended.reason, ended.turn_complete, ended.turn_probability) == ("silence", False, 0.12)
    (final,) = transcripts(events)
    assert (final.timings["turn_complete"], final.timings["turn_probability"]) == (False, 0.12)
    assert len(model.heard) == 1


@pytest.mark.anyio
async def test_each_pause_is_judged_once_and_a_resumed_turn_goes_on(make_settings: Callable[..., Settings]) -> None:
    model = ScriptedTurnModel(complete=False, probability=0.2)
    service = smart_turn_service(make_settings, model, endpoint_silence_ms=1000)
    first = make_speech("I would like to", lead_silence_s=0.5, trail_silence_s=0.6)
    second = make_speech("order a pizza.", lead_silence_s=0.0)
    events = await run_session(service, np.concatenate([first, second]))
    (final,) = transcripts(events)
    assert len(model.heard) == 2, "the pause in the middle and the one at the end"
    assert final.utterance.duration > (len(first) + len(second)) / 16000 - 0.5 - 1.0, "one utterance holds both parts"


@pytest.mark.anyio
async def test_silence_detection_never_asks_a_model(make_settings: Callable[..., Settings]) -> None:
    model = ScriptedTurnModel(complete=True, probability=0.99)
    service = SttService(make_settings(stt=TURN))
    service.turn_models.model = model  # type: ignore[assignment]  # present, yet turn_detection is silence
    events = await run_session(service, make_speech(SENTENCE, lead_silence_s=0.5, trail_silence_s=1.0))
    assert model.heard == []
    (ended,) = [event for event in events if isinstance(event, SpeechEnded)]
    assert (ended.reason, ended.turn_complete, ended.turn_probability) == ("silence", None, None)


@pytest.mark.anyio
async def test_a_speculative_final_is_the_transcript_when_the_turn_ends_in_its_pause(make_settings: Callable[..., Settings]) -> None:
    service = SttService(make_settings(stt={**TURN, "speculative_finals": True, "endpoint_silence_ms": 800}))
    events = await run_session(service, *spoken_then_paused(SENTENCE, 0.4, lead_s=0.5), np.zeros(16000, np.float32))
    (final,) = transcripts(events)
    assert final.timings["speculative"] is True and final.timings["queue_wait_s"] == 0.0
    assert final.result.duration == final.utterance.duration, "reported as the utterance it transcribed"
    assert counter(service, "stt_speculative_finals_total", outcome="used") == 1
    assert counter(service, "stt_speculative_finals_total", outcome="dropped") == 0


@pytest.mark.anyio
async def test_a_speculative_final_is_dropped_when_speech_resumes(make_settings: Callable[..., Settings]) -> None:
    # Three workers: the dropped transcription may still hold one when the last pause wants another.
    stt = {**TURN, "speculative_finals": True, "endpoint_silence_ms": 800, "max_concurrent": 3}
    service = SttService(make_settings(stt=stt))
    first = spoken_then_paused("I would like to", 0.5, lead_s=0.5)
    second = spoken_then_paused("order a pizza.", 0.4)
    events = await run_session(service, *first, *second, np.zeros(16000, np.float32))

    (final,) = transcripts(events)  # nothing was sent for the words before the pause on their own
    spoken = sum(len(p.audio if isinstance(p, Whole) else p) for p in (*first, *second)) / 16000
    assert final.utterance.start < 0.5 and final.utterance.duration > spoken - 0.5 - 0.4
    assert final.timings["speculative"] is True, "the speculation of the last pause is the final"
    assert counter(service, "stt_speculative_finals_total", outcome="dropped") == 1
    assert counter(service, "stt_speculative_finals_total", outcome="used") == 1


@pytest.mark.anyio
async def test_no_speculation_takes_the_last_free_worker(make_settings: Callable[..., Settings]) -> None:
    service = SttService(make_settings(stt={**TURN, "speculative_finals": True, "max_concurrent": 1}))
    events = await run_session(service, *spoken_then_paused(SENTENCE, 0.4, lead_s=0.5), np.zeros(16000, np.float32))
    (final,) = transcripts(events)
    assert final.timings["speculative"] is False
    assert counter(service, "stt_speculative_finals_total", outcome="skipped") >= 1


def wait_for_turn_model(server: RunningServer) -> dict[str, Any]:
    """/health's turn_detection once the Smart Turn model has loaded or failed to (it loads beside Whisper)."""
    wait_until_settled(server)
    for _ in range(3000):
        report = httpx.get(f"{server.http_url}/health").json()["turn_detection"]
        if not report["loading"]:
            return report
        time.sleep(0.01)
    raise AssertionError("the Smart Turn model never finished loading")


def test_the_wire_and_health_carry_the_real_models_verdict(make_settings: Callable[..., Settings], smart_turn_model: Path) -> None:
    settings = make_settings(stt={**TURN, "turn_detection": "smart_turn", "smart_turn_model": str(smart_turn_model)})
    with stt_server(settings) as server:
        assert wait_for_turn_model(server) == {"mode": "smart_turn", "loading": False, "model_loaded": True, "error": None}
        with session(server) as ws:
            stream(ws, make_speech(SENTENCE, lead_silence_s=0.5, trail_silence_s=1.0))
            send_json(ws, {"type": "end"})
            messages = receive_until(ws, "transcript")
            receive(ws)  # the end's no_speech (or nothing more to wait for)
    ended = next(m for m in messages if m["type"] == "speech_ended")
    final = messages[-1]
    assert isinstance(ended["turn_complete"], bool) and 0.0 <= ended["turn_probability"] <= 1.0
    timings = final["timings"]
    assert (timings["turn_complete"], timings["turn_probability"]) == (ended["turn_complete"], ended["turn_probability"])


def test_without_its_model_smart_turn_ends_turns_at_the_upper_bound(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = make_settings(stt={**TURN, "turn_detection": "smart_turn", "smart_turn_model": str(blocker / "m.onnx")})
    with stt_server(settings) as server:
        report = wait_for_turn_model(server)
        assert report["model_loaded"] is False and "could not write the Smart Turn model" in report["error"]
        with session(server) as ws:
            stream(ws, make_speech(SENTENCE, lead_silence_s=0.5, trail_silence_s=1.0))
            messages = receive_until(ws, "transcript")
    ended = next(m for m in messages if m["type"] == "speech_ended")
    assert ended["reason"] == "silence" and "turn_complete" not in ended
