"""Finals of different sessions decoded together: each gets its own transcript, in order, the same as decoded alone
(the toy Whisper from tests/fixtures, greedy, on real espeak speech)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import threading
from contextlib import ExitStack

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge

from core.config import PROJECT_ROOT, Settings
from stt.batch_decode import FinalRequest, transcribe_batch
from stt.chain import AudioChain
from stt.engine import Transcript, WhisperEngine
from stt.finals import Final, FinalBatcher
from stt.pools import TranscriptionPool
from stt.stream import Utterance
from tests.fixtures.speech import make_speech, to_pcm16
from tests.stt.test_server import FRAME_BYTES, model_load_held_by, receive, send_json, session, stream, stt_server

PHRASES = ["Please turn on the kitchen lights.", "What is the weather like tomorrow?", "Stop.", "Play some music, please."]


@pytest.fixture(scope="module")
def engine(whisper_model_dir, tmp_path_factory) -> WhisperEngine:
    stt = Settings(stt={"model": str(whisper_model_dir), "beam_size": 1, "temperatures": [0.0]}).stt
    return WhisperEngine.load(stt, tmp_path_factory.mktemp("models"), PROJECT_ROOT)


def _audios() -> list:
    return [make_speech(text, lead_silence_s=0.2 + 0.1 * i, trail_silence_s=0.3) for i, text in enumerate(PHRASES)]


def _cut_like_the_session(settings: Settings, audio: np.ndarray) -> np.ndarray:
    """The utterance a session cuts from this audio sent in 20 ms frames, then `end`."""
    chain = AudioChain(settings.stt)
    pcm = to_pcm16(audio)
    events = [event for offset in range(0, len(pcm), FRAME_BYTES) for event in chain.push(pcm[offset : offset + FRAME_BYTES])]
    utterances = [event for event in [*events, *chain.end()] if isinstance(event, Utterance)]
    assert len(utterances) == 1
    return utterances[0].audio


def _same(a: Transcript, b: Transcript) -> bool:
    """Equal in everything but the time it took."""
    return dataclasses.replace(a, transcribe_seconds=0.0) == dataclasses.replace(b, transcribe_seconds=0.0)


@pytest.mark.parametrize("language", [None, "en"])
def test_a_batch_gives_each_utterance_what_decoding_it_alone_gives(engine: WhisperEngine, language: str | None) -> None:
    audios = _audios()
    alone = [engine.transcribe(audio, language) for audio in audios]
    batched = transcribe_batch(engine, [FinalRequest(audio, language) for audio in audios])
    assert [round(len(audio) / 16000, 3) for audio in audios] == [t.duration for t in batched]  # in order
    assert all(_same(a, b) for a, b in zip(alone, batched, strict=True))
    assert all(t.segments for t in batched)
    if language is None:  # detected per utterance, in the batch: each its own probability
        assert [t.language_probability for t in batched] == [t.language_probability for t in alone]


def _batcher(size: int, max_size: int, sessions: int) -> tuple[TranscriptionPool, FinalBatcher]:
    pool = TranscriptionPool(size)
    busy = Gauge("busy", "busy", registry=CollectorRegistry())
    return pool, FinalBatcher(pool, max_size, window_s=0.0, busy=busy, sessions=lambda: sessions)


async def _queue_behind_a_busy_worker(
    pool: TranscriptionPool, batcher: FinalBatcher, engine: WhisperEngine, requests: list[tuple[FinalRequest, Callable[[], bool]]]
) -> list[Final | None]:
    results: list[Final | None] = [None] * len(requests)

    async def final(i: int) -> None:
        results[i] = await batcher.transcribe(engine, *requests[i])

    async with anyio.create_task_group() as tasks:
        async with pool.final():  # the one worker is busy: the finals queue up together
            for i in range(len(requests)):
                tasks.start_soon(final, i)
            while batcher.queued < len(requests):
                await anyio.lowlevel.checkpoint()
    return results


@pytest.mark.anyio
async def test_finals_waiting_together_are_decoded_in_one_batch_in_order(engine: WhisperEngine) -> None:
    audios = _audios()
    pool, batcher = _batcher(size=1, max_size=3, sessions=len(audios))
    requests = [(FinalRequest(audio, "en"), lambda: True) for audio in audios]
    finals = await _queue_behind_a_busy_worker(pool, batcher, engine, requests)
    assert [f.batch_size for f in finals if f] == [3, 3, 3, 1]  # oldest first, at most batch_max_size
    for audio, final in zip(audios, finals, strict=True):
        assert final is not None and _same(final.transcript, engine.transcribe(audio, "en"))
    assert (pool.busy, pool.finals_waiting, batcher.queued) == (0, 0, 0)


@pytest.mark.anyio
async def test_a_final_whose_session_was_reset_while_it_waited_is_dropped(engine: WhisperEngine) -> None:
    audios = _audios()[:3]
    pool, batcher = _batcher(size=1, max_size=8, sessions=3)
    current = [True, False, True]
    requests = [(FinalRequest(audio, "en"), (lambda i=i: current[i])) for i, audio in enumerate(audios)]
    finals = await _queue_behind_a_busy_worker(pool, batcher, engine, requests)
    assert finals[1] is None
    assert [f.batch_size for f in (finals[0], finals[2]) if f] == [2, 2]
    assert finals[2] is not None and _same(finals[2].transcript, engine.transcribe(audios[2], "en"))


def test_sessions_ending_together_get_their_own_transcripts_from_one_batch(make_settings) -> None:
    gate = threading.Event()  # the finals of all three sessions wait for the model together, then queue at once

    # The window is the longest allowed: the batch forms once all three live sessions' finals are queued.
    settings = make_settings(stt={"batch_max_size": 4, "batch_window_ms": 1000, "max_concurrent": 1, "language": "en"})
    audios = _audios()[:3]
    try:
        with stt_server(settings, model_load_held_by(gate)) as server, ExitStack() as stack:
            sockets = [stack.enter_context(session(server)) for _ in audios]
            for ws, audio in zip(sockets, audios):
                stream(ws, audio)
                send_json(ws, {"type": "end"})
            gate.set()
            transcripts = [receive(ws) for ws in sockets]
            engine = server.app.state.service.model.engine
        for message, audio in zip(transcripts, audios, strict=True):
            assert message["type"] == "transcript" and message["timings"]["batch_size"] == 3
            # Each its own utterance: the audio the session's chain cut, transcribed alone, gives the same result.
            alone = engine.transcribe(_cut_like_the_session(settings, audio), "en")
            assert (message["text"], message["duration"]) == (alone.text, alone.duration)
    finally:
        gate.set()
