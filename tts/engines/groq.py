"""The groq engine: Groq's OpenAI-compatible speech endpoint (`POST {base_url}/audio/speech`) over httpx.

The key comes from GROQ_API_KEY (or tts.groq.api_key). Text is sent sentence by sentence, packed into
requests of at most tts.groq.max_input_chars. API errors map to our codes: 401/403 -> engine_auth,
429 -> engine_busy with Groq's Retry-After, anything else -> engine_error with Groq's message.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from core.audio import decode_wav
from core.config import GroqSettings, Settings, TtsSettings
from core.errors import EngineAuth, EngineBusy, EngineError, VoiceNotFound
from core.logging import get_logger
from core.redact import public_url
from core.text import split_sentences, truncate_at_sentence
from tts.engines.base import AudioChunk, Engine, EngineStartError, VoiceInfo
from tts.voices import check_voice_name

log = get_logger(__name__)


def pack_sentences(text: str, limit: int) -> list[str]:
    """Sentences of `text` joined into pieces of at most `limit` characters; a longer sentence is cut at spaces."""
    pieces: list[str] = []
    current = ""
    for sentence in split_sentences(text):
        while len(sentence) > limit:
            head = truncate_at_sentence(sentence, limit)
            pieces.extend([current] if current else [])
            current = ""
            pieces.append(head)
            sentence = sentence[len(head) :].strip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip() if sentence else current
    if current:
        pieces.append(current)
    return pieces


class GroqEngine(Engine):
    name = "groq"

    def __init__(self, settings: Settings, *, as_fallback: bool = False) -> None:
        super().__init__(settings, as_fallback=as_fallback)
        self.settings: GroqSettings = settings.tts.groq
        self._retry_after_s = settings.tts.retry_after_s
        self._client: httpx.Client | None = None

    @classmethod
    def own_default_voice(cls, tts: TtsSettings) -> str:
        return tts.groq.voice

    def start(self) -> None:
        if self.settings.api_key is None or not self.settings.api_key.get_secret_value().strip():
            raise EngineStartError(
                "the groq engine needs an API key: set GROQ_API_KEY (or tts.groq.api_key); "
                "create one at https://console.groq.com/keys"
            )
        if self.default_voice not in self.settings.voices:
            raise EngineStartError(
                f"default voice {self.default_voice!r} is not in tts.groq.voices ({', '.join(self.settings.voices)})"
            )
        self._client = httpx.Client(
            base_url=self.settings.base_url.rstrip("/") + "/",
            timeout=self.settings.timeout_s,
            headers={"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"},
        )

    def voices(self) -> list[str]:
        return sorted(self.settings.voices)

    def voice_details(self) -> list[VoiceInfo]:
        return [VoiceInfo(name, ["en"]) for name in self.voices()]  # Groq's speech models speak English

    def resolve_voice(self, voice: str | None) -> str:
        name = check_voice_name(voice or self.default_voice)
        if name not in self.settings.voices:
            raise VoiceNotFound(name, self.voices(), self.name)
        return name

    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[AudioChunk]:
        if self._client is None:
            raise EngineError("the groq engine is not started")
        for piece in pack_sentences(text, self.settings.max_input_chars):
            body: dict[str, object] = {
                "model": self.settings.model,
                "input": piece,
                "voice": voice,
                "response_format": "wav",
            }
            if speed != 1.0:
                body["speed"] = speed
            try:
                response = self._client.post("audio/speech", json=body)
            except httpx.TimeoutException:
                raise EngineError(
                    f"Groq did not answer within tts.groq.timeout_s={self.settings.timeout_s:g} s"
                ) from None
            except httpx.HTTPError as exc:
                raise EngineError(
                    f"cannot reach Groq at {public_url(self.settings.base_url)} ({exc.__class__.__name__}); check the network "
                    "and tts.groq.base_url"
                ) from None
            self._check(response)
            try:
                samples, rate = decode_wav(response.content)
            except ValueError as exc:
                raise EngineError(f"Groq sent audio that cannot be read: {exc}") from None
            yield AudioChunk(samples, rate, piece)

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = _error_message(response)
        log.warning("groq_error", status=status, detail=detail)
        if status in (401, 403):
            raise EngineAuth(
                f"Groq refused the API key ({status}: {detail}); set GROQ_API_KEY (or tts.groq.api_key) to a valid key"
            )
        if status == 429:
            retry_after = response.headers.get("retry-after", "")
            seconds = int(float(retry_after)) + 1 if _is_number(retry_after) else self._retry_after_s
            raise EngineBusy(f"Groq's rate limit is reached ({detail}); try again in {seconds} s", retry_after_s=seconds)
        raise EngineError(f"Groq answered {status}: {detail}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error:
            return str(error)
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase


ENGINE = GroqEngine
