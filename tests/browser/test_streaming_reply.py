"""Streamed replies and barge-in in a real Chromium: /ws/tts -> Web Audio, and the user cutting the assistant off.

The replies come from the Ollama double streaming word by word at a steady rate, through the real TTS
service (synthetic Piper voice: a sine of 256 samples per phoneme id at 22.05 kHz, about 24 ms of audio
per character), so the page receives audio while the reply is still being written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.browser.conftest import MIC_RATE, Stack, launch, open_page
from tests.browser.test_dashboard import watch_reply_audio
from tests.fixtures.ollama_double import OllamaBehaviour, OllamaDouble
from tests.fixtures.speech import make_speech, write_wav

pytestmark = pytest.mark.browser

FIRST_QUESTION = "What is the weather like in Berlin today?"
SECOND_QUESTION = "Stop, tell me about Paris instead."
# Long enough that the synthetic voice speaks it for about ten seconds: the user interrupts it after ~2 s.
SENTENCES = [
    "The weather in Berlin is mild today, with a light breeze from the west and a few clouds over the river.",
    "In the afternoon the sun comes out and the temperature climbs to about twenty one degrees.",
    "Towards the evening the wind turns to the north and it gets noticeably cooler near the water.",
    "There is a small chance of a shower after midnight, so take an umbrella if you go out late.",
    "Tomorrow looks much the same, with a little more sunshine in the morning and a warm afternoon.",
]
LONG_REPLY = " ".join(SENTENCES)
SHORT_REPLY = "Paris is lovely in the spring."
# Silence between the two questions: the first reply has started playing well before the second question.
GAP_S = 3.5


@pytest.fixture(scope="module")
def barge_in_browser(playwright_instance: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose microphone says a question, stays silent while the answer starts, then speaks again."""
    first = make_speech(FIRST_QUESTION, sample_rate=MIC_RATE, lead_silence_s=0.6, trail_silence_s=GAP_S)
    second = make_speech(SECOND_QUESTION, sample_rate=MIC_RATE, lead_silence_s=0, trail_silence_s=2.0)
    path = write_wav(tmp_path_factory.mktemp("barge") / "barge_in.wav", np.concatenate([first, second]), MIC_RATE)
    browser = launch(playwright_instance, Path(path))
    yield browser
    browser.close()


def _wait(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def watch_reply_stream(page: Any) -> None:
    """Timestamps (page clock) of what the page's reply stream received, by message type."""
    page.evaluate(
        """() => {
            const tts = window.dashboard.tts;
            const dispatch = tts.dispatch.bind(tts);
            window.__stream = [];
            tts.dispatch = (type, data) => { window.__stream.push({ type, time: performance.now(), data }); dispatch(type, data); };
        }"""
    )


def test_streamed_reply_starts_playing_while_it_is_still_being_generated(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    # 36 words at 12 words per second, the last one held until the page plays: its first fragment (cut at
    # the first comma) is ready after half a second, and about 5 s of speech follow.
    last_word = threading.Event()
    ollama.behaviour = OllamaBehaviour(
        reply=" ".join(SENTENCES[:2]), tokens="words", token_rate=12.0, hold_last_token=last_word
    )
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "streaming_reply") as watch:
        page = watch.page
        watch_reply_audio(page)
        watch_reply_stream(page)
        page.fill("#type-text", "How is the weather?")
        page.press("#type-text", "Enter")

        # The words grow on the page while the reply is written, and the first audio plays before its end.
        page.wait_for_selector(".turn.assistant[data-state='playing']")
        assert page.evaluate("window.__stream.some((m) => m.type === 'generation_complete')") is False
        shown = page.inner_text(".turn.assistant .words")
        assert shown and len(shown) < len(ollama.behaviour.reply), shown
        last_word.set()
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)

        stream = page.evaluate("window.__stream")
        reply = page.evaluate("window.__reply")
        complete_at = next(m["time"] for m in stream if m["type"] == "generation_complete")
        [playing] = [e for e in reply["events"] if e["type"] == "playing"]
        assert playing["time"] < complete_at  # it sounded before the reply was done (its last word was held)
        texts = [m["data"]["text"] for m in stream if m["type"] == "reply_text"]
        assert len(texts) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False)), texts

        # Every chunk the service sent was scheduled once, in order, at its own rate, back to back.
        chunks = stack.tts_wire.of_type("audio_chunk")
        [complete] = stack.tts_wire.of_type("generation_complete")
        scheduled = [e for e in reply["events"] if e["type"] == "chunk"]
        assert [e["chunk"] for e in scheduled] == [c["chunk_id"] for c in chunks] == list(range(len(chunks)))
        assert [e["samples"] for e in scheduled] == [len(frame) // 2 for frame in stack.tts_wire.server_frames]
        assert len(scheduled) == complete["chunks"] >= 3
        for before, after in zip(scheduled, scheduled[1:], strict=False):
            if after["underrun"]:  # the next sentence was not ready yet: it starts as soon as it comes
                assert after["start"] > before["end"]
            else:
                assert after["start"] == pytest.approx(before["end"], abs=1e-9)
        [ended] = [e for e in reply["events"] if e["type"] == "ended"]
        assert ended["seconds"] == pytest.approx(complete["audio_seconds"], abs=0.001)
        assert page.inner_text(".turn.assistant .words") == complete["text"]


def test_speaking_over_the_assistant_stops_it_and_the_new_words_get_an_answer(
    start_stack: Any, barge_in_browser: Any, ollama: OllamaDouble
) -> None:
    ollama.behaviour = OllamaBehaviour(reply=LONG_REPLY, tokens="words", token_rate=15.0)
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(barge_in_browser, stack.url, "barge_in") as watch:
        page = watch.page
        page.wait_for_selector("#pill-stt[data-state='ok']")
        watch_reply_audio(page)
        assert page.is_checked("#barge-in")  # the default
        page.click("#mic")

        # The first question gets the long answer; the next request gets a short one.
        _wait(lambda: len(ollama.chat_requests) == 1, "the first question reaching Ollama", timeout=20)
        long_behaviour = ollama.behaviour
        ollama.behaviour = OllamaBehaviour(reply=SHORT_REPLY)
        page.wait_for_function("() => window.__reply.playing >= 1")  # the first reply is heard

        # The second question: the page stops the reply at once and cancels its generation.
        page.wait_for_function("() => window.__reply.stopped === 1", timeout=20_000)
        first = page.query_selector_all(".turn.assistant")[0]
        assert first.get_attribute("data-state") == "interrupted"
        # ...then the new words become the next turn, and it is answered and played to its end.
        page.wait_for_selector(".turn.assistant >> nth=1", timeout=20_000)
        page.wait_for_function("() => window.__reply.ended === 1", timeout=30_000)
        page.wait_for_selector(".turn.assistant[data-state='played']")

        stt, tts = stack.wire, stack.tts_wire
        speech_starts = stt.of_type("speech_started")
        transcripts = stt.of_type("transcript")
        assert len(speech_starts) == 2 and len(transcripts) == 2
        # The TTS service got cancel_generation for the first generation, and stopped it (and the LLM stream).
        assert [m["type"] for m in tts.client_messages] == ["text_input", "cancel_generation", "text_input"]
        assert tts.client_messages[0]["text"] == transcripts[0]["text"].strip()
        assert tts.client_messages[2]["text"] == transcripts[1]["text"].strip()
        [cancelled] = tts.of_type("generation_cancelled")
        assert cancelled["generation_id"] == 1
        [complete] = tts.of_type("generation_complete")
        assert complete["generation_id"] == 2 and complete["text"] == SHORT_REPLY
        _wait(lambda: ollama.aborted_streams == 1, "the first LLM stream being stopped")
        assert long_behaviour is not ollama.behaviour and ollama.finished_streams == 1  # only the short one ran to its end

        # The reply was cut well before its natural end: audio of it was still queued when it stopped.
        reply = page.evaluate("window.__reply")
        events = reply["events"]
        [stopped] = [e for e in events if e["type"] == "stopped"]
        assert stopped["tag"] == "turn-1" and stopped["queued"] > 0.2
        first_chunks = [e for e in events if e["type"] == "chunk" and e["tag"] == "turn-1"]
        assert first_chunks and all(e["time"] <= stopped["time"] for e in first_chunks)
        # Not half of it heard, by the page's audio clock. (How much had arrived by then is no measure: the
        # sentences come whole, and whether the third is synthesized before the stop is a race.)
        assert stopped["played"] < len(LONG_REPLY) * 0.024 / 2
        # No chunk of the cancelled generation played after the cancel: each one the service sent was either
        # scheduled before the stop (and stopped with it) or discarded on arrival.
        sent_first = [c for c in tts.of_type("audio_chunk") if c["generation_id"] == 1]
        dropped = page.evaluate("window.dashboard.tts.droppedAfterCancel")
        assert len(sent_first) == len(first_chunks) + dropped
        order = [m["type"] for m in tts.server_messages if m.get("generation_id") == 1]
        assert order[-1] == "generation_cancelled" and "generation_complete" not in order
        # The second turn: its own words, its own reply, played to the end.
        second_chunks = [e for e in events if e["type"] == "chunk" and e["tag"] == "turn-2"]
        assert [e["type"] for e in events if e["tag"] == "turn-2"][-1] == "ended" and second_chunks
        assert sum(e["samples"] for e in second_chunks) == sum(
            c["samples"] for c in tts.of_type("audio_chunk") if c["generation_id"] == 2
        )
        users = [u.inner_text() for u in page.query_selector_all(".turn.user:not(.partial) .words")]
        assert users == [transcripts[0]["text"].strip(), transcripts[1]["text"].strip()]
        assert ollama.chat_requests[-1]["messages"][-1]["content"] == transcripts[1]["text"].strip()
        assert page.query_selector_all(".turn.assistant .words")[1].inner_text() == SHORT_REPLY
        # The cancel said how much of the first reply had played, by the page's audio clock; the service
        # remembers only the words that began to play, as the cut bubble shows them.
        cancel = tts.client_messages[1]
        played_ms = pytest.approx(stopped["played"] * 1000, rel=1e-12)
        assert cancel == {"type": "cancel_generation", "generation_id": 1, "played_ms": played_ms}
        assert cancel["played_ms"] > 0
        heard = first.query_selector(".words").inner_text()
        assert heard and LONG_REPLY.startswith(heard) and heard != LONG_REPLY
        conversation = httpx.get(f"{stack.tts.http_url}/v1/conversations/{complete['conversation_id']}").json()
        assert conversation["turns"] == [
            {"user": transcripts[0]["text"].strip(), "assistant": heard, "interrupted": True},
            {"user": transcripts[1]["text"].strip(), "assistant": SHORT_REPLY, "interrupted": False},
        ]
        history = [m["content"] for m in ollama.chat_requests[-1]["messages"][-3:-1]]
        assert history == [transcripts[0]["text"].strip(), heard]
        # The status panel marks the cut turn and shows the second one's stages.
        assert "(cut)" in page.inner_text("#latency thead th[data-turn='1']")
        assert page.inner_text("#latency-rows tr[data-stage='tts_ttfa'] td[data-turn='2']").endswith(("ms", " s"))
        page.click("#mic")
