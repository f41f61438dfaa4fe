"""Conversations in the dashboard, in a real Chromium against the real TTS service and the Ollama double.

The turns are typed, so no test waits on speech detection. What the page shows is checked against what
the service remembers (GET /v1/conversations/{id}) and against the history the LLM received (the Ollama
double records every chat request).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Stack, open_page
from tests.browser.test_streaming_reply import LONG_REPLY
from tests.fixtures.ollama_double import OllamaBehaviour, OllamaDouble

pytestmark = pytest.mark.browser

QUESTIONS = ["What is the weather like in Berlin?", "And tomorrow?"]
ANSWERS = ["It is mild and sunny in Berlin.", "Tomorrow it will rain a little."]

# Clicks Stop from inside the page as soon as the reply's first words are sounding (and, when asked,
# once its generation has completed), and returns what the page measured as heard at that moment.
STOP_WHEN_HEARD = """(afterComplete) => {
    const current = window.dashboard.state.conversation.current;
    if (!current || current.playback.heard().texts.length === 0) return false;
    if (afterComplete && !current.generation.complete) return false;
    document.getElementById("reply-stop").click();
    return current.playback.cut;
}"""


def ask(page: Any, question: str, answered: int) -> None:
    """Type a question and wait until the page holds `answered` answers that played to their end."""
    page.fill("#type-text", question)
    page.press("#type-text", "Enter")
    page.wait_for_function(
        "(n) => document.querySelectorAll('.turn.assistant[data-state=\"played\"]').length === n",
        arg=answered,
        timeout=30_000,
    )


def dialogue(chat_request: dict[str, Any]) -> list[tuple[str, str]]:
    """The turns an LLM request carried, without the system prompt."""
    return [(m["role"], m["content"]) for m in chat_request["messages"] if m["role"] != "system"]


def remembered(stack: Stack, conversation_id: str) -> httpx.Response:
    return httpx.get(f"{stack.tts.http_url}/v1/conversations/{conversation_id}")


def problems(page: Any) -> list[str]:
    return [item.inner_text() for item in page.query_selector_all("#problem-list .problem")]


def wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


@pytest.mark.parametrize("after_complete", [False, True], ids=["while-generating", "after-generation-complete"])
def test_stop_keeps_only_the_words_heard_in_the_bubble_and_the_conversation(
    start_stack: Any, browser: Any, ollama: OllamaDouble, after_complete: bool
) -> None:
    # Written slowly, the answer is cut while it is still being generated; written at once, it has been
    # generated (generation_complete) long before its audio has played, and the service trims its record.
    pace = {} if after_complete else {"tokens": "words", "token_rate": 15.0}
    ollama.behaviour = OllamaBehaviour(reply=LONG_REPLY, **pace)
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, f"conversation_stop_{'complete' if after_complete else 'generating'}") as watch:
        page = watch.page
        page.fill("#type-text", QUESTIONS[0])
        page.press("#type-text", "Enter")
        page.wait_for_selector("#reply-stop", state="visible")
        cut = page.wait_for_function(STOP_WHEN_HEARD, arg=after_complete, polling=10, timeout=30_000).json_value()
        heard = " ".join(cut["texts"])
        bubble = page.wait_for_selector(".turn.assistant[data-state='interrupted']")
        page.wait_for_selector("#reply-stop", state="hidden")

        answer = "generation_truncated" if after_complete else "generation_cancelled"
        wait(lambda: stack.tts_wire.of_type(answer), answer)
        [cancel] = [m for m in stack.tts_wire.client_messages if m["type"] == "cancel_generation"]
        assert cancel == {
            "type": "cancel_generation",
            "generation_id": 1,
            "played_ms": pytest.approx(cut["seconds"] * 1000, rel=1e-12),
        }
        assert cancel["played_ms"] > 0
        assert bool(stack.tts_wire.of_type("generation_complete")) is after_complete
        # The bubble, the service's record and the LLM's next history all hold the words that began to play.
        assert bubble.query_selector(".words").inner_text() == heard
        assert bubble.query_selector(".meta").inner_text() == "interrupted: you pressed Stop"
        assert heard and LONG_REPLY.startswith(heard) and heard != LONG_REPLY
        [started] = stack.tts_wire.of_type("generation_started")
        conversation_id = started["conversation_id"]
        assert remembered(stack, conversation_id).json()["turns"] == [
            {"user": QUESTIONS[0], "assistant": heard, "interrupted": True}
        ]
        if after_complete:
            [truncated] = stack.tts_wire.of_type("generation_truncated")
            assert truncated == {
                "type": "generation_truncated",
                "generation_id": 1,
                "conversation_id": conversation_id,
                "heard": heard,
                "interrupted": True,
            }
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[1])
        ask(page, QUESTIONS[1], answered=1)
        assert dialogue(ollama.chat_requests[-1]) == [
            ("user", QUESTIONS[0]),
            ("assistant", heard),
            ("user", QUESTIONS[1]),
        ]
        assert problems(page) == []
