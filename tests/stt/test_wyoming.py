"""Wyoming on the STT service, driven by the `wyoming` package's own async TCP client against a real
server: describe/info, transcriptions at any audio format, streaming partials, and the errors."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from core.audio import float32_to_pcm16
from core.config import WyomingSettings
from core.wyoming import WyomingListener
from stt import wyoming_api
from stt.server import create_app
from stt.service import SttService
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.speech import make_speech
from tests.stt.test_server import PHRASE, wait_until_settled


@pytest.fixture
def server(make_settings) -> Iterator[RunningServer]:
    with run_server(create_app(make_settings(stt={"wyoming": {"max_audio_seconds": 20}}))) as running:
        wait_until_settled(running)
        yield running


def port_of(server: RunningServer) -> int:
    return server.app.state.wyoming.port


async def until(client: AsyncTcpClient, *types: str) -> list[Event]:
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, "the server closed the connection"
        events.append(event)
        if event.type in types:
            return events


def audio_events(pcm: bytes, rate: int, width: int, channels: int, chunk_s: float = 0.1) -> list[Event]:
    step = int(rate * chunk_s) * width * channels
    chunks = [AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step]).event() for i in range(0, len(pcm), step)]
    return [AudioStart(rate=rate, width=width, channels=channels).event(), *chunks, AudioStop().event()]


def transcribe(port: int, events: list[Event], pace_s: float = 0.0, language: str | None = None) -> list[Event]:
    async def main() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=30) as client:
            await client.write_event(Transcribe(language=language).event())
            for event in events:
                await client.write_event(event)
                if pace_s and event.type == "audio-chunk":
                    await asyncio.sleep(pace_s)
            got = await until(client, "transcript", "error")
            if got[-1].type == "transcript":
                await client.write_event(Describe().event())
                got += await until(client, "info")
            return got

    return asyncio.run(main())


def test_describe_tells_the_model_and_its_languages(server: RunningServer, whisper_model_dir: Any) -> None:
    async def describe() -> Info:
        async with AsyncTcpClient("127.0.0.1", port_of(server), read_timeout=10) as client:
            await client.write_event(Describe().event())
            [event] = await until(client, "info")
            return Info.from_event(event)

    [program] = asyncio.run(describe()).asr
    assert (program.name, program.installed, program.supports_transcript_streaming) == ("voice-assistant-stt", True, True)
    [model] = program.models
    assert model.name == whisper_model_dir.name and model.installed is True  # the name, never the server's path
    assert {"en", "de", "fr"} <= set(model.languages)


def test_a_transcription_of_16_khz_mono(server: RunningServer) -> None:
    speech = make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.3)
    events = transcribe(port_of(server), audio_events(float32_to_pcm16(speech), 16000, 2, 1))
    transcript = Transcript.from_event(next(e for e in events if e.type == "transcript"))
    assert transcript.text and transcript.language == "en"
    assert events[-1].type == "info", "the connection stays usable"


def test_a_transcription_of_22_khz_stereo_is_converted(server: RunningServer) -> None:
    speech = make_speech(PHRASE, sample_rate=22050, lead_silence_s=0.3, trail_silence_s=0.3)
    mono = np.frombuffer(float32_to_pcm16(speech), "<i2")
    stereo = np.stack([mono, mono], axis=1).astype("<i2").tobytes()
    direct = transcribe(port_of(server), audio_events(float32_to_pcm16(speech), 22050, 2, 1))
    converted = transcribe(port_of(server), audio_events(stereo, 22050, 2, 2))
    texts = [Transcript.from_event(next(e for e in got if e.type == "transcript")).text for got in (direct, converted)]
    assert texts[0] and texts[0] == texts[1], "the stereo audio is heard as its mono channel"


def test_streaming_partials_come_as_transcript_chunks_before_the_transcript(make_settings) -> None:
    settings = make_settings(stt={"partial_interval_ms": 100, "max_concurrent": 2})
    speech = make_speech("one two three four five six seven eight nine ten", lead_silence_s=0.2, trail_silence_s=0.2)
    with run_server(create_app(settings)) as running:
        wait_until_settled(running)
        events = transcribe(port_of(running), audio_events(float32_to_pcm16(speech), 16000, 2, 1), pace_s=0.1)
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and "transcript-chunk" in kinds
    assert kinds.index("transcript-chunk") < kinds.index("transcript") < kinds.index("transcript-stop")
    chunks = "".join(TranscriptChunk.from_event(e).text for e in events if e.type == "transcript-chunk")
    assert chunks.strip() and chunks == chunks.lstrip(), "the settled words, chunk after chunk, add up"


@pytest.mark.parametrize(
    ("events", "code", "fragment"),
    [
        ([AudioChunk(rate=16000, width=2, channels=1, audio=b"\x00" * 320).event()], "bad_message", "before audio-start"),
        ([AudioStop().event()], "bad_message", "before audio-start"),
        (audio_events(bytes(16000 * 2 * 21), 16000, 2, 1, chunk_s=1.0), "request_too_large", "over 20 s (stt.wyoming.max_audio_seconds)"),
        ([AudioStart(rate=16000, width=3, channels=1).event(), AudioChunk(rate=16000, width=3, channels=1, audio=bytes(30)).event()], "bad_audio", "width 3"),
        ([AudioStart(rate=0, width=2, channels=1).event(), AudioStop().event()], "bad_audio", "rate 0 Hz"),
        ([AudioStart(rate=16000, width=True, channels=1).event(), AudioStop().event()], "bad_audio", "width True"),
        ([AudioStart(rate=16000, width=2, channels=1).event(), AudioChunk(rate=0, width=2, channels=1, audio=bytes(320)).event()], "bad_audio", "rate 0 Hz"),
        ([AudioStart(rate=16000, width=2, channels=1).event(), Event("audio-chunk", {"rate": 16000}, bytes(320))], "bad_message", "malformed audio-chunk"),
    ],
)
def test_errors_are_error_events_with_the_services_codes(server: RunningServer, events: list[Event], code: str, fragment: str) -> None:
    async def main() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", port_of(server), read_timeout=30) as client:
            for event in events:
                await client.write_event(event)
            await client.write_event(Describe().event())
            return await until(client, "info")

    got = asyncio.run(main())
    assert [e.type for e in got] == ["error", "info"], "one error, then the connection goes on"
    error = Error.from_event(got[0])
    assert error.code == code and fragment in error.text


def test_an_unknown_language_is_refused(server: RunningServer) -> None:
    got = transcribe(port_of(server), [], language="xx")
    error = Error.from_event(got[-1])
    assert error.code == "invalid_request" and "unknown language 'xx'" in error.text


def test_a_model_that_cannot_load_is_an_error_event(make_settings, tmp_path) -> None:
    missing = tmp_path / "no-model"
    missing.mkdir()
    with run_server(create_app(make_settings(stt={"model": str(missing)}))) as running:
        wait_until_settled(running)
        got = transcribe(port_of(running), audio_events(bytes(3200), 16000, 2, 1))
    error = Error.from_event(got[-1])
    assert error.code == "model_unavailable" and "has no model.bin" in error.text


def test_zeroconf_advertises_the_listener_when_asked(make_settings) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    settings = make_settings(stt={"wyoming": {"zeroconf": True, "zeroconf_name": "voice-assistant-test"}})
    with run_server(create_app(settings)) as running:
        wait_until_settled(running)

        async def discover() -> Any:
            browser = AsyncZeroconf(ip_version=IPVersion.V4Only)
            try:
                return await browser.async_get_service_info(
                    "_wyoming._tcp.local.", "voice-assistant-test._wyoming._tcp.local.", timeout=5000
                )
            finally:
                await browser.async_close()

        found = asyncio.run(discover())
        port = port_of(running)
    assert found is not None, "a zeroconf browser on this machine finds the advertisement"
    assert (found.port, found.parsed_addresses()) == (port, ["127.0.0.1"])


def test_an_event_over_max_event_bytes_is_refused_and_ends_the_connection(make_settings) -> None:
    settings = make_settings(stt={"wyoming": {"max_event_bytes": 1024}})

    async def main(port: int) -> list[Event | None]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=30) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(4096)).event())
            return [await client.read_event(), await client.read_event()]

    with run_server(create_app(settings)) as running:
        wait_until_settled(running)
        error, end = asyncio.run(main(port_of(running)))
    assert error is not None and Error.from_event(error).code == "request_too_large"
    assert "4096 bytes" in Error.from_event(error).text and "stt.wyoming.max_event_bytes" in Error.from_event(error).text
    assert end is None, "the rest of an oversized event cannot be skipped: the connection ends"


def test_a_closing_connection_discards_at_most_close_linger_max_bytes(make_settings) -> None:
    """A client that keeps sending after its oversized event cannot hold the closing connection open: with a
    linger long enough to outlast the test, only the byte bound can end it before the client is done."""
    settings = make_settings(stt={"wyoming": {"max_event_bytes": 1024, "close_linger_s": 60, "close_linger_max_bytes": 65_536}})
    flood = WyomingSettings().close_linger_max_bytes  # the default bound: reached only if the setting were ignored

    async def main(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A small send buffer, so what the kernel holds cannot make up the flood's difference.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65_536)
        writer.write(b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 4096}\n')
        sent = 0
        try:
            while sent < flood:
                writer.write(bytes(65_536))
                await writer.drain()
                sent += 65_536
        except (ConnectionError, OSError):
            pass
        writer.close()
        return sent

    with run_server(create_app(settings)) as running:
        wait_until_settled(running)
        sent = asyncio.run(main(port_of(running)))
    assert sent < flood, "the server closed the connection after discarding close_linger_max_bytes"


def _in_own_loop(make_settings: Any, test: Any) -> tuple[Any, list[dict[str, Any]], list[Any]]:
    """Runs `test(listener, port)` against an STT service and Wyoming listener in this thread's own event
    loop, so the test can drain the listener itself; returns its result, the log and the loop's errors."""
    settings = make_settings()
    loop_errors: list[Any] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
        service = SttService(settings)
        async with service.running():
            await service.model.wait()
            listener = WyomingListener(settings.stt.wyoming, "127.0.0.1", "STT service", "stt.wyoming.max_connections")
            await listener.start(wyoming_api.handler_factory(service))
            try:
                return await test(listener, listener.port)
            finally:
                await listener.stop()

    with capture_logs() as logs:
        result = asyncio.run(main())
    return result, logs, loop_errors


def test_a_shutdown_finishes_the_open_transcription_then_closes(make_settings) -> None:
    speech = float32_to_pcm16(make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.3))

    async def test(listener: WyomingListener, port: int) -> tuple[list[Event | None], int]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=30) as client:
            await client.write_event(Transcribe().event())
            for event in audio_events(speech, 16000, 2, 1)[:-1]:  # no audio-stop: still listening
                await client.write_event(event)
            await client.write_event(Describe().event())
            await until(client, "info")  # every chunk before it has been taken
            await listener.drain(20)
            got: list[Event | None] = []
            while (event := await client.read_event()) is not None:
                got.append(event)
            return got, listener.count

    (got, open_connections), logs, loop_errors = _in_own_loop(make_settings, test)
    transcripts = [Transcript.from_event(e) for e in got if e is not None and e.type == "transcript"]
    assert len(transcripts) == 1 and transcripts[0].text, "what was heard before the shutdown is answered"
    assert open_connections == 0 and loop_errors == []
    assert not [entry for entry in logs if entry["event"] == "session_failed"]


def test_a_client_that_resets_mid_transcription_just_closes_its_session(make_settings) -> None:
    speech = float32_to_pcm16(make_speech(PHRASE, lead_silence_s=0.3, trail_silence_s=0.3))

    async def test(listener: WyomingListener, port: int) -> int:
        client = AsyncTcpClient("127.0.0.1", port)
        await client.connect()
        await client.write_event(Transcribe().event())
        for event in audio_events(speech, 16000, 2, 1)[:-1]:
            await client.write_event(event)
        await client.write_event(Describe().event())
        await until(client, "info")
        writer = client._writer  # noqa: SLF001 (an abortive close: RST instead of FIN)
        assert writer is not None
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        for _ in range(2000):
            if listener.count == 0:
                break
            await asyncio.sleep(0.005)
        return listener.count

    open_connections, logs, loop_errors = _in_own_loop(make_settings, test)
    assert open_connections == 0 and loop_errors == []
    events = [entry["event"] for entry in logs]
    assert "session_closed" in events and "session_failed" not in events
