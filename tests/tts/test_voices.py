"""Voice names, the Piper voices folder, and downloading the missing default voice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import Settings
from tests.fixtures.piper_voice import build_piper_voice
from tts.engines.espeak import EspeakEngine
from tts.engines.piper import PiperEngine
from core.errors import InvalidVoiceName, VoiceNotFound
from tts.engines import EngineStartError
from tts.voices import check_voice_name, ensure_piper_voice, list_piper_voices

BAD_NAMES = [
    "../en_US-test-medium",
    "../../etc/passwd",
    "/etc/passwd",
    "voices/en_US-test-medium",
    "..",
    ".",
    "a..b",
    ".hidden",
    "trailing.",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "spa ce",
    "%2e%2e",
    "~root",
    "x" * 101,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_non_plain_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidVoiceName, match="not a plain voice name"):
        check_voice_name(name)


@pytest.mark.parametrize("name", ["en_US-lessac-medium", "de", "en-us+f3", "voice.v2", "A_b-9"])
def test_plain_names_pass(name: str) -> None:
    assert check_voice_name(name) == name


class FileSystemSpy:
    """Records every stat, directory listing and open, to prove a refused name touched nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, object]] = []
        for name in ("stat", "lstat", "scandir", "listdir", "open"):
            original = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, original))
        import builtins
        import io

        monkeypatch.setattr(builtins, "open", self._wrap("builtins.open", builtins.open))
        monkeypatch.setattr(io, "open", self._wrap("io.open", io.open))

    def _wrap(self, name: str, original):  # type: ignore[no-untyped-def]
        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls.append((name, args[0] if args else None))
            return original(*args, **kwargs)

        return spy


@pytest.mark.parametrize("engine_name", ["piper", "espeak"])
def test_path_like_voice_names_never_touch_the_file_system(
    engine_name: str, voices_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(tts={"voices_dir": str(voices_dir), "voice": None})
    engine = PiperEngine(settings) if engine_name == "piper" else EspeakEngine(settings)
    engine.voices()  # warm any caches so the spy sees only what resolve_voice does
    spy = FileSystemSpy(monkeypatch)
    for name in BAD_NAMES:
        with pytest.raises(InvalidVoiceName):
            engine.resolve_voice(name)
    assert spy.calls == []
    # The spy does see file access when there is some: a plain unknown name is looked up.
    if engine_name == "piper":
        with pytest.raises(VoiceNotFound):
            engine.resolve_voice("en_US-missing-medium")
        assert spy.calls


def test_listing_needs_model_and_config(voices_dir: Path) -> None:
    (voices_dir / "half-voice.onnx").write_bytes(b"x")
    (voices_dir / "bad name.onnx").write_bytes(b"x")
    (voices_dir / "bad name.onnx.json").write_text("{}")
    (voices_dir / "notes.txt").write_text("")
    assert list_piper_voices(voices_dir) == ["en_US-test-medium"]
    assert list_piper_voices(voices_dir / "missing") == []


def test_present_voice_is_not_downloaded(voices_dir: Path) -> None:
    calls: list[str] = []
    ensure_piper_voice(voices_dir, "en_US-test-medium", download=True, downloader=lambda n, d: calls.append(n))
    assert calls == []


def test_missing_voice_is_downloaded_into_place(tmp_path: Path) -> None:
    """The downloader is injected: a real download must not depend on the test machine's network.
    This one writes what piper.download_voices writes (NAME.onnx and NAME.onnx.json) into its folder."""
    target = tmp_path / "voices"
    seen: list[tuple[str, Path]] = []

    def downloader(name: str, folder: Path) -> None:
        seen.append((name, folder))
        build_piper_voice(folder, name)

    ensure_piper_voice(target, "en_US-fresh-medium", download=True, downloader=downloader)
    assert seen[0][0] == "en_US-fresh-medium"
    assert seen[0][1].parent == target and seen[0][1] != target  # fetched into a staging folder
    assert list_piper_voices(target) == ["en_US-fresh-medium"]
    assert sorted(p.name for p in target.iterdir()) == ["en_US-fresh-medium.onnx", "en_US-fresh-medium.onnx.json"]


def test_failed_download_leaves_no_partial_file_and_says_how_to_fix(tmp_path: Path) -> None:
    target = tmp_path / "voices"

    def downloader(name: str, folder: Path) -> None:
        (folder / f"{name}.onnx").write_bytes(b"half a model")
        raise OSError("connection reset by peer")

    with pytest.raises(EngineStartError) as error:
        ensure_piper_voice(target, "en_US-fresh-medium", download=True, downloader=downloader)
    message = str(error.value)
    assert "connection reset by peer" in message
    assert f"put en_US-fresh-medium.onnx and en_US-fresh-medium.onnx.json into {target}" in message
    assert list(target.iterdir()) == []


def test_real_piper_downloader_failure_is_reported(tmp_path: Path) -> None:
    """Piper's own downloader, pointed at a URL where nothing listens (so no network is needed)."""
    import piper.download_voices as downloads

    original = downloads.URL_FORMAT
    downloads.URL_FORMAT = "http://127.0.0.1:9/{lang_code}-{voice_name}-{voice_quality}{extension}"
    try:
        with pytest.raises(EngineStartError, match="could not download Piper voice 'en_US-lessac-medium'"):
            ensure_piper_voice(tmp_path, "en_US-lessac-medium", download=True)
    finally:
        downloads.URL_FORMAT = original
    assert list(tmp_path.iterdir()) == []


def test_download_off_says_how_to_get_the_voice(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError, match="tts.piper.download is off.*python -m piper.download_voices"):
        ensure_piper_voice(tmp_path, "en_US-lessac-medium", download=False)
