"""llm.provider openai against a real HTTP server speaking OpenAI's streaming chat completions wire
format (tests/fixtures/openai_chat_double.py), through the real `openai` client."""

from __future__ import annotations

import pytest
import structlog

from core.config import LlmSettings
from core.errors import LlmError, LlmModelNotFound, LlmTimeout, LlmUnavailable
from core.llm import LlmStats, chat_messages, make_llm_client
from core.llm_openai import OpenAiChatClient
from tests.fixtures.ollama_double import down_url
from tests.fixtures.openai_chat_double import OpenAiChatDouble
from tests.tts.test_llm import Sleeps, in_thread


def client(url: str, sleeps: Sleeps | None = None, **settings: object) -> OpenAiChatClient:
    settings = {"model": "local-model", **settings}
    return OpenAiChatClient(LlmSettings(provider="openai", url=url, **settings), sleep=sleeps)  # type: ignore[arg-type]


async def reply(llm: OpenAiChatClient, text: str, history: list[tuple[str, str]] | None = None) -> str:
    messages = chat_messages(llm.settings.system_prompt, history or [], text)
    return "".join([piece async for piece in llm.stream_reply(messages)])


def test_the_provider_setting_picks_the_client() -> None:
    assert isinstance(make_llm_client(LlmSettings(provider="openai", url="http://localhost:8080/v1")), OpenAiChatClient)


@in_thread
async def test_the_reply_streams_with_the_history_and_options(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.reply = "Your name is Sam."
    chat_server.behaviour.pieces = 4
    llm = client(chat_server.url, system_prompt="Be brief.", options={"temperature": 0.2, "max_tokens": 64})
    stats = LlmStats()
    try:
        history = [("My name is Sam.", "Nice to meet you, Sam.")]
        messages = chat_messages("Be brief.", history, "What is my name?")
        pieces = [piece async for piece in llm.stream_reply(messages, stats)]
    finally:
        await llm.aclose()
    assert "".join(pieces) == "Your name is Sam." and len(pieces) == 4
    assert stats.tokens == 4 and stats.time_to_first_token_s is not None and stats.attempts == 1
    request = chat_server.chat_requests[0]
    assert request["model"] == "local-model" and request["stream"] is True
    assert request["temperature"] == 0.2 and request["max_tokens"] == 64
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Sam."},
        {"role": "assistant", "content": "Nice to meet you, Sam."},
        {"role": "user", "content": "What is my name?"},
    ]


@in_thread
async def test_the_api_key_is_sent_as_a_bearer_token_and_never_logged(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.api_key = "sk-secret-123"
    llm = client(chat_server.url, api_key="sk-secret-123")
    with structlog.testing.capture_logs() as logs:
        try:
            assert await reply(llm, "hello") == "Hello! I am your assistant."
            assert await llm.has_model() is True
        finally:
            await llm.aclose()
    assert chat_server.chat_headers[0]["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in repr(llm.settings) and "sk-secret-123" not in repr(logs)


@in_thread
async def test_a_wrong_api_key_is_not_retried_and_says_set_llm_api_key(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.api_key = "sk-right"
    sleeps = Sleeps()
    llm = client(chat_server.url, sleeps, api_key="sk-wrong")
    with pytest.raises(LlmError, match="refused the API key") as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert "llm.api_key" in str(error.value) and "sk-wrong" not in str(error.value)
    assert sleeps.waits == [] and len(chat_server.chat_requests) == 1


@in_thread
async def test_an_unknown_model_is_not_retried_and_says_what_to_set(chat_server: OpenAiChatDouble) -> None:
    sleeps = Sleeps()
    llm = client(chat_server.url, sleeps, model="mistral")
    with pytest.raises(LlmModelNotFound) as error:
        await reply(llm, "hello")
    await llm.aclose()
    message = str(error.value)
    assert "'mistral'" in message and "llm.model" in message and "/models" in message
    assert sleeps.waits == [] and len(chat_server.chat_requests) == 1


@in_thread
async def test_server_errors_are_retried_until_it_recovers(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.fail_status = 503
    chat_server.behaviour.fail_times = 2
    sleeps = Sleeps()
    llm = client(chat_server.url, sleeps, retry_base_delay_s=0.25)
    try:
        assert await reply(llm, "hello") == "Hello! I am your assistant."
    finally:
        await llm.aclose()
    assert sleeps.waits == [0.25, 0.5] and len(chat_server.chat_requests) == 3


@in_thread
async def test_a_persistent_server_error_gives_llm_error_after_all_attempts(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.fail_status = 500
    chat_server.behaviour.fail_times = -1
    sleeps = Sleeps()
    llm = client(chat_server.url, sleeps, retry_attempts=2)
    with pytest.raises(LlmError, match=r"server failed: it answered 500 \(the model crashed\) after 3 attempts") as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert error.value.code == "llm_error"
    assert sleeps.waits == [1.0, 2.0]


@in_thread
async def test_a_down_server_is_retried_then_says_how_to_start_one() -> None:
    sleeps = Sleeps()
    url = down_url() + "/v1"
    llm = client(url, sleeps)
    with pytest.raises(LlmUnavailable) as error:
        await reply(llm, "hello")
    await llm.aclose()
    assert sleeps.waits == [1.0, 2.0, 4.0]
    message = str(error.value)
    assert url in message and "llama-server" in message and "llm.url" in message and "4 attempts" in message


@in_thread
async def test_an_error_inside_the_stream_ends_it_without_a_retry(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.mid_stream_error = "out of memory"
    llm = client(chat_server.url, Sleeps(), retry_attempts=2)
    pieces: list[str] = []
    with pytest.raises(LlmError, match="out of memory") as error:
        async for piece in llm.stream_reply(chat_messages("", [], "hello")):
            pieces.append(piece)
    await llm.aclose()
    assert error.value.code == "llm_error"
    assert len(pieces) == 1 and len(chat_server.chat_requests) == 1


@in_thread
async def test_a_server_slower_than_the_timeout_gives_llm_timeout(chat_server: OpenAiChatDouble) -> None:
    chat_server.behaviour.delay_s = 1.0
    llm = client(chat_server.url, Sleeps(), timeout_s=0.2, retry_attempts=0)
    with pytest.raises(LlmTimeout, match="llm.timeout_s"):
        await reply(llm, "hello")
    await llm.aclose()


@in_thread
async def test_model_check(chat_server: OpenAiChatDouble) -> None:
    llm = client(chat_server.url)
    try:
        assert await llm.has_model() is True
        chat_server.behaviour.models = ["other"]
        assert await llm.has_model() is False
    finally:
        await llm.aclose()
    down = client(down_url() + "/v1")
    assert await down.has_model() is None
    await down.aclose()
