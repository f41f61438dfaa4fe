"""Overload is explicit: past stt.max_backlog_seconds of speech waiting for transcription, a new WebSocket
session is refused with 1013 (`overloaded`); the sessions already open are still served, in order; partials
are shed first."""

from __future__ import annotations

import threading

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from stt.events import Partial, Transcribed
from stt.server import SttService
from tests.fixtures.speech import make_speech
from tests.stt.test_server import PHRASE, model_load_held_by, receive, send_json, session, stream, stt_server
from tests.stt.test_turns import counter, run_session


def test_a_backlog_past_the_bound_refuses_new_sessions_with_1013(make_settings) -> None:
    gate = threading.Event()  # while the model load is held the backlog grows by exactly the utterances' audio

    settings = make_settings(stt={"max_backlog_seconds": 1.0, "partial_interval_ms": 0})
    speech = make_speech(PHRASE, lead_silence_s=0.1, trail_silence_s=0)
    try:
        with stt_server(settings, model_load_held_by(gate)) as server, session(server) as ws:
            health = lambda: httpx.get(f"{server.http_url}/health").json()  # noqa: E731
            assert health()["backlog_seconds"] == 0.0
            stream(ws, speech)
            send_json(ws, {"type": "end"})
            # config is answered directly, so its reply proves the utterance before it was queued.
            send_json(ws, {"type": "config", "language": None})
            assert receive(ws)["type"] == "config_applied"
            backlog = health()["backlog_seconds"]
            assert backlog > 1.0

            with connect(f"{server.ws_url}/ws/stt") as refused:
                error = receive(refused)
                assert error["code"] == "overloaded"
                assert "stt.max_backlog_seconds is 1" in error["message"]
                with pytest.raises(ConnectionClosed) as closed:
                    refused.recv(timeout=5)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "overloaded")

            gate.set()
            transcript = receive(ws)
            assert transcript["type"] == "transcript"
            # The backlog was exactly the utterance's audio, and it is gone once transcribed.
            assert transcript["duration"] == pytest.approx(backlog, abs=0.001)
            assert health()["backlog_seconds"] == 0.0
            with session(server) as admitted:  # room again: a new session is served
                send_json(admitted, {"type": "config", "language": None})
                assert receive(admitted)["type"] == "config_applied"
            metrics = httpx.get(f"{server.http_url}/metrics").text
            assert "stt_connections_refused_total 1.0" in metrics
    finally:
        gate.set()


@pytest.mark.anyio
async def test_partials_are_shed_while_a_final_waits(make_settings) -> None:
    # Three workers: a partial may take one (never the last) unless another session's final is queued.
    settings = make_settings(stt={"max_concurrent": 3, "partial_interval_ms": 1, "speculative_finals": False})
    speech = make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=1.0)
    free = SttService(settings)
    await run_session(free, speech)
    assert counter(free, "stt_partials_total", outcome="skipped") == 0  # nothing waits: partials are never shed

    behind = SttService(settings)
    with behind.pools.transcribe.final_queued():  # what stt/finals.py holds while a final waits for its batch
        events = await run_session(behind, speech)
    assert not [event for event in events if isinstance(event, Partial)]
    assert [type(event) for event in events if isinstance(event, Transcribed)] == [Transcribed]  # the final is served
    assert counter(behind, "stt_partials_total", outcome="sent") == 0
    assert counter(behind, "stt_partials_total", outcome="skipped") >= 1
