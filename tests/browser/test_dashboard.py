"""The dashboard in a real Chromium: fake microphone -> AudioWorklet -> /ws/stt -> reply -> playback.

Every test leaves a screenshot in test-artifacts/. The services are the real apps (toy Whisper model,
synthetic Piper voice, Ollama double), so what the page shows is what the services said.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.browser.conftest import SpeechFile, Stack, open_page, save_docs_screenshot
from tests.fixtures.ollama_double import OllamaDouble, down_url

pytestmark = pytest.mark.browser

FRAME_SAMPLES = 640  # the page sends 40 ms frames at 16 kHz
LOUD = 0.02  # espeak speech peaks near 1.0; digital silence is exactly 0
LEADING_AND_ENDPOINT_S = 2.0  # speech pad before + endpoint silence after (0.3 s + 0.6 s by default) with room


def watch_reply_audio(page: Any) -> None:
    """Records the page's "playback" events (Web Audio: chunks scheduled, first sound, natural end, stop),
    so a test sees playback start and finish, and how much microphone audio was sent meanwhile."""
    page.evaluate(
        """() => {
            const sent = () => Number(document.getElementById("audio-stats").dataset.samples || 0);
            const r = window.__reply = { playing: 0, ended: 0, stopped: 0, durations: [], sentAtStart: [], sentAtEnd: [], events: [] };
            document.addEventListener("playback", ({ detail }) => {
                r.events.push(detail);
                if (detail.type === "playing") { r.playing++; r.sentAtStart.push(sent()); }
                else if (detail.type === "ended") { r.ended++; r.durations.push(detail.seconds); r.sentAtEnd.push(sent()); }
                else if (detail.type === "stopped") { r.stopped++; r.sentAtEnd.push(sent()); }
            });
        }"""
    )


def js_ms(milliseconds: float) -> str:
    """What the page's ms() shows for a duration."""
    return f"{math.floor(milliseconds + 0.5)} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.2f} s"


def latency_cell(page: Any, stage: str, turn: int) -> str:
    return page.inner_text(f"#latency-rows tr[data-stage='{stage}'] td[data-turn='{turn}']")


def wait_healthy(page: Any) -> None:
    page.wait_for_selector("#pill-stt[data-state='ok']")
    page.wait_for_selector("#pill-tts[data-state='ok']")


def loud_span(audio: np.ndarray, rate: int) -> float:
    """Seconds from the first to the last sample above LOUD: the length of the speech in a stream."""
    loud = np.flatnonzero(np.abs(audio) > LOUD)
    assert loud.size, "the audio is silent"
    return (loud[-1] - loud[0] + 1) / rate


def test_hands_free_turn_streams_16k_pcm_and_plays_the_reply(
    start_stack: Any, browser: Any, ollama: OllamaDouble, speech_file: SpeechFile
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "talk_hands_free") as watch:
        page = watch.page
        wait_healthy(page)
        watch_reply_audio(page)
        page.click("#mic")

        user = page.wait_for_selector(".turn.user:not(.partial)")
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)
        page.wait_for_function("() => window.__reply.ended === 1")

        # What the service received: 16 kHz mono PCM16 in 40 ms frames, carrying the speech at its true length.
        wire = stack.wire
        assert wire.audio_frames, "no audio reached the STT service"
        assert {len(frame) for frame in wire.audio_frames} == {FRAME_SAMPLES * 2}
        received = wire.pcm()
        expected_s = loud_span(speech_file.speech, 16000)
        # At any other rate the same speech would span a different number of samples (x2.76 at 44.1 kHz).
        assert loud_span(received, 16000) == pytest.approx(expected_s, rel=0.05)
        assert float(np.sqrt(np.mean(received**2))) > 0.01
        [transcript] = wire.of_type("transcript")
        assert transcript["reason"] == "silence"
        assert expected_s < transcript["duration"] < expected_s + LEADING_AND_ENDPOINT_S
        # The page showed the service's words and asked Ollama with exactly them.
        assert user.query_selector(".words").inner_text() == (transcript["text"].strip() or "(nothing recognisable)")
        assert ollama.chat_requests[-1]["messages"][-1]["content"] == transcript["text"].strip()

        # The reply came over /ws/tts, was shown and played from start to end, chunk by chunk.
        tts_wire = stack.tts_wire
        assert tts_wire.client_messages == [
            {"type": "text_input", "text": transcript["text"].strip(), "reply": True, "voice": "en_US-test-medium"}
        ]
        [complete] = tts_wire.of_type("generation_complete")
        chunks = tts_wire.of_type("audio_chunk")
        assert len(chunks) == complete["chunks"] == len(tts_wire.server_frames) >= 1
        assistant = page.query_selector(".turn.assistant")
        assert assistant.query_selector(".words").inner_text() == complete["text"] == ollama.behaviour.reply
        reply = page.evaluate("window.__reply")
        assert reply["playing"] == 1 and reply["ended"] == 1 and reply["stopped"] == 0
        scheduled = [e for e in reply["events"] if e["type"] == "chunk"]
        assert [e["samples"] for e in scheduled] == [c["samples"] for c in chunks]
        assert {e["sampleRate"] for e in scheduled} == {22050}
        assert reply["durations"][0] == pytest.approx(complete["audio_seconds"], abs=0.001)
        # Barge-in is on by default: the microphone stays live (with echo cancellation) while the assistant speaks.
        assert page.is_checked("#barge-in")
        assert reply["sentAtEnd"][0] > reply["sentAtStart"][0] > 0
        assert page.evaluate("window.dashboard.state.talk.mic.stream.getAudioTracks()[0].getSettings().echoCancellation") is True

        # Status: both services healthy, and the turn's latencies by stage, as the services measured them.
        assert page.inner_text("#svc-stt [data-role='badge']") == "healthy"
        assert page.inner_text("#svc-tts [data-role='badge']") == "healthy"
        stt_timings, tts_timings = transcript["timings"], complete["timings"]
        assert latency_cell(page, "stt_final", 1) == js_ms(stt_timings["speech_end_to_transcript_s"] * 1000)
        assert latency_cell(page, "stt_transcribe", 1) == js_ms(stt_timings["transcribe_s"] * 1000)
        assert latency_cell(page, "stt_rtf", 1).endswith("×")
        assert latency_cell(page, "llm_ttft", 1) == js_ms(tts_timings["llm"]["time_to_first_token_s"] * 1000)
        assert latency_cell(page, "llm_rate", 1).endswith(" tok/s")
        assert latency_cell(page, "tts_ttfa", 1) == js_ms(tts_timings["tts"]["time_to_first_audio_s"] * 1000)
        assert latency_cell(page, "tts_rtf", 1).endswith("×")
        assert latency_cell(page, "queue_stt", 1) == js_ms(stt_timings["queue_wait_s"] * 1000)
        assert latency_cell(page, "queue_tts", 1) == js_ms(tts_timings["queue"]["wait_s"] * 1000)
        assert latency_cell(page, "page_first_audio", 1).endswith(("ms", " s"))
        # A typed message takes the same path to the reply.
        ollama.behaviour.reply = "It is sunny in Berlin today, about 21 degrees."
        page.fill("#type-text", "And what should I wear?")
        page.press("#type-text", "Enter")
        page.wait_for_function("() => window.__reply.ended === 2")
        assert page.query_selector_all(".turn.assistant .words")[-1].inner_text() == ollama.behaviour.reply
        # A typed turn has no speech-to-text stage; the others are measured.
        assert latency_cell(page, "stt_final", 2) == "–" and latency_cell(page, "stt_transcribe", 2) == "–"
        assert latency_cell(page, "tts_ttfa", 2).endswith(("ms", " s"))
        assert page.inner_text("#latency thead th[data-turn='2']") == "#2"  # newest first

        page.click("#mic")  # stop: the socket closes after the last frame
        page.wait_for_selector("#talk-state[data-state='off']")
        assert wire.client_messages[-1] == {"type": "end"}  # stopping flushes the last words
        samples = int(page.get_attribute("#audio-stats", "data-samples"))
        _wait(lambda: len(stack.wire.pcm()) == samples)  # the page counts what the service received, frame for frame
        assert "streamed over /ws/tts (connected)" in page.inner_text("#svc-tts")
        save_docs_screenshot(watch.screenshot("main_screen"))


def problems(page: Any) -> list[str]:
    return [item.inner_text() for item in page.query_selector_all("#problem-list .problem")]


def test_stt_down_turns_start_talking_off_and_typing_still_gets_an_answer(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url, stt_running=False)
    port = stack.settings.stt.port
    with open_page(browser, stack.url, "stt_down") as watch:
        page = watch.page
        page.wait_for_selector("#pill-stt[data-state='down']")
        reason = page.inner_text("#svc-stt [data-role='reason']")
        assert reason.startswith(f"The speech-to-text service is not answering at http://127.0.0.1:{port} (")
        assert reason.endswith("Start it (make run starts both services) or check stt.host and stt.port.")
        # Start talking is off, and says why beside it: the headline, then the service's own words in the hint.
        assert page.is_disabled("#mic")
        assert page.inner_text("#mic-label") == "Start talking"
        assert page.get_attribute("#talk-state", "data-state") == "unavailable"
        assert page.inner_text("#talk-state") == "The speech-to-text service is not reachable"
        assert page.inner_text("#mic-hint") == f"{reason} Start talking comes back once speech to text is healthy."
        assert page.get_attribute("#mic", "title") == f"The speech-to-text service is not reachable: {reason}"
        watch_reply_audio(page)

        # The rest of the page still works: a typed message gets a spoken answer.
        page.fill("#type-text", "Are you there?")
        page.press("#type-text", "Enter")
        page.wait_for_selector(".turn.assistant[data-state='played']")
        assert ollama.chat_requests[-1]["messages"][-1]["content"] == "Are you there?"
        assert page.evaluate("window.__reply.ended") == 1
        # Once the assistant is quiet again, the line beside the button says why it is off, not "Microphone off".
        page.wait_for_selector("#talk-state[data-state='unavailable']")
        assert page.inner_text("#talk-state") == "The speech-to-text service is not reachable"
        assert page.is_disabled("#mic")


def test_stt_model_that_failed_to_load_turns_start_talking_off_until_it_is_loaded(
    start_stack: Any, browser: Any, ollama: OllamaDouble, whisper_model_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    stack: Stack = start_stack(llm_url=ollama.url, stt={"model": str(missing), "model_retry_s": 0.2}, stt_model_loads=False)
    assert stack.stt is not None
    error = httpx.get(f"{stack.stt.http_url}/health").json()["error"]
    assert error == f"stt.model directory {missing} has no model.bin (is it a CTranslate2 model?)"
    with open_page(browser, stack.url, "stt_degraded") as watch:
        page = watch.page
        page.wait_for_selector("#pill-stt[data-state='warn']")
        assert page.inner_text("#svc-stt [data-role='badge']") == "degraded"
        assert page.is_disabled("#mic")
        assert page.get_attribute("#talk-state", "data-state") == "unavailable"
        assert page.inner_text("#talk-state") == "Speech to text is degraded"
        assert page.inner_text("#mic-hint") == f"{error} Start talking comes back once speech to text is healthy."
        assert page.get_attribute("#mic", "title") == f"Speech to text is degraded: {error}"
        # Push-to-talk is off the same way; its label still says what the button does.
        page.click("label[for='mode-ptt']")
        assert page.is_disabled("#mic") and page.inner_text("#mic-label") == "Hold to talk"
        assert page.inner_text("#talk-state") == "Speech to text is degraded"
        assert page.inner_text("#mic-hint") == f"{error} Start talking comes back once speech to text is healthy."
        page.click("label[for='mode-handsfree']")

        # The model is put in place: the service loads it, at the next poll Start talking is back, and it works.
        load_the_model(missing, whisper_model_dir)
        page.wait_for_selector("#pill-stt[data-state='ok']")
        assert page.is_enabled("#mic")
        assert page.get_attribute("#mic", "title") is None
        assert page.get_attribute("#talk-state", "data-state") == "off"
        assert page.inner_text("#talk-state") == "Microphone off"
        assert page.inner_text("#mic-hint") == (
            "Press to start. The assistant listens until you press again and answers each time you pause."
        )
        page.click("#mic")
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)
        [transcript] = stack.wire.of_type("transcript")
        user = page.query_selector(".turn.user:not(.partial) .words").inner_text()
        assert user == (transcript["text"].strip() or "(nothing recognisable)")
        page.click("#mic")


def load_the_model(missing: Path, model_dir: Path) -> None:
    """What a user does: put the model where stt.model points. The service tries again by itself
    (stt.model_retry_s) and loads it with the real engine."""
    for file in model_dir.iterdir():
        shutil.copy(file, missing / file.name)


def test_stt_socket_that_cannot_connect_is_explained(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    # /health (asked through the TTS service) is fine, but the page's STT address (?stt=) answers nothing.
    stack: Stack = start_stack(llm_url=ollama.url)
    port = int(down_url().rsplit(":", 1)[1])
    with open_page(browser, f"{stack.url}?stt=ws://127.0.0.1:{port}/ws/stt", "stt_socket_unreachable") as watch:
        page = watch.page
        wait_healthy_stt(page)
        page.click("#mic")
        page.wait_for_selector("#talk-state[data-state='error']")
        assert page.inner_text("#talk-state") == "The speech-to-text service is not reachable"
        assert any(f"Nothing answered at ws://127.0.0.1:{port}/ws/stt" in text for text in problems(page))
        assert page.get_attribute("#mic", "aria-pressed") == "false"
        assert page.is_enabled("#mic")  # ready to try again: the service itself is healthy


def test_socket_closed_by_the_server_shows_its_reason(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    stack: Stack = start_stack(llm_url=ollama.url, stt={"max_connections": 1})
    assert stack.stt is not None
    with connect(f"{stack.stt.ws_url}/ws/stt") as other_client, open_page(browser, stack.url, "socket_closed") as watch:
        assert '"ready"' in other_client.recv(timeout=10)
        page = watch.page
        page.click("#mic")
        page.wait_for_selector("#talk-state[data-state='error']")
        assert stack.wire.closes == [(1013, "too many connections")]
        [problem] = problems(page)
        assert "Reason: too many connections (code 1013: the service is busy, try again later)" in problem
        # Usable again once the other client leaves; here without barge-in ("Let me interrupt" off): the
        # microphone is not fed while the assistant thinks and speaks, as before streaming.
        other_client.close()
        page.uncheck("#barge-in")
        watch_reply_audio(page)
        page.click("#mic")
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)
        reply = page.evaluate("window.__reply")
        assert reply["ended"] == 1 and reply["sentAtStart"][0] == reply["sentAtEnd"][0] > 0
        assert page.evaluate("window.dashboard.state.talk.mic.stream.getAudioTracks()[0].getSettings().echoCancellation") is False


def test_ollama_down_says_so_and_speaks_the_words_instead(start_stack: Any, browser: Any) -> None:
    llm_url = down_url()
    stack: Stack = start_stack(llm_url=llm_url)
    with open_page(browser, stack.url, "ollama_down") as watch:
        page = watch.page
        page.wait_for_selector("#pill-llm[data-state='down']")
        wait_healthy_stt(page)
        watch_reply_audio(page)
        page.click("#mic")

        failed = page.wait_for_selector(".turn.assistant[data-state='failed']", timeout=30_000)
        assert page.inner_text("#pill-llm [data-role='name']") == "Ollama"
        assert failed.query_selector(".words").inner_text() == f"Ollama is not running at {llm_url}"
        assert llm_url in failed.query_selector(".meta").inner_text()  # the service's own advice
        assert any(text.startswith(f"Ollama is not running at {llm_url}") for text in problems(page))
        [transcript] = stack.wire.of_type("transcript")

        failed.query_selector("button:text('Speak it instead')").click()
        page.wait_for_selector(".turn.assistant[data-state='played']")
        spoken = page.query_selector(".turn.assistant")
        assert spoken.query_selector(".words").inner_text() == transcript["text"].strip()
        assert page.evaluate("window.__reply.ended") == 1
        page.click("#mic")


def test_the_llm_server_is_named_by_its_provider(start_stack: Any, browser: Any) -> None:
    llm_url = down_url()
    stack: Stack = start_stack(llm_url=llm_url, llm={"provider": "openai"})
    with open_page(browser, stack.url, "openai_provider_down") as watch:
        page = watch.page
        page.wait_for_selector("#pill-llm[data-state='down']")
        assert page.inner_text("#pill-llm [data-role='name']") == "OpenAI-compatible server"
        assert f"OpenAI-compatible server not reachable at {llm_url}" in page.inner_text("#svc-tts")
        page.fill("#type-text", "Hello")
        page.press("#type-text", "Enter")
        failed = page.wait_for_selector(".turn.assistant[data-state='failed']")
        assert failed.query_selector(".words").inner_text() == f"OpenAI-compatible server is not running at {llm_url}"
        [problem] = problems(page)  # the status poll's report and the failed turn's are one entry
        assert problem.startswith(f"OpenAI-compatible server is not running at {llm_url}")


def test_microphone_denied_is_explained(start_stack: Any, browser_without_mic_permission: Any, ollama: OllamaDouble) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser_without_mic_permission, stack.url, "microphone_denied") as watch:
        page = watch.page
        page.click("#mic")
        page.wait_for_selector("#talk-state[data-state='error']")
        assert page.inner_text("#talk-state") == "Microphone access was blocked"
        [problem] = problems(page)
        assert "Allow the microphone for this page" in problem
        assert not stack.wire.audio_frames and stack.stt is not None
        assert stack.stt.app.state.sockets.count == 0  # no socket was left open
        page.fill("#type-text", "Hello")
        page.press("#type-text", "Enter")
        page.wait_for_selector(".turn.assistant[data-state='played']")


def test_speak_panel_plays_downloads_and_explains_bad_input(
    start_stack: Any, browser: Any, ollama: OllamaDouble
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url, max_text_length=80)
    with open_page(browser, stack.url, "speak_panel") as watch:
        page = watch.page
        page.wait_for_selector("#voice option[value='en_US-test-medium']", state="attached")
        page.fill("#speak-text", "Good morning. The coffee is ready.")
        page.fill("#speed", "1.5")
        page.click("#speak-play")
        page.wait_for_function("() => { const a = document.getElementById('speak-audio'); return !a.hidden && a.ended; }")
        href = page.get_attribute("#speak-download", "href")
        assert href.startswith("blob:")
        with page.expect_download() as download_info:
            page.click("#speak-download")
        wav = download_info.value.path().read_bytes()
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
        assert page.get_attribute("#speak-download", "download") == "speech-en_US-test-medium.wav"

        # Text over tts.max_text_length: a clear message, no request.
        requests_before = len(ollama.chat_requests)
        page.fill("#speak-text", "word " * 20)
        assert page.inner_text("#speak-count") == "100 / 80"
        page.click("#speak-play")
        assert "The text is too long: It has 100 characters; the limit is 80" in page.inner_text("#speak-state")

        # A voice that is not there (say, deleted since the list was loaded): the service's 404 in words.
        page.evaluate("""() => document.getElementById('voice').add(new Option('en_GB-gone-low', 'en_GB-gone-low', true, true))""")
        page.fill("#speak-text", "Hello there.")
        page.click("#speak-play")
        page.wait_for_selector("#speak-state.error-text >> text=That voice is not available")
        assert "available voices: en_US-test-medium" in page.inner_text("#speak-state")
        page.wait_for_function("() => document.getElementById('voice').options.length === 1")  # the list was refreshed
        assert len(ollama.chat_requests) == requests_before
        page.click("#speak-play")  # and it works again
        page.wait_for_selector("#speak-state:not(.error-text)")


def test_settings_panel_shows_the_effective_configuration_without_secrets(
    start_stack: Any, browser: Any, ollama: OllamaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url, groq={"api_key": "gsk_do_not_show"})
    # /api/config reports the variables of the environment as it is now (the settings were made in code).
    monkeypatch.setenv("LOGGING__LEVEL", "warning")
    with open_page(browser, stack.url, "settings_panel") as watch:
        page = watch.page
        page.click("#settings summary")
        logging = ".config-section:has(h3:text-is('logging'))"
        level = page.wait_for_selector(f"{logging} tr.from-env:has(th:text-is('level')) td")
        assert level.inner_text() == "warning\nset by LOGGING__LEVEL"
        assert "set by environment variables (marked)" in page.inner_text("#config-source")
        row = page.wait_for_selector("#config-tables tr:has(th:text-is('groq.api_key'))")
        assert row.query_selector("td").inner_text() == "hidden"
        voice = page.query_selector("#config-tables tr:has(th:text-is('voice')) td")
        assert voice is not None
        port_row = page.query_selector(".config-section:has(h3:text-is('stt')) tr:has(th:text-is('port')) td")
        assert port_row.inner_text() == str(stack.settings.stt.port)
        assert "gsk_do_not_show" not in page.content()
        page.keyboard.press("Tab")  # the page stays keyboard-usable: focus lands on a visible control
        assert page.evaluate("document.activeElement !== document.body")


def test_push_to_talk_sends_end_on_release(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "push_to_talk") as watch:
        page = watch.page
        wait_healthy_stt(page)
        page.check("#mode-ptt")
        page.focus("#mic")
        page.keyboard.down(" ")
        page.wait_for_selector("#talk-state >> text=Listening")
        # Release mid-phrase: after 1.5 s of the file, long before the VAD's endpoint silence could end the utterance.
        _wait(lambda: len(stack.wire.audio_frames) * FRAME_SAMPLES >= 1.5 * 16000)
        page.keyboard.up(" ")
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)
        [transcript] = stack.wire.of_type("transcript")
        assert transcript["reason"] == "end"
        assert {"type": "end"} in stack.wire.client_messages
        page.click("#mic-off")


def test_insecure_origin_explains_how_to_get_a_secure_one(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    # A name of this machine the services do not know as theirs: served only once allowed (DNS rebinding).
    stack: Stack = start_stack(llm_url=ollama.url, security={"allowed_hosts": ["assistant.test"]})
    url = f"http://assistant.test:{stack.tts.port}/"
    with open_page(browser, url, "insecure_origin", viewport={"width": 390, "height": 844}) as watch:
        page = watch.page
        assert page.evaluate("typeof navigator.mediaDevices") == "undefined"
        notice = page.wait_for_selector("#secure-notice:not([hidden])")
        text = notice.inner_text()
        assert f"http://assistant.test:{stack.tts.port}" in text
        assert f"ssh -L {stack.tts.port}:localhost:{stack.tts.port} -L {stack.settings.stt.port}:localhost:{stack.settings.stt.port}" in text
        assert page.is_disabled("#mic")
        # The page derives the STT address from its own hostname and /api/config's port.
        assert page.get_attribute("#docs-stt", "href") == f"http://assistant.test:{stack.settings.stt.port}/docs"
        # Phone width: nothing sticks out sideways.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def wait_healthy_stt(page: Any) -> None:
    page.wait_for_selector("#pill-stt[data-state='ok']")


def _wait(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)

