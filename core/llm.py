"""The LLM clients: the assistant's reply, piece by piece as it is written, from Ollama's own API
(`ollama` client) or any OpenAI-compatible chat completions server (core/llm_openai.py: llama.cpp's
llama-server, vLLM, LM Studio, LocalAI, Ollama's /v1, OpenAI), chosen by llm.provider.

Every provider streams one attempt (`_parts`); the rest is shared: connection errors and 5xx answers
before the first piece are retried with exponential backoff (tenacity), 4xx answers such as an unknown
model are not, and every failure becomes one of the LLM errors of core.errors, whose message tells the
user what to do: a server that cannot be reached is `llm_unavailable`, one that answers with an error
`llm_error`. `LlmHealth` answers /health's "is the LLM there?" from a result probed again in the
background before it is due, so /health never waits for it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import ollama
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from core.config import LlmSettings
from core.errors import LlmError, LlmModelNotFound, LlmTimeout, LlmUnavailable
from core.logging import get_logger
from core.redact import public_url

log = get_logger(__name__)

ChatMessage = dict[str, str]
"""`{"role": "system" | "user" | "assistant", "content": ...}`, as every provider takes them."""
Sleep = Callable[[float], Awaitable[None]]


class ServerFailed(Exception):
    """A 5xx answer or a broken stream: the server is there but failed; worth retrying."""

    def __init__(self, server: str, status: int, detail: str) -> None:
        super().__init__(f"{server} failed: it answered {status} ({detail})" if status > 0 else f"{server} failed: {detail}")
        self.status = status
        self.detail = detail


class Unreachable(ConnectionError):
    """The server could not be reached (a provider's own connection error, normalised)."""


class TimedOut(Exception):
    """The server stopped answering within llm.timeout_s (a provider's own read timeout, normalised)."""


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (ConnectionError, httpx.TransportError, ServerFailed)) and not isinstance(
        error, httpx.ReadTimeout
    )


def chat_messages(system_prompt: str, history: list[tuple[str, str]], text: str) -> list[ChatMessage]:
    """The system prompt, the earlier turns of the conversation (user, assistant), then the new words."""
    messages: list[ChatMessage] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for user, assistant in history:
        messages.append({"role": "user", "content": user})
        if assistant:
            messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": text})
    return messages


@dataclass
class LlmStats:
    """How one reply streamed: filled in by `stream_reply` as pieces arrive."""

    started: float = field(default_factory=time.perf_counter)
    """perf_counter() when the request was made."""
    first_token_at: float | None = None
    """perf_counter() when the first piece of text arrived (after any retries)."""
    last_token_at: float | None = None
    tokens: int = 0
    """Pieces of text received; the servers stream one token per piece."""
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

    def new_attempt(self) -> None:
        self.attempts += 1
        self.tokens = 0
        self.first_token_at = self.last_token_at = None

    def token(self) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.tokens += 1


class LlmClient(ABC):
    """One shared client per process, safe for concurrent requests."""

    server = "the LLM server"
    """How messages name the server."""

    def __init__(self, settings: LlmSettings, *, sleep: Sleep | None = None) -> None:
        self.settings = settings
        self._sleep: Sleep = sleep or anyio.sleep

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    def _parts(self, messages: list[ChatMessage], stats: LlmStats | None) -> AsyncIterator[str]:
        """One attempt: the streamed pieces of the reply. Failures are raised as core errors, or as
        Unreachable / ServerFailed / TimedOut for the shared handling. Closing it stops the generation."""

    @abstractmethod
    async def has_model(self) -> bool | None:
        """Whether the server offers llm.model; None when it cannot be reached. Raises ServerFailed when it
        answers with a server error."""

    def _unreachable_hint(self) -> str:
        return "start it, or point llm.url at the right address"

    def _server_error_hint(self) -> str:
        return "check the server's log, and that the model loads"

    async def stream_reply(self, messages: list[ChatMessage], stats: LlmStats | None = None) -> AsyncIterator[str]:
        """The reply to `messages` (chat_messages) piece by piece. Failures before the first piece are
        retried; once text has been handed on, a failure ends the stream with an LlmError (no retry: the
        words already handed on may be spoken by now). Closing the generator (aclose) stops the request.
        No overall time limit: the caller sets one."""

        async def start() -> tuple[str | None, AsyncIterator[str] | None]:
            parts = self._parts(messages, stats)
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
        except (ConnectionError, httpx.TransportError, ServerFailed, TimedOut) as exc:
            raise self._translate(exc, attempts=False) from None
        finally:
            await parts.aclose()  # type: ignore[attr-defined]

    async def _attempts(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        def wait(state: RetryCallState) -> float:
            # llm.retry_base_delay_s, doubled for each further retry: 1 s, 2 s, 4 s...
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
        except (ConnectionError, httpx.TransportError, ServerFailed, TimedOut) as exc:
            raise self._translate(exc, attempts=True) from None

    def _translate(self, exc: BaseException, *, attempts: bool) -> LlmError:
        tries = f" after {self.settings.retry_attempts + 1} attempts" if attempts else ""
        if isinstance(exc, (httpx.ReadTimeout, TimedOut)):
            return self.timeout_error()
        if isinstance(exc, ServerFailed):  # it is there: running it again will not help, its log will
            return LlmError(f"{exc}{tries}; {self._server_error_hint()}")
        return LlmUnavailable(
            f"cannot reach {self.server} at {public_url(self.settings.url)} ({exc.__class__.__name__}){tries}: "
            f"{self._unreachable_hint()}"
        )

    def timeout_error(self) -> LlmTimeout:
        return LlmTimeout(
            f"{self.server} did not finish the reply within llm.timeout_s={self.settings.timeout_s:g} s; "
            "raise llm.timeout_s or use a smaller model"
        )


class OllamaClient(LlmClient):
    """Ollama's own API (NDJSON streaming), with the `ollama` client."""

    server = "Ollama"

    def __init__(self, settings: LlmSettings, *, sleep: Sleep | None = None) -> None:
        super().__init__(settings, sleep=sleep)
        self._client = ollama.AsyncClient(host=settings.url, timeout=settings.timeout_s)
        self._health_client = httpx.AsyncClient(base_url=settings.url, timeout=settings.health_timeout_s)

    async def aclose(self) -> None:
        await self._client.close()
        await self._health_client.aclose()

    def _unreachable_hint(self) -> str:
        return (
            f"start it with `ollama serve`, make sure the model is there (`ollama pull {self.settings.model}`), "
            "or point llm.url (or OLLAMA_URL) at the right address"
        )

    def _server_error_hint(self) -> str:
        return f"check the Ollama log, and that the model loads (`ollama run {self.settings.model}`)"

    async def _parts(self, messages: list[ChatMessage], stats: LlmStats | None) -> AsyncIterator[str]:
        kwargs: dict[str, Any] = {"options": self.settings.options or None}
        if self.settings.keep_alive is not None:
            kwargs["keep_alive"] = self.settings.keep_alive
        if stats is not None:
            stats.new_attempt()
        stream = None
        try:
            stream = await self._client.chat(self.settings.model, messages, stream=True, **kwargs)
            async for part in stream:
                content = part.message.content if part.message else None
                if content:
                    if stats is not None:
                        stats.token()
                    yield content
        except ollama.ResponseError as exc:
            status = exc.status_code
            if status == 404 or (status == -1 and "not found" in str(exc.error).lower()):
                raise LlmModelNotFound(
                    f"Ollama at {public_url(self.settings.url)} has no model {self.settings.model!r} ({exc.error}): "
                    f"run `ollama pull {self.settings.model}`, or set llm.model to an installed model"
                ) from None
            if 400 <= status < 500:
                raise LlmError(
                    f"Ollama refused the request ({status}: {exc.error}); check llm.model and llm.options"
                ) from None
            raise ServerFailed(self.server, status, str(exc.error)) from None
        finally:
            if stream is not None:
                await stream.aclose()  # type: ignore[attr-defined]

    async def has_model(self) -> bool | None:
        try:
            response = await self._health_client.get("/api/tags")
            if response.is_server_error:
                raise ServerFailed(self.server, response.status_code, _error_detail(response))
            response.raise_for_status()
            models = response.json().get("models", [])
        except (httpx.HTTPError, OSError, ValueError):
            return None
        names = {entry.get("model") or entry.get("name") for entry in models if isinstance(entry, dict)}
        wanted = self.settings.model
        return wanted in names or (":" not in wanted and f"{wanted}:latest" in names)


def _error_detail(response: httpx.Response) -> str:
    """Ollama's `{"error": ...}`, or the start of whatever else the server answered."""
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:200].strip() or response.reason_phrase


def make_llm_client(settings: LlmSettings) -> LlmClient:
    """The client of llm.provider."""
    if settings.provider == "openai":
        from core.llm_openai import OpenAiChatClient

        return OpenAiChatClient(settings)
    return OllamaClient(settings)


MIN_PROBE_INTERVAL_S = 0.5
"""The most often /health's probe of the LLM runs, whatever llm.health_cache_s says (0 included)."""


class LlmHealth:
    """Whether the LLM answers and has its model, for /health. `run` probes it again every half of
    llm.health_cache_s, before the last result is due: /health reads a result never older than that,
    shows a change within one probe interval, and never waits for the LLM."""

    def __init__(self, llm: LlmClient, ttl_s: float) -> None:
        self.llm = llm
        self.interval_s = max(ttl_s / 2, MIN_PROBE_INTERVAL_S)
        self.reachable = False
        self.model_available: bool | None = None
        self.failure: str | None = None
        """What the server answered when it answered with an error (it is reachable, and fails)."""
        self.checked_at: float | None = None

    async def run(self) -> None:
        while True:
            await self.refresh()
            await anyio.sleep(self.interval_s)

    async def refresh(self) -> None:
        try:
            has_model = await self.llm.has_model()
        except ServerFailed as exc:
            self.reachable, self.model_available, self.failure = True, None, str(exc)
        else:
            self.reachable, self.model_available, self.failure = has_model is not None, has_model, None
        self.checked_at = time.monotonic()
