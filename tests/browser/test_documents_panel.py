"""The dashboard's Documents panel in a real Chromium: blocks built in the page, rendered as a job on the
real service, the progress bar filled, the result playable and offered for download."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import open_page
from tests.browser.test_dashboard import wait_healthy
from tests.fixtures.ollama_double import OllamaDouble


def test_blocks_render_as_a_job_and_play(start_stack: Any, browser: Any, ollama: OllamaDouble, tmp_path: Path) -> None:
    stack = start_stack(llm_url=ollama.url, data_dir=str(tmp_path / "data"))
    with open_page(browser, stack.url, "documents_panel") as watch:
        page = watch.page
        wait_healthy(page)
        page.click("#doc-add-block")
        page.fill(".doc-block:nth-child(1) .doc-block-text", "Hello there.")
        page.fill(".doc-block:nth-child(1) .doc-block-pause", "500")
        page.click("#doc-add-block")
        page.fill(".doc-block:nth-child(2) .doc-block-text", '<speak>A second <break time="250ms"/>block.</speak>')
        page.select_option("#doc-format", "wav")
        page.click("#doc-submit")
        page.wait_for_selector("#doc-form[data-state='done']", timeout=30_000)
        progress = page.eval_on_selector("#doc-progress", "(node) => node.value")
        duration = page.wait_for_function(
            "() => { const audio = document.getElementById('doc-audio'); return audio.readyState >= 1 && audio.duration; }"
        ).json_value()
        link = page.eval_on_selector("#doc-download", "(node) => [node.getAttribute('href'), node.download]")
        state = page.inner_text("#doc-state")
        watch.screenshot("documents_panel_done")
    [job] = httpx.get(f"{stack.url}v1/speech/jobs").json()["jobs"]
    audio = httpx.get(f"{stack.url}v1/speech/jobs/{job['id']}/audio").content
    with wave.open(io.BytesIO(audio)) as reader:
        seconds = reader.getnframes() / reader.getframerate()
    assert job["state"] == "done" and job["progress"]["blocks"] == 2
    assert progress == 1
    assert abs(duration - seconds) < 0.001  # the page plays the job's own audio, whole
    assert link[0].startswith("blob:") and link[1] == "speech.wav"
    assert state.startswith(f"Done: {job['progress']['audio_s']:.1f} s of audio")
