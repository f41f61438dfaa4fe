"""Wyoming on the TTS service, driven by the `wyoming` package's own async TCP client against a real
server: describe/info, synthesize, streaming synthesize, the errors, and a client that leaves."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.tts.conftest import VOICE, Gate, gated_factory, make_settings, serve, wait_for
from tts.engines import create_engine
from tts.engines.base import AudioChunk as EngineChunk
from tts.engines.piper import PiperEngine

TEXT = "Hello there. How are you today?"


def run(test: Callable[[AsyncTcpClient], Awaitable[Any]], port: int) -> Any:
    async def main() -> Any:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=15) as client:
            return await test(client)

    return asyncio.run(main())


async def until(client: AsyncTcpClient, *types: str) -> list[Event]:
    """Events up to and including the first of one of `types`."""
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, "the server closed the connection"
        events.append(event)
        if event.type in types:
            return events


def audio_of(events: list[Event]) -> tuple[list[AudioStart], bytes]:
    starts = [AudioStart.from_event(e) for e in events if AudioStart.is_type(e.type)]
    pcm = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    return starts, pcm


def port_of(server: Any) -> int:
    return server.app.state.wyoming.port


def test_describe_lists_every_voice_with_its_languages_and_speakers(tmp_path: Path, ollama: OllamaDouble) -> None:
    voices = tmp_path / "voices"
    build_piper_voice(voices, VOICE)
    build_piper_voice(voices, "de_DE-chor-low", num_speakers=2)
    with serve(make_settings(voices, ollama.url)) as (server, client):
        reply = run(lambda c: _describe(c), port_of(server))
        health = client.get("/health").json()
    [program] = reply.tts
    assert (program.name, program.installed, program.supports_synthesize_streaming) == ("voice-assistant-tts", True, True)
    voices_by_name = {voice.name: voice for voice in program.voices}
    assert set(voices_by_name) == {VOICE, "de_DE-chor-low"}
    assert voices_by_name[VOICE].languages == ["en_US"] and voices_by_name[VOICE].speakers is None
    # The language comes from the voice's own config (the test voices all say en_US), not from its name.
    assert voices_by_name["de_DE-chor-low"].languages == ["en_US"]
    assert [s.name for s in voices_by_name["de_DE-chor-low"].speakers] == ["speaker_0", "speaker_1"]
    assert health["wyoming"] == {
        "enabled": True, "host": "127.0.0.1", "port": port_of(server), "connections": 0, "max_connections": 16,
    }  # fmt: skip


async def _describe(client: AsyncTcpClient) -> Info:
    await client.write_event(Describe().event())
    [event] = await until(client, "info")
    return Info.from_event(event)


def test_synthesize_sends_one_audio_stream_of_the_whole_text(voices_dir: Path, ollama: OllamaDouble) -> None:
    async def synthesize(client: AsyncTcpClient) -> list[Event]:
        await client.write_event(Synthesize(text=TEXT).event())
        return await until(client, "audio-stop")

    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        events = run(synthesize, port_of(server))
    starts, pcm = audio_of(events)
    assert [e.type for e in events[:1]] == ["audio-start"] and events[-1].type == "audio-stop"
    assert [(s.rate, s.width, s.channels) for s in starts] == [(22050, 2, 1)]
    assert len(pcm) // 2 == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)
    assert all(len(AudioChunk.from_event(e).audio) <= 2048 for e in events if e.type == "audio-chunk")


def test_streaming_synthesize_speaks_each_sentence_before_the_stream_ends(tmp_path: Path, ollama: OllamaDouble) -> None:
    voices = tmp_path / "voices"
    build_piper_voice(voices, VOICE)
    build_piper_voice(voices, "en_GB-low-low", sample_rate=16000)

    async def stream(client: AsyncTcpClient) -> tuple[list[Event], list[Event], list[Event]]:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="en_GB-low-low")).event())
        await client.write_event(SynthesizeChunk(text="Hello there. How ").event())
        first = await until(client, "audio-stop")  # the first sentence, while the stream is still open
        await client.write_event(SynthesizeChunk(text="are you today?").event())
        # Home Assistant's compatibility synthesize of the whole text, inside the stream: not spoken again.
        await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="en_GB-low-low")).event())
        await client.write_event(SynthesizeStop().event())
        rest = await until(client, "synthesize-stopped")
        # ...nor right after it: the next event the server sends is the answer to describe.
        await client.write_event(Synthesize(text=TEXT).event())
        await client.write_event(Describe().event())
        after = await until(client, "info")
        return first, rest, after

    with serve(make_settings(voices, ollama.url, first_fragment_min_words=0, first_fragment_max_words=0)) as (server, _):
        first, rest, after = run(stream, port_of(server))
    assert [e.type for e in first][0] == "audio-start" and first[-1].type == "audio-stop"
    assert [e.type for e in rest][-2:] == ["audio-stop", "synthesize-stopped"]
    starts, pcm = audio_of(first + rest)
    assert len(starts) == 2 and {(s.rate, s.width, s.channels) for s in starts} == {(16000, 2, 1)}
    model = voices / "en_GB-low-low.onnx"
    assert len(pcm) // 2 == expected_samples(model, "Hello there.") + expected_samples(model, "How are you today?")
    assert [e.type for e in after] == ["info"]


@pytest.mark.parametrize(
    ("events", "code", "fragment"),
    [
        ([Synthesize(text="Hi.", voice=SynthesizeVoice(name="en_US-nope-low"))], "voice_not_found", VOICE),
        ([Synthesize(text="x" * 101)], "text_too_long", "the limit is 100"),
        ([Synthesize(text="Hi.", voice=SynthesizeVoice(name=VOICE, speaker="bob"))], "invalid_request", "has no speaker 'bob'"),
        ([SynthesizeChunk(text="Hi.")], "bad_message", "send synthesize-start first"),
        ([SynthesizeStart(), SynthesizeChunk(text="x" * 60), SynthesizeChunk(text="y" * 60)], "text_too_long", "more than 100"),
        ([SynthesizeStart(), SynthesizeStart()], "busy", "send synthesize-stop"),
    ],
)
def test_errors_are_error_events_with_the_services_codes(
    voices_dir: Path, ollama: OllamaDouble, events: list[Any], code: str, fragment: str
) -> None:
    async def send(client: AsyncTcpClient) -> tuple[Error, Info]:
        for event in events:
            await client.write_event(event.event())
        [*_, error] = await until(client, "error")
        await client.write_event(Describe().event())  # the connection goes on
        [*_, info] = await until(client, "info")
        return Error.from_event(error), Info.from_event(info)

    with serve(make_settings(voices_dir, ollama.url, max_text_length=100)) as (server, _):
        error, info = run(send, port_of(server))
    assert error.code == code and fragment in error.text
    assert info.tts


def test_a_client_that_leaves_mid_synthesis_frees_its_worker_within_a_sentence(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate(free=1)
    text = " ".join(f"Sentence number {i} is here." for i in range(10))

    async def leave(client: AsyncTcpClient) -> list[Event]:
        await client.write_event(Synthesize(text=text).event())
        got = await until(client, "audio-chunk")  # the first sentence is spoken...
        assert await asyncio.to_thread(gate.entered.wait, 10)  # ...and the second is held in its worker
        return got

    with serve(make_settings(voices_dir, ollama.url, max_concurrent=1), engine_factory=gated_factory(gate)) as (server, client):
        service = server.app.state.service
        first = run(leave, port_of(server))  # returning closes the connection
        wait_for(lambda: len(gate.sentences) == 2 and service.pool.counters.running == 1)
        gate.open.set()
        wait_for(lambda: service.pool.counters.running == 0 and service.pool.counters.cancelled == 1)
        wait_for(lambda: server.app.state.wyoming.count == 0)
        health = client.get("/health").json()
    assert first[0].type == "audio-start"
    assert len(gate.sentences) == 2, "nothing after the sentence under way was synthesized"
    assert service.pool.limiter.borrowed_tokens == 0
    assert health["workers"] == {"max_concurrent": 1, "running": 0, "waiting": 0}


def test_connections_over_the_limit_get_an_error_event(voices_dir: Path, ollama: OllamaDouble) -> None:
    async def two(port: int) -> Error:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=10) as first:
            await first.write_event(Describe().event())
            await until(first, "info")
            async with AsyncTcpClient("127.0.0.1", port, read_timeout=10) as second:
                [error] = await until(second, "error")
                assert await second.read_event() is None  # then disconnected
                return Error.from_event(error)

    with serve(make_settings(voices_dir, ollama.url, wyoming={"max_connections": 1})) as (server, _):
        error = asyncio.run(two(port_of(server)))
    assert error.code == "too_many_connections" and "tts.wyoming.max_connections" in error.text


def test_a_stream_over_the_limit_speaks_what_it_took_and_still_ends(voices_dir: Path, ollama: OllamaDouble) -> None:
    async def stream(client: AsyncTcpClient) -> tuple[list[Event], list[Event]]:
        for event in (
            SynthesizeStart(),
            SynthesizeChunk(text="Hello there. "),
            SynthesizeChunk(text="y" * 95),  # over the 100 characters: refused, the stream taken so far stands
            SynthesizeChunk(text="More words."),  # dropped: the client was told once
            Synthesize(text="Hello there. " + "y" * 95 + "More words."),  # Home Assistant's copy of the stream
            SynthesizeStop(),
        ):
            await client.write_event(event.event())
        got = await until(client, "synthesize-stopped")
        await client.write_event(Describe().event())
        return got, await until(client, "info")

    with serve(make_settings(voices_dir, ollama.url, max_text_length=100)) as (server, _):
        got, after = run(stream, port_of(server))
    errors = [Error.from_event(e) for e in got if Error.is_type(e.type)]
    assert [error.code for error in errors] == ["text_too_long"] and "13 were taken" in errors[0].text
    starts, pcm = audio_of(got)
    assert len(starts) == 1 and len(pcm) == 2 * expected_samples(voices_dir / f"{VOICE}.onnx", "Hello there.")
    assert after[-1].type == "info"


class _FailingPiperEngine(PiperEngine):
    """The real Piper engine, failing on one sentence (an engine defect, a voice file gone bad)."""

    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[EngineChunk]:
        if text.startswith("Boom"):
            raise RuntimeError("the voice file is damaged")
        yield from super().synthesize(text, voice, speed, speaker)


def test_a_synthesis_that_fails_mid_stream_is_an_error_and_the_response_still_ends(voices_dir: Path, ollama: OllamaDouble) -> None:
    def factory(name: str, settings: Any, **options: Any) -> Any:
        return _FailingPiperEngine(settings) if name == "piper" else create_engine(name, settings, **options)

    async def stream(client: AsyncTcpClient) -> list[Event]:
        for event in (SynthesizeStart(), SynthesizeChunk(text="Hello there. Boom goes the rest. "), SynthesizeStop()):
            await client.write_event(event.event())
        return await until(client, "synthesize-stopped")

    with serve(make_settings(voices_dir, ollama.url), engine_factory=factory) as (server, _):
        got = run(stream, port_of(server))
    kinds = [e.type for e in got]
    assert kinds[0] == "audio-start" and kinds.index("audio-stop") < kinds.index("error") < kinds.index("synthesize-stopped")
    assert Error.from_event(got[kinds.index("error")]).code == "internal_error"


def test_a_client_that_resets_mid_stream_just_closes_its_session(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        listener = server.app.state.wyoming

        async def reset() -> None:
            client = AsyncTcpClient("127.0.0.1", port_of(server))
            await client.connect()
            await client.write_event(SynthesizeStart().event())
            await client.write_event(Describe().event())
            await until(client, "info")
            writer = client._writer  # noqa: SLF001 (an abortive close: RST instead of FIN)
            assert writer is not None
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        with capture_logs() as logs:
            asyncio.run(reset())
            wait_for(lambda: listener.count == 0 and "session_closed" in [entry["event"] for entry in logs])
    assert "session_failed" not in [entry["event"] for entry in logs]


def test_an_event_over_max_event_bytes_is_refused_and_ends_the_connection(voices_dir: Path, ollama: OllamaDouble) -> None:
    async def oversized(client: AsyncTcpClient) -> list[Event | None]:
        await client.write_event(Synthesize(text="Hello there. " * 200).event())
        return [await client.read_event(), await client.read_event()]

    settings = make_settings(voices_dir, ollama.url, max_text_length=5000, wyoming={"max_event_bytes": 1024})
    with serve(settings) as (server, _):
        error, end = run(oversized, port_of(server))
    assert error is not None and Error.from_event(error).code == "request_too_large"
    assert "tts.wyoming.max_event_bytes" in Error.from_event(error).text and end is None
