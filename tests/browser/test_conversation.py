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

STORAGE_KEY = "voice-assistant.conversation"
QUESTIONS = ["What is the weather like in Berlin?", "And tomorrow?", "Thanks, what about Paris?"]
ANSWERS = ["It is mild and sunny in Berlin.", "Tomorrow it will rain a little.", "Paris is warm this week."]

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


def bubbles(page: Any) -> list[tuple[str, str]]:
    return [
        (item.get_attribute("data-role"), item.query_selector(".words").inner_text())
        for item in page.query_selector_all("#conversation .turn:not(.partial)")
    ]


def dialogue(chat_request: dict[str, Any]) -> list[tuple[str, str]]:
    """The turns an LLM request carried, without the system prompt."""
    return [(m["role"], m["content"]) for m in chat_request["messages"] if m["role"] != "system"]


def stored_id(page: Any) -> str | None:
    return page.evaluate("(key) => sessionStorage.getItem(key)", STORAGE_KEY)


def remembered(stack: Stack, conversation_id: str) -> httpx.Response:
    return httpx.get(f"{stack.tts.http_url}/v1/conversations/{conversation_id}")


def text_inputs(stack: Stack) -> list[dict[str, Any]]:
    return [m for m in stack.tts_wire.client_messages if m["type"] == "text_input"]


def reload(page: Any) -> None:
    page.reload()
    page.wait_for_selector("body[data-ready='true']")  # the earlier turns are shown before the page is ready


def problems(page: Any) -> list[str]:
    return [item.inner_text() for item in page.query_selector_all("#problem-list .problem")]


def wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def test_two_turns_are_one_conversation_and_the_second_reply_hears_the_first(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "conversation_two_turns") as watch:
        page = watch.page
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[0])
        ask(page, QUESTIONS[0], answered=1)
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[1])
        ask(page, QUESTIONS[1], answered=2)

        assert bubbles(page) == [
            ("user", QUESTIONS[0]),
            ("assistant", ANSWERS[0]),
            ("user", QUESTIONS[1]),
            ("assistant", ANSWERS[1]),
        ]
        first, second = ollama.chat_requests
        assert dialogue(first) == [("user", QUESTIONS[0])]
        assert dialogue(second) == [("user", QUESTIONS[0]), ("assistant", ANSWERS[0]), ("user", QUESTIONS[1])]
        # The service named the conversation; the page keeps it for this tab and names it in the next turn.
        started = stack.tts_wire.of_type("generation_started")
        conversation_id = started[0]["conversation_id"]
        assert conversation_id and [s["conversation_id"] for s in started] == [conversation_id] * 2
        first_input, second_input = text_inputs(stack)
        assert "conversation_id" not in first_input and second_input["conversation_id"] == conversation_id
        assert stored_id(page) == conversation_id
        assert remembered(stack, conversation_id).json() == {
            "id": conversation_id,
            "turns": [
                {"user": QUESTIONS[0], "assistant": ANSWERS[0], "interrupted": False},
                {"user": QUESTIONS[1], "assistant": ANSWERS[1], "interrupted": False},
            ],
        }
        assert page.is_hidden("#reply-stop")  # offered only while an answer is under way


def test_a_reload_shows_the_earlier_turns_and_the_next_turn_continues_them(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "conversation_reload") as watch:
        page = watch.page
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[0])
        ask(page, QUESTIONS[0], answered=1)
        conversation_id = stored_id(page)

        reload(page)
        assert bubbles(page) == [("user", QUESTIONS[0]), ("assistant", ANSWERS[0])]
        assert page.inner_text(".turn.assistant .meta") == "earlier in this conversation"
        assert stored_id(page) == conversation_id

        # The new socket has a conversation of its own; the page's first text_input switches it to ours.
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[1])
        ask(page, QUESTIONS[1], answered=2)
        assert text_inputs(stack)[-1]["conversation_id"] == conversation_id
        assert stack.tts_wire.of_type("generation_started")[-1]["conversation_id"] == conversation_id
        assert dialogue(ollama.chat_requests[-1]) == [
            ("user", QUESTIONS[0]),
            ("assistant", ANSWERS[0]),
            ("user", QUESTIONS[1]),
        ]
        assert len(remembered(stack, conversation_id).json()["turns"]) == 2
        assert problems(page) == []


def test_a_conversation_the_service_forgot_is_left_silently(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "conversation_forgotten") as watch:
        page = watch.page
        ask(page, QUESTIONS[0], answered=1)
        forgotten = stored_id(page)
        assert httpx.delete(f"{stack.tts.http_url}/v1/conversations/{forgotten}").status_code == 204

        # Forgotten before the reload: GET answers 404, so the page shows nothing and starts afresh.
        reload(page)
        assert bubbles(page) == [] and page.is_visible("#conversation .empty")
        assert stored_id(page) is None
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[1])
        ask(page, QUESTIONS[1], answered=1)
        assert "conversation_id" not in text_inputs(stack)[-1]
        assert dialogue(ollama.chat_requests[-1]) == [("user", QUESTIONS[1])]

        # Forgotten after the reload showed it: the service refuses the id, and the page asks again without it.
        reload(page)
        assert bubbles(page) == [("user", QUESTIONS[1]), ("assistant", ANSWERS[1])]
        forgotten = stored_id(page)
        assert httpx.delete(f"{stack.tts.http_url}/v1/conversations/{forgotten}").status_code == 204
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[2])
        ask(page, QUESTIONS[2], answered=2)
        refused, retried = text_inputs(stack)[-2:]
        assert refused == {**retried, "conversation_id": forgotten} and "conversation_id" not in retried
        assert stack.tts_wire.of_type("error")[-1]["code"] == "conversation_not_found"
        assert dialogue(ollama.chat_requests[-1]) == [("user", QUESTIONS[2])]
        new_id = stack.tts_wire.of_type("generation_started")[-1]["conversation_id"]
        assert stored_id(page) == new_id != forgotten
        assert problems(page) == []


def test_new_conversation_stops_the_answer_clears_the_bubbles_and_drops_the_history(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "conversation_new") as watch:
        page = watch.page
        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[0])
        ask(page, QUESTIONS[0], answered=1)
        old_id = stored_id(page)
        # A long answer, written slowly: it is still being generated while it plays.
        ollama.behaviour = OllamaBehaviour(reply=LONG_REPLY, tokens="words", token_rate=15.0)
        page.fill("#type-text", QUESTIONS[1])
        page.press("#type-text", "Enter")
        page.wait_for_selector(".turn.assistant[data-state='playing']")

        page.click("#new-conversation")
        assert bubbles(page) == [] and page.is_visible("#conversation .empty")
        wait(lambda: stack.tts_wire.of_type("generation_cancelled"), "the answer being cancelled")
        assert [m["type"] for m in stack.tts_wire.client_messages] == [
            "text_input",
            "text_input",
            "cancel_generation",
            "new_conversation",
        ]
        [started_new] = stack.tts_wire.of_type("conversation_started")
        assert started_new["conversation_id"] != old_id

        ollama.behaviour = OllamaBehaviour(reply=ANSWERS[2])
        ask(page, QUESTIONS[2], answered=1)
        assert bubbles(page) == [("user", QUESTIONS[2]), ("assistant", ANSWERS[2])]
        assert "conversation_id" not in text_inputs(stack)[-1]
        assert dialogue(ollama.chat_requests[-1]) == [("user", QUESTIONS[2])]
        assert stored_id(page) == started_new["conversation_id"]
        # The cut answer stays in the old conversation, as far as it was heard.
        earlier = remembered(stack, old_id).json()["turns"]
        assert earlier[0] == {"user": QUESTIONS[0], "assistant": ANSWERS[0], "interrupted": False}
        assert earlier[1]["user"] == QUESTIONS[1] and earlier[1]["interrupted"] is True
        assert LONG_REPLY.startswith(earlier[1]["assistant"]) and earlier[1]["assistant"] != LONG_REPLY


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
