"""The LLM client: the assistant's reply to the user's words, from Ollama.

Replies are requested as a stream and assembled (`reply`), or handed on piece by piece
(`stream_reply`) so a streaming pipeline only has to forward them. Connection errors and 5xx
answers are retried with exponential backoff (tenacity); 4xx answers such as an unknown model are
not, and every failure becomes an `LLMError` whose message tells the user what to do.

This module knows nothing about HTTP status codes of our own services: callers map the errors.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import ollama
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from core.config import LlmSettings
from core.logging import get_logger
from core.text import truncate_at_sentence

log = get_logger(__name__)


class LLMError(Exception):
    """The LLM could not answer; the message says why and what to do."""


class LLMUnavailable(LLMError):
    """Ollama cannot be reached, or kept failing with server errors, after all retries."""


class LLMModelNotFound(LLMError):
    """Ollama does not have the configured model."""


class LLMTimeout(LLMError):
    """Ollama did not finish the reply within llm.timeout_s."""


class LLMRequestError(LLMError):
    """Ollama refused the request (a 4xx answer other than an unknown model)."""


class _ServerError(Exception):
    """A 5xx answer or a broken stream: worth retrying."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Ollama answered {status}: {detail}" if status > 0 else f"Ollama failed: {detail}")
        self.status = status
        self.detail = detail


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (ConnectionError, httpx.TransportError, _ServerError)) and not isinstance(
        error, httpx.ReadTimeout
    )


Sleep = Callable[[float], Awaitable[None]]


@dataclass
class LlmStats:
    """How one reply streamed: filled in by `reply` and `stream_reply` as pieces arrive."""

    started: float = field(default_factory=time.perf_counter)
    """perf_counter() when the request was made."""
    first_token_at: float | None = None
    """perf_counter() when the first piece of text arrived (after any retries)."""
    last_token_at: float | None = None
    tokens: int = 0
    """Pieces of text received; Ollama streams one token per piece."""
    attempts: int = 0

    @property
    def time_to_first_token_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def tokens_per_s(self) -> float | None:
        """Generation rate after the first token (the first one carries the prompt's cost)."""
        if self.tokens < 2 or self.first_token_at is None or self.last_token_at is None:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.tokens - 1) / span if span > 0 else None

    def _token(self) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.tokens += 1


class OllamaClient:
    """One shared client per process; safe for concurrent requests."""

    def __init__(self, settings: LlmSettings, *, sleep: Sleep | None = None) -> None:
        self.settings = settings
        self._sleep: Sleep = sleep or anyio.sleep
        self._client = ollama.AsyncClient(host=settings.url, timeout=settings.timeout_s)
        self._health_client = httpx.AsyncClient(base_url=settings.url, timeout=settings.health_timeout_s)

    async def aclose(self) -> None:
        await self._client.close()
        await self._health_client.aclose()

    def retry_delays(self) -> list[float]:
        """The waits before each retry: base, 2x base, 4x base, ... (llm.retry_attempts of them)."""
        base = self.settings.retry_base_delay_s
        return [base * 2**attempt for attempt in range(self.settings.retry_attempts)]

    def _messages(self, text: str) -> list[dict[str, str]]:
        messages = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": self.settings.system_prompt})
        messages.append({"role": "user", "content": text})
        return messages

    async def _parts(self, text: str, stats: LlmStats | None = None) -> AsyncIterator[str]:
        """One attempt: the streamed pieces of the reply, errors translated. Closing this generator
        closes the HTTP response, which stops Ollama generating."""
        kwargs: dict[str, Any] = {"options": self.settings.options or None}
        if self.settings.keep_alive is not None:
            kwargs["keep_alive"] = self.settings.keep_alive
        if stats is not None:
            stats.attempts += 1
            stats.tokens = 0
            stats.first_token_at = stats.last_token_at = None
        stream = None
        try:
            stream = await self._client.chat(self.settings.model, self._messages(text), stream=True, **kwargs)
            async for part in stream:
                content = part.message.content if part.message else None
                if content:
                    if stats is not None:
                        stats._token()
                    yield content
        except ollama.ResponseError as exc:
            status = exc.status_code
            if status == 404 or (status == -1 and "not found" in str(exc.error).lower()):
                raise LLMModelNotFound(
                    f"Ollama at {self.settings.url} has no model {self.settings.model!r} ({exc.error}): "
                    f"run `ollama pull {self.settings.model}`, or set llm.model to an installed model"
                ) from None
            if 400 <= status < 500:
                raise LLMRequestError(
                    f"Ollama refused the request ({status}: {exc.error}); check llm.model and llm.options"
                ) from None
            raise _ServerError(status, str(exc.error)) from None
        finally:
            if stream is not None:
                await stream.aclose()  # type: ignore[attr-defined]

    async def _attempts(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        def wait(state: RetryCallState) -> float:
            # 1 s, 2 s, 4 s... (retry_delays) before retry 1, 2, 3...
            return self.settings.retry_base_delay_s * 2 ** (state.attempt_number - 1)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "llm_retry",
                attempt=state.attempt_number,
                of=self.settings.retry_attempts + 1,
                wait_s=state.next_action.sleep if state.next_action else None,
                error=str(error),
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retry_attempts + 1),
            wait=wait,
            retry=retry_if_exception(_is_retryable),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except (ConnectionError, httpx.TransportError, _ServerError) as exc:
            raise self._translate(exc, attempts=True) from None

    def _translate(self, exc: BaseException, *, attempts: bool) -> LLMError:
        tries = f" after {self.settings.retry_attempts + 1} attempts" if attempts else ""
        if isinstance(exc, httpx.ReadTimeout):
            return self.timeout_error()
        if isinstance(exc, _ServerError):
            return LLMUnavailable(
                f"{exc}{tries}; check the Ollama log, and that the model loads (`ollama run {self.settings.model}`)"
            )
        return LLMUnavailable(
            f"cannot reach Ollama at {self.settings.url} ({exc.__class__.__name__}){tries}: start it with "
            f"`ollama serve`, make sure the model is there (`ollama pull {self.settings.model}`), "
            "or point llm.url (or OLLAMA_URL) at the right address"
        )

    def timeout_error(self) -> LLMTimeout:
        return LLMTimeout(
            f"Ollama did not finish the reply within llm.timeout_s={self.settings.timeout_s:g} s; "
            "raise llm.timeout_s or use a smaller model"
        )

    async def reply(self, text: str, stats: LlmStats | None = None) -> str:
        """The whole reply to `text`, streamed and assembled, cut at llm.max_reply_chars. `stats`, when
        given, records the time to the first token and the token rate."""
        limit = self.settings.max_reply_chars
        started = time.perf_counter()

        async def attempt() -> str:
            pieces: list[str] = []
            length = 0
            with anyio.fail_after(self.settings.timeout_s):
                parts = self._parts(text, stats)
                try:
                    async for piece in parts:
                        pieces.append(piece)
                        length += len(piece)
                        if length > limit:
                            # Enough to speak; stop generating instead of paying for the rest.
                            break
                finally:
                    await parts.aclose()  # type: ignore[attr-defined]
            return "".join(pieces)

        try:
            reply = await self._attempts(attempt)
        except TimeoutError:
            raise self.timeout_error() from None
        reply = reply.strip()
        if len(reply) > limit:
            log.warning("llm_reply_truncated", chars=len(reply), limit=limit)
            reply = truncate_at_sentence(reply, limit)
        log.info(
            "llm_reply", model=self.settings.model, chars=len(reply), seconds=round(time.perf_counter() - started, 3)
        )
        return reply

    async def stream_reply(self, text: str, stats: LlmStats | None = None) -> AsyncIterator[str]:
        """The reply to `text` piece by piece as Ollama writes it. Failures before the first piece are
        retried like `reply`; once text has been handed on, a failure ends the stream with an LLMError.
        Closing the generator (aclose) stops the request. No overall time limit: the caller sets one."""

        async def start() -> tuple[str | None, AsyncIterator[str] | None]:
            parts = self._parts(text, stats)
            try:
                first = await parts.__anext__()
            except StopAsyncIteration:
                return None, None
            except BaseException:
                await parts.aclose()  # type: ignore[attr-defined]
                raise
            return first, parts

        first, parts = await self._attempts(start)
        if parts is None or first is None:
            return
        try:
            yield first
            async for piece in parts:
                yield piece
        except (ConnectionError, httpx.TransportError, _ServerError) as exc:
            raise self._translate(exc, attempts=False) from None
        finally:
            await parts.aclose()  # type: ignore[attr-defined]

    async def available(self) -> bool:
        """Whether Ollama answers at llm.url within llm.health_timeout_s (no retries)."""
        try:
            response = await self._health_client.get("/api/tags")
        except (httpx.HTTPError, OSError):
            return False
        return response.status_code == 200

    async def has_model(self) -> bool | None:
        """Whether Ollama lists llm.model; None when Ollama cannot be asked."""
        try:
            response = await self._health_client.get("/api/tags")
            response.raise_for_status()
            models = response.json().get("models", [])
        except (httpx.HTTPError, OSError, ValueError):
            return None
        names = {entry.get("model") or entry.get("name") for entry in models if isinstance(entry, dict)}
        wanted = self.settings.model
        return wanted in names or (":" not in wanted and f"{wanted}:latest" in names)
