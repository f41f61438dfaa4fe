"""Wyoming on the TTS service (Home Assistant's text-to-speech protocol): an adapter over TtsService's
turns, so it shares the engine and the worker pool with every other protocol.

describe -> info (every voice with its languages and speakers). synthesize (text, optional voice name
or language, and speaker) -> audio-start, audio-chunks, audio-stop, the first chunk as soon as the first
sentence is synthesized. Streaming text: synthesize-start, synthesize-chunks, synthesize-stop -> each
sentence as soon as it is complete in the text so far (audio-start, audio-chunks, audio-stop), then
synthesize-stopped. The `synthesize` Home Assistant also sends during (or right after) a stream, for
clients that cannot stream, is not spoken twice. Every audio-start of one response has the same format.
A failure is an `error` event, and the response still ends as its client waits for (audio-stop,
synthesize-stopped); a stream over tts.max_text_length speaks the text it took and drops the rest.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Describe, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from core.errors import BadMessage, Busy, ServiceError, TextTooLong
from core.logging import get_logger
from core.wyoming import ATTRIBUTION, VERSION, Handler, error_event
from tts.service import TtsService
from tts.turn import AudioPiece, Cancelled, TextStream, Turn

log = get_logger(__name__)

SAMPLES_PER_CHUNK = 1024
"""Samples per audio-chunk event (what wyoming-piper sends)."""


async def info(service: TtsService) -> Info:
    voices = [
        TtsVoice(
            name=voice.name,
            description=f"{voice.name} ({service.engines.configured})",
            attribution=ATTRIBUTION,
            installed=True,
            languages=voice.languages,
            speakers=[TtsVoiceSpeaker(name=name) for name in voice.speakers] or None,
            version=VERSION,
        )
        for voice in await service.voice_details()
    ]
    program = TtsProgram(
        name="voice-assistant-tts",
        description="Streaming text to speech, sentence by sentence",
        attribution=ATTRIBUTION,
        installed=True,
        version=VERSION,
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


def _normal(text: str) -> str:
    return " ".join(text.split())


class TtsWyomingHandler(Handler):
    """One Wyoming client: one synthesis at a time, in the order asked."""

    def __init__(self, service: TtsService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        settings = service.settings
        super().__init__(
            reader, writer, settings.tts.wyoming, "tts.wyoming.max_event_bytes", settings.security.max_json_depth
        )
        self.service = service
        self._turn: Turn | None = None
        self._done = anyio.Event()
        self._done.set()
        self._stream: TextStream | None = None
        self._overflowed = False
        """The open text stream went over tts.max_text_length: what it took is spoken, the rest dropped."""
        self._streamed_text = ""
        self._last_streamed: str | None = None

    async def on_refused(self, event: Event, error: ServiceError) -> None:
        if self._stream is not None and isinstance(error, TextTooLong):
            # Nothing accepted is lost: the text taken so far is spoken, the stream ends as usual.
            self._stream.close()
            self._overflowed = True

    async def on_event(self, event: Event) -> None:
        await self._handle(event)

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event((await info(self.service)).event())
        elif Synthesize.is_type(event.type):
            await self._synthesize(Synthesize.from_event(event))
        elif SynthesizeStart.is_type(event.type):
            await self._wait_idle()
            voice, speaker = await self._voice(SynthesizeStart.from_event(event).voice)
            turn, self._stream = await self.service.start_text_stream(voice, speaker, "wyoming")
            self._streamed_text, self._overflowed = "", False
            self._follow(turn, per_sentence=True)
        elif SynthesizeChunk.is_type(event.type):
            if self._stream is None:
                raise BadMessage("synthesize-chunk outside a stream: send synthesize-start first")
            if self._overflowed:
                return  # refused once already (text_too_long)
            text = SynthesizeChunk.from_event(event).text
            await self._stream.send(text)
            self._streamed_text += text
        elif SynthesizeStop.is_type(event.type):
            if self._stream is None:
                raise BadMessage("synthesize-stop outside a stream: send synthesize-start first")
            self._stream.close()
            self._stream, self._last_streamed, self._overflowed = None, _normal(self._streamed_text), False

    async def _synthesize(self, synthesize: Synthesize) -> None:
        if self._stream is not None or _normal(synthesize.text) == self._last_streamed:
            # The same text sent again, for clients that cannot stream: it is being (or was) spoken.
            log.debug("wyoming_synthesize_skipped", reason="sent for compatibility with a stream")
            return
        self._last_streamed = None
        await self._wait_idle()
        voice, speaker = await self._voice(synthesize.voice)
        request = await self.service.check_request(synthesize.text, voice, None, False, speaker)
        self._follow(self.service.start_turn(request, "wyoming"), per_sentence=False)

    async def _voice(self, voice: SynthesizeVoice | None) -> tuple[str | None, str | None]:
        """A voice by name (with its speaker), or the first voice of a language, or the default."""
        if voice is None or (voice.name is None and voice.language is None):
            return None, None
        if voice.name is not None:
            return voice.name, voice.speaker
        language = (voice.language or "").lower().replace("-", "_")
        for details in await self.service.voice_details():
            if any(code.lower().replace("-", "_").startswith(language) for code in details.languages):
                return details.name, None
        return None, None

    async def _wait_idle(self) -> None:
        if self._stream is not None:
            raise Busy("a text stream is open: send synthesize-stop before the next synthesis")
        await self._done.wait()

    def _follow(self, turn: Turn, *, per_sentence: bool) -> None:
        self._turn, self._done = turn, anyio.Event()
        assert self.tasks is not None
        self.tasks.start_soon(self._speak, turn, per_sentence, self._done)

    async def _speak(self, turn: Turn, per_sentence: bool, done: anyio.Event) -> None:
        """The turn's audio as Wyoming events: one audio-start..audio-stop for a whole text, one per
        sentence for a stream (then synthesize-stopped). A failure is an error event, and the response
        still ends as the client waits for it to."""
        open_audio = started = False
        try:
            async for event in turn:
                if not isinstance(event, AudioPiece):
                    continue
                if per_sentence or not started:
                    await self.write_event(AudioStart(rate=event.sample_rate, width=2, channels=1).event())
                    open_audio = started = True
                step = SAMPLES_PER_CHUNK * 2
                for offset in range(0, len(event.pcm16), step):
                    chunk = event.pcm16[offset : offset + step]
                    await self.write_event(AudioChunk(rate=event.sample_rate, width=2, channels=1, audio=chunk).event())
                if per_sentence:
                    await self.write_event(AudioStop().event())
                    open_audio = False
            if not per_sentence and not started:  # nothing had any sound: the response still has its frame
                await self.write_event(AudioStart(rate=turn.sample_rate or 22050, width=2, channels=1).event())
                open_audio = True
            await self._end_response(per_sentence, open_audio)
        except ServiceError as error:
            log.info("wyoming_synthesis_failed", code=error.code, reason=error.message)
            await self.try_write(error_event(error))
            with anyio.CancelScope(shield=True):
                await self._end_response(per_sentence, open_audio, quietly=True)
        except Cancelled:
            pass  # the client left, or the service stopped it
        except (ConnectionError, OSError):
            turn.cancel()  # the client is gone: the worker is free after the sentence under way
        finally:
            await turn.aclose()
            done.set()

    async def _end_response(self, per_sentence: bool, open_audio: bool, quietly: bool = False) -> None:
        write = self.try_write if quietly else self.write_event
        if open_audio:
            await write(AudioStop().event())
        if per_sentence:
            await write(SynthesizeStopped().event())

    async def disconnect(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._turn is not None and not self._turn.done:
            log.info("wyoming_client_left", generating=True)
            await self._turn.aclose()

    async def finish(self) -> None:
        """Shutdown: the synthesis under way is finished (the listener bounds the wait)."""
        if self._stream is not None:
            self._stream.close()
        await self._done.wait()


def handler_factory(service: TtsService) -> Any:
    return lambda reader, writer: TtsWyomingHandler(service, reader, writer)
