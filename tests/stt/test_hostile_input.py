"""What an attacker or a fuzzer sends the STT service, against a real server: each gets the error that
says what is wrong, and a live session goes on with the audio it was given."""

from __future__ import annotations

import pytest

from tests.fixtures.server import RunningServer
from tests.fixtures.speech import make_speech
from tests.stt.test_server import PHRASE, receive, send_json, session, stream, stt_server, wait_until_settled


@pytest.fixture
def server(make_settings) -> RunningServer:
    with stt_server(make_settings()) as running:
        wait_until_settled(running)
        yield running


def refused_mid_utterance(server: RunningServer, message: str) -> tuple[dict, dict, float]:
    """Half an utterance, then `message`, then `end`: (the error, the transcript, the audio's seconds)."""
    audio = make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.0)
    with session(server) as ws:
        stream(ws, audio)
        ws.send(message)
        error = receive(ws)
        send_json(ws, {"type": "end"})
        transcript = receive(ws)
    return error, transcript, len(audio) / 16000


def assert_audio_kept(transcript: dict, seconds: float) -> None:
    # Every sample sent before the refused message is in the utterance, up to the last one.
    assert (transcript["type"], transcript["reason"]) == ("transcript", "end")
    assert transcript["duration"] == pytest.approx(seconds - transcript["start"], abs=0.002)


def test_a_deep_message_is_an_error_and_the_session_keeps_its_audio(server: RunningServer) -> None:
    error, transcript, seconds = refused_mid_utterance(server, "[" * 2000 + "]" * 2000)
    assert error == {
        "type": "error",
        "code": "invalid_json",
        "message": "the message nests arrays and objects 2000 levels deep; at most 32 are accepted (security.max_json_depth)",
    }
    assert_audio_kept(transcript, seconds)


def test_a_lone_surrogate_is_an_error_and_the_session_keeps_its_audio(server: RunningServer) -> None:
    error, transcript, seconds = refused_mid_utterance(server, '{"type": "config", "language": "e\\udc80n"}')
    assert error == {
        "type": "error",
        "code": "invalid_request",
        "message": "'language' is not valid Unicode: it holds a lone surrogate (such as \\ud800, half of a UTF-16 pair); "
        "send whole characters",
    }
    assert_audio_kept(transcript, seconds)
