"""The dashboard's Voices panel in a real Chromium, against the real TTS service and a real HTTP double of
Piper's voice repository: the voices with their details, a catalog download watched on its progress bar,
an upload, Preview, Make default and Delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Stack, open_page
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_catalog import PiperCatalogDouble
from tests.fixtures.piper_voice import build_piper_voice

pytestmark = pytest.mark.browser

VOICE = "en_US-test-medium"
NEW = "en_GB-alba-medium"
UPLOADED = "en_GB-mine-low"


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[PiperCatalogDouble]:
    double = PiperCatalogDouble(tmp_path / "repository", [NEW]).start()
    yield double
    double.behaviour.release.set()
    double.stop()


def row(page: Any, voice_id: str) -> str:
    return f"#voice-rows tr[data-voice='{voice_id}']"


def test_the_voices_panel_lists_downloads_uploads_previews_and_deletes(
    start_stack: Any, browser: Any, ollama: OllamaDouble, repository: PiperCatalogDouble, tmp_path: Path
) -> None:
    piper = {"catalog_url": f"{repository.url}/voices.json", "download_base_url": f"{repository.url}/"}
    stack: Stack = start_stack(llm_url=ollama.url, piper=piper)
    repository.behaviour.hold.add(f"{NEW}.onnx")
    files = {path.rsplit("/", 1)[-1]: len(data) for path, data in repository.files.items()}
    held_at = files[f"{NEW}.onnx.json"] + files[f"{NEW}.onnx"] // 2
    model = build_piper_voice(tmp_path / "upload", UPLOADED)
    with open_page(browser, stack.url, "voices_panel") as watch:
        page = watch.page
        page.on("dialog", lambda dialog: dialog.accept())
        local = page.wait_for_selector(row(page, f"piper:{VOICE}"))
        assert local.get_attribute("data-default") == "true"
        assert [cell.inner_text() for cell in local.query_selector_all("td")][:4] == [
            f"{VOICE}default", "piper", "en_US · medium", "local"
        ]
        assert local.query_selector("[data-action='delete']") is None  # a voice put there by hand stays

        page.click("#catalog-open")
        page.wait_for_selector(f"#catalog-rows tr[data-catalog='{NEW}']").query_selector("[data-action='download']").click()
        page.wait_for_selector(f"#download-progress[data-bytes='{held_at}']")
        assert page.query_selector(row(page, f"piper:{NEW}")) is None  # no half voice is listed
        repository.behaviour.release.set()
        page.wait_for_selector(row(page, f"piper:{NEW}"))
        assert page.get_attribute("#download-progress", "data-state") == "done"
        assert page.inner_text("#download-label") == f"{NEW} is installed."
        assert page.inner_text(f"#catalog-rows tr[data-catalog='{NEW}'] button") == "Installed"
        assert page.query_selector(f"#voice option[value='{NEW}']") is not None  # the Speak panel's list too

        page.click("summary:text('Add a voice')")
        page.fill("#upload-name", UPLOADED)
        page.set_input_files("#upload-model", str(model))
        page.set_input_files("#upload-config", f"{model}.json")
        page.click("#voices-upload button[type='submit']")
        uploaded = page.wait_for_selector(row(page, f"piper:{UPLOADED}"))
        assert "uploaded" in uploaded.inner_text()

        uploaded.query_selector("[data-action='preview']").click()
        page.wait_for_selector(f"#voices-audio[data-voice='piper:{UPLOADED}']", state="attached")
        assert page.inner_text("#voices-state").startswith(f"{UPLOADED} (piper): ")

        page.click(f"{row(page, f'piper:{NEW}')} [data-action='default']")
        page.wait_for_selector(f"{row(page, f'piper:{NEW}')}[data-default='true']")
        page.click(f"{row(page, f'piper:{UPLOADED}')} [data-action='delete']")
        page.wait_for_selector(row(page, f"piper:{UPLOADED}"), state="detached")
        assert page.inner_text("#voices-state") == f"{UPLOADED} was deleted."
        assert watch.errors == []
    voices = httpx.get(f"{stack.tts.http_url}/v1/voices").json()["voices"]
    assert [(v["name"], v["origin"], v["default"]) for v in voices] == [(NEW, "downloaded", True), (VOICE, "local", False)]
