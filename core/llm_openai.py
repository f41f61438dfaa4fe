"""The OpenAI-compatible LLM provider (llm.provider: openai): streamed chat completions from any server
that speaks OpenAI's API (llama.cpp's llama-server, vLLM, LM Studio, LocalAI, Ollama's own /v1, or
OpenAI), through the `openai` package. Retries, time limits and messages are core.llm's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai

from core.config import LlmSettings
from core.errors import LlmError, LlmModelNotFound
from core.llm import ChatMessage, LlmClient, LlmStats, ServerFailed, Sleep, TimedOut, Unreachable
from core.redact import public_url


class OpenAiChatClient(LlmClient):
    server = "the OpenAI-compatible server"

    def __init__(self, settings: LlmSettings, *, sleep: Sleep | None = None) -> None:
        super().__init__(settings, sleep=sleep)
        key = settings.api_key.get_secret_value() if settings.api_key else "not-needed"
        # Retries are core.llm's (the same for every provider): the client's own are off.
        self._client = openai.AsyncOpenAI(base_url=settings.url, api_key=key, timeout=settings.timeout_s, max_retries=0)
        self._health = self._client.with_options(timeout=settings.health_timeout_s)

    async def aclose(self) -> None:
        await self._client.close()

    def _unreachable_hint(self) -> str:
        return (
            "start it (llama-server, vLLM, LM Studio, LocalAI, `ollama serve` for Ollama's /v1), or point llm.url "
            "at its base URL (the part before /chat/completions, such as http://localhost:8080/v1)"
        )

    async def _parts(self, messages: list[ChatMessage], stats: LlmStats | None) -> AsyncIterator[str]:
        if stats is not None:
            stats.new_attempt()
        stream = None
        try:
            stream = await self._client.chat.completions.create(
                model=self.settings.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                extra_body=dict(self.settings.options) or None,
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    content = choice.delta.content if choice.delta else None
                    if content:
                        if stats is not None:
                            stats.token()
                        yield content
        except openai.APITimeoutError:
            raise TimedOut() from None
        except openai.APIConnectionError as exc:
            raise Unreachable(str(exc)) from None
        except openai.APIStatusError as exc:
            raise self._refused(exc) from None
        except openai.APIError as exc:  # an error event inside the stream (llama-server, vLLM send them)
            raise ServerFailed(self.server, 0, exc.message) from None
        finally:
            if stream is not None:
                await stream.close()

    def _refused(self, exc: openai.APIStatusError) -> Exception:
        status, model, url = exc.status_code, self.settings.model, public_url(self.settings.url)
        detail = _detail(exc)
        if status == 404:
            return LlmModelNotFound(
                f"{self.server} at {url} has no model {model!r} ({detail}): set llm.model to one it serves "
                f"(GET {url}/models lists them)"
            )
        if status in (401, 403):
            return LlmError(f"{self.server} at {url} refused the API key ({status}: {detail}); set llm.api_key")
        if 400 <= status < 500:
            return LlmError(f"{self.server} refused the request ({status}: {detail}); check llm.model and llm.options")
        return ServerFailed(self.server, status, detail)

    async def has_model(self) -> bool | None:
        try:
            models = await self._health.models.list()
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise ServerFailed(self.server, exc.status_code, _detail(exc)) from None
            return None
        except openai.APIError:
            return None
        return self.settings.model in {model.id for model in models.data}


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return exc.message
