"""core.llm against a real HTTP Ollama double on 127.0.0.1 (Ollama's NDJSON wire format)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from core.config import LlmSettings
from core.errors import LlmError, LlmModelNotFound, LlmUnavailable
from core.llm import LlmClient, OllamaClient, chat_messages
from tests.fixtures.ollama_double import OllamaDouble, down_url


def in_thread(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test with anyio.run in a thread of its own: a fresh event loop every time, whatever
    another test (a sync browser driver, say) left behind in the main thread."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        outcome: dict[str, BaseException] = {}

        def target() -> None:
            try:
                anyio.run(functools.partial(test, *args, **kwargs))
            except BaseException as exc:  # handed to the test thread below
                outcome["error"] = exc

        thread = threading.Thread(target=target, name=f"test-{test.__name__}")
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), f"{test.__name__} did not finish"
        if "error" in outcome:
            raise outcome["error"]

    return run


class Sleeps:
    """Records the backoff waits instead of sleeping them (tenacity's injectable sleep)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client(url: str, sleeps: Sleeps | None = None, **settings: object) -> OllamaClient:
    return OllamaClient(LlmSettings(url=url, **settings), sleep=sleeps)


def messages(llm: LlmClient, text: str, history: list[tuple[str, str]] | None = None) -> list[dict[str, str]]:
    return chat_messages(llm.settings.system_prompt, history or [], text)


async def reply(llm: LlmClient, text: str, history: list[tuple[str, str]] | None = None) -> str:
    """The whole streamed reply."""
    return "".join([piece async for piece in llm.stream_reply(messages(llm, text, history))])


@in_thread
async def test_the_reply_streams_with_the_system_prompt_and_options(ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = "Sure. The sky is blue because of Rayleigh scattering."
    ollama.behaviour.pieces = 7
    llm = client(ollama.url, system_prompt="Be brief.", options={"temperature": 0.2})
    try:
        assert await reply(llm, "Why is the sky blue?") == "Sure. The sky is blue because of Rayleigh scattering."
    finally:
        await llm.aclose()
    request = ollama.chat_requests[0]
    assert request["model"] == "llama3.2:3b"
    assert request["stream"] is True
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert request["options"] == {"temperature": 0.2}


@in_thread
async def test_stream_reply_yields_the_pieces_in_order(ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = "abcdefghij"
    ollama.behaviour.pieces = 5
    llm = client(ollama.url)
    try:
        assert [piece async for piece in llm.stream_reply(messages(llm, "hi"))] == ["ab", "cd", "ef", "gh", "ij"]
    finally:
        await llm.aclose()


@in_thread
async def test_down_ollama_is_retried_1_2_4_then_llm_unavailable_says_what_to_do() -> None:
    sleeps = Sleeps()
    url = down_url()
    llm = client(url, sleeps)
    with pytest.raises(LlmUnavailable) as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert sleeps.waits == [1.0, 2.0, 4.0]
    message = str(error.value)
    assert url in message and "ollama serve" in message and "ollama pull llama3.2:3b" in message
    assert "llm.url" in message and "4 attempts" in message


@in_thread
async def test_server_errors_are_retried_until_it_recovers(ollama: OllamaDouble) -> None:
    ollama.behaviour.fail_status = 500
    ollama.behaviour.fail_times = 2
    sleeps = Sleeps()
    llm = client(ollama.url, sleeps, retry_base_delay_s=0.25)
    try:
        assert await reply(llm, "hello") == "Hello! I am your assistant."
    finally:
        await llm.aclose()
    assert sleeps.waits == [0.25, 0.5]
    assert len(ollama.chat_requests) == 3


@in_thread
async def test_persistent_server_error_gives_llm_error_after_all_attempts(ollama: OllamaDouble) -> None:
    # Ollama is there and failing: llm_error (502), not llm_unavailable ("start it"), which it would not fix.
    ollama.behaviour.fail_status = 503
    ollama.behaviour.fail_times = -1
    sleeps = Sleeps()
    llm = client(ollama.url, sleeps, retry_attempts=2)
    with pytest.raises(LlmError) as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert error.value.code == "llm_error"
    assert error.value.message.startswith(
        "Ollama failed: it answered 503 (llama runner process has terminated) after 3 attempts; check the Ollama log"
    )
    assert sleeps.waits == [1.0, 2.0]
    assert len(ollama.chat_requests) == 3


@in_thread
async def test_an_error_after_text_was_handed_on_ends_the_stream_without_a_retry(ollama: OllamaDouble) -> None:
    # The words already handed on may be spoken by now: a retry would repeat them.
    ollama.behaviour.mid_stream_error = "out of memory"
    llm = client(ollama.url, Sleeps(), retry_attempts=1)
    pieces: list[str] = []
    with pytest.raises(LlmError, match="Ollama failed: out of memory; check the Ollama log") as error:
        async for piece in llm.stream_reply(messages(llm, "hello")):
            pieces.append(piece)
    await llm.aclose()
    assert error.value.code == "llm_error"
    assert len(pieces) == 1 and "Hello! I am your assistant.".startswith(pieces[0])
    assert len(ollama.chat_requests) == 1


@in_thread
async def test_unknown_model_is_not_retried_and_says_ollama_pull(ollama: OllamaDouble) -> None:
    sleeps = Sleeps()
    llm = client(ollama.url, sleeps, model="mistral:7b")
    with pytest.raises(LlmModelNotFound) as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert sleeps.waits == []
    assert len(ollama.chat_requests) == 1
    assert "`ollama pull mistral:7b`" in str(error.value)


@in_thread
async def test_other_client_errors_are_not_retried(ollama: OllamaDouble) -> None:
    ollama.behaviour.fail_status = 400
    ollama.behaviour.fail_times = -1
    ollama.behaviour.fail_message = "invalid options"
    sleeps = Sleeps()
    llm = client(ollama.url, sleeps)
    with pytest.raises(LlmError, match="400: invalid options") as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert error.value.code == "llm_error"
    assert sleeps.waits == [] and len(ollama.chat_requests) == 1


@in_thread
async def test_slow_model_within_the_timeout_is_fine(ollama: OllamaDouble) -> None:
    ollama.behaviour.delay_s = 0.05
    llm = client(ollama.url, timeout_s=5)
    try:
        assert await reply(llm, "hello") == "Hello! I am your assistant."
    finally:
        await llm.aclose()


@in_thread
async def test_model_check(ollama: OllamaDouble) -> None:
    llm = client(ollama.url)
    try:
        assert await llm.has_model() is True
        ollama.behaviour.models = ["other:1b"]
        assert await llm.has_model() is False
    finally:
        await llm.aclose()
    down = client(down_url())
    assert await down.has_model() is None
    await down.aclose()
