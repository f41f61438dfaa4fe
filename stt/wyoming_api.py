"""Wyoming on the STT service (Home Assistant's speech-to-text protocol): an adapter over SttService's
live sessions, so it shares the one model and the worker pool with every other protocol.

describe -> info. transcribe (optional language) -> audio-start, audio-chunks at any rate, width and
channel count, audio-stop -> transcript with the text and language. While the audio arrives the same
stable partials as /ws/stt go out as transcript-start and transcript-chunks (each chunk the newly
settled words: they only ever add up), never delaying the final; transcript-stop ends the stream.
The client ends the utterance (audio-stop): a pause in the audio does not.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import anyio
from faster_whisper.tokenizer import _LANGUAGE_CODES
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Describe, Info

from core.errors import BadMessage, InvalidRequest, ModelUnavailable, RequestTooLarge, ServiceError
from core.logging import get_logger
from core.wyoming import ATTRIBUTION, VERSION, Handler, check_format, error_event, mono_pcm16
from stt.events import Partial, Refused, Transcribed
from stt.service import SttService
from stt.session import SttSession

log = get_logger(__name__)


def info(service: SttService) -> Info:
    model = AsrModel(
        name=service.model_name,
        description=f"Whisper ({service.model_name}) with faster-whisper",
        attribution=ATTRIBUTION,
        installed=service.model.engine is not None,
        languages=sorted(_LANGUAGE_CODES),
        version=VERSION,
    )
    program = AsrProgram(
        name="voice-assistant-stt",
        description="Streaming speech to text: faster-whisper with voice activity detection and partials",
        attribution=ATTRIBUTION,
        installed=True,
        version=VERSION,
        models=[model],
        supports_transcript_streaming=True,
    )
    return Info(asr=[program])


class SttWyomingHandler(Handler):
    """One Wyoming client: one transcription at a time, from audio-start to audio-stop."""

    def __init__(self, service: SttService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        settings = service.settings
        super().__init__(
            reader, writer, settings.stt.wyoming, "stt.wyoming.max_event_bytes", settings.security.max_json_depth
        )
        self.service = service
        self.settings = service.settings.stt
        self._language: str | None = self.settings.language
        self._stack: AsyncExitStack | None = None
        self._session: SttSession | None = None
        self._results: list[Transcribed] = []
        self._streamed = False
        self._stable = ""
        self._seconds = 0.0
        self._forwarded = anyio.Event()
        self._refused = False
        """A transcription was refused: its remaining audio is dropped until audio-stop."""

    async def on_refused(self, event: Event, error: ServiceError) -> None:
        # The rest of this transcription's audio is dropped quietly: the client heard why once.
        self._refused = self._session is not None or AudioStart.is_type(event.type)
        await self._close_session()

    async def on_event(self, event: Event) -> None:
        if self._refused and (AudioChunk.is_type(event.type) or AudioStop.is_type(event.type)):
            self._refused = not AudioStop.is_type(event.type)
            return
        if Describe.is_type(event.type):
            await self.write_event(info(self.service).event())
        elif Transcribe.is_type(event.type):
            language = Transcribe.from_event(event).language
            if language and language not in _LANGUAGE_CODES:
                raise InvalidRequest(f"unknown language {language!r}; use an ISO-639-1 code such as en, de, fr")
            self._language = language or self.settings.language
        elif AudioStart.is_type(event.type):
            await self._open_session(AudioStart.from_event(event))
        elif AudioChunk.is_type(event.type):
            await self._feed(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._finish()

    async def _open_session(self, start: AudioStart) -> None:
        self._refused = False
        await self._close_session()
        if self.service.model.error:
            raise ModelUnavailable(self.service.model.error)
        check_format(start.rate, start.width, start.channels)
        self._stack = AsyncExitStack()
        session = self.service.open_session(sample_rate=start.rate, endpointing=False)
        self._session = await self._stack.enter_async_context(session)
        await session.configure(language=self._language)
        self._results, self._streamed, self._stable, self._seconds = [], False, "", 0.0
        self._forwarded = anyio.Event()
        assert self.tasks is not None
        self.tasks.start_soon(self._forward_partials, session, self._forwarded)

    async def _feed(self, chunk: AudioChunk) -> None:
        if self._session is None:
            raise BadMessage("audio-chunk before audio-start: send audio-start (rate, width, channels) first")
        check_format(chunk.rate, chunk.width, chunk.channels)
        self._seconds += len(chunk.audio) / (chunk.width * chunk.channels * chunk.rate)
        limit = self.settings.wyoming.max_audio_seconds
        if self._seconds > limit:
            raise RequestTooLarge(
                f"the audio of one transcription is over {limit:g} s (stt.wyoming.max_audio_seconds); "
                "send audio-stop sooner"
            )
        if chunk.rate != self._session.sample_rate:
            raise BadMessage(f"audio-chunk at {chunk.rate} Hz after audio-start at {self._session.sample_rate} Hz")
        await self._session.feed_audio(mono_pcm16(chunk.audio, chunk.width, chunk.channels))

    async def _forward_partials(self, session: SttSession, done: anyio.Event) -> None:
        """Session events as they come: partials stream out; finals are kept for the transcript."""
        try:
            await self._forward(session)
        except (ConnectionError, OSError):
            pass  # the client has gone; the connection's task ends the session
        finally:
            done.set()

    async def _forward(self, session: SttSession) -> None:
        async for event in session.events():
            if isinstance(event, Partial) and event.stable.startswith(self._stable) and len(event.stable) > len(self._stable):
                if not self._streamed:
                    self._streamed = True
                    await self.write_event(TranscriptStart(language=self._language).event())
                delta, self._stable = event.stable[len(self._stable) :], event.stable
                await self.write_event(TranscriptChunk(text=delta).event())
            elif isinstance(event, Transcribed):
                self._results.append(event)
            elif isinstance(event, Refused):
                await self.write_event(error_event(event.error))

    async def _finish(self) -> None:
        session = self._session
        if session is None:
            raise BadMessage("audio-stop before audio-start: send audio-start, audio-chunks, then audio-stop")
        await session.end()
        await session.drain()  # every result of this audio is out once its events have ended...
        await self._forwarded.wait()  # ...and taken by the forwarder
        await self._close_session()
        text = " ".join(result.result.text for result in self._results if result.result.text).strip()
        language = self._results[0].result.language if self._results else self._language
        log.info("wyoming_transcribed", characters=len(text), audio_seconds=round(self._seconds, 3))
        await self.write_event(Transcript(text=text, language=language).event())
        if self._streamed:
            await self.write_event(TranscriptStop().event())

    async def _close_session(self) -> None:
        stack, self._stack, self._session = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def disconnect(self) -> None:
        await self._close_session()

    async def finish(self) -> None:
        """Shutdown: a transcription under way is finished and sent (the listener bounds the wait)."""
        if self._session is not None:
            await self._finish()


def handler_factory(service: SttService) -> Any:
    return lambda reader, writer: SttWyomingHandler(service, reader, writer)


