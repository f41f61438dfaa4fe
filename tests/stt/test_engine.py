"""The faster-whisper engine: device and compute-type choice, model resolution, transcription."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import PROJECT_ROOT
from core.logging import configure_logging
from stt.engine import (
    ModelLoadError,
    WhisperEngine,
    choose_compute_type,
    choose_device,
    nvidia_dll_dirs,
    resolve_model_path,
)
from tests.fixtures.speech import make_speech

CPU_TYPES = {"int8", "int8_float32", "float32", "int16"}
GPU_TYPES = {"float16", "int8_float16", "int8", "float32", "bfloat16", "int8_bfloat16", "int8_float32"}


@pytest.mark.parametrize(
    ("requested", "devices", "expected"),
    [("auto", 0, "cpu"), ("auto", 2, "cuda"), ("cpu", 2, "cpu"), ("cuda", 0, "cuda")],
)
def test_choose_device(requested: str, devices: int, expected: str) -> None:
    device, reason = choose_device(requested, devices)
    assert device == expected
    assert reason


def test_auto_compute_type_is_float16_on_cuda_and_int8_on_cpu() -> None:
    assert choose_compute_type("auto", "cuda", GPU_TYPES) == "float16"
    assert choose_compute_type("auto", "cpu", CPU_TYPES) == "int8"


def test_auto_compute_type_degrades_to_what_the_device_supports() -> None:
    assert choose_compute_type("auto", "cuda", {"float32", "int8_float32"}) == "float32"


def test_unsupported_explicit_compute_type_names_the_supported_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"float16.*not supported on cpu.*int8"):
        choose_compute_type("float16", "cpu", CPU_TYPES)


def test_nvidia_dll_dirs_finds_the_bin_folder_of_each_wheel(tmp_path: Path) -> None:
    for package in ("cublas", "cudnn"):
        (tmp_path / "site" / "nvidia" / package / "bin").mkdir(parents=True)
    (tmp_path / "site" / "nvidia" / "cuda_nvrtc" / "lib").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    found = nvidia_dll_dirs([tmp_path / "site", tmp_path / "other"])
    assert found == [tmp_path / "site/nvidia/cublas/bin", tmp_path / "site/nvidia/cudnn/bin"]


def test_a_model_directory_is_used_as_is(whisper_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_path(str(whisper_model_dir), tmp_path, PROJECT_ROOT) == whisper_model_dir


def test_a_directory_without_model_bin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model.bin"):
        resolve_model_path(str(tmp_path / "empty"), tmp_path, PROJECT_ROOT)


def test_an_unknown_name_lists_the_known_sizes(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'huge'.*known size.*tiny.*large-v3"):
        resolve_model_path("huge", tmp_path, PROJECT_ROOT)


def test_a_size_already_downloaded_into_models_dir_loads_without_the_network(
    whisper_model_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    for name in ("model.bin", "tokenizer.json", "config.json"):
        (target / name).write_bytes((whisper_model_dir / name).read_bytes())
    assert resolve_model_path("tiny", tmp_path, PROJECT_ROOT) == target


def test_a_failed_download_says_what_to_do(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is set by conftest, so the real download code fails at once instead of hanging.
    with pytest.raises(ModelLoadError, match=r"could not download Whisper model 'tiny'.*local CTranslate2 model directory") as error:
        resolve_model_path("tiny", tmp_path / "models", PROJECT_ROOT)
    message = str(error.value)
    assert ".." not in message
    assert message.count("Check the network") == 1 and "ct2-transformers-converter" in message


def test_load_reports_device_and_compute_type(make_settings) -> None:
    settings = make_settings(stt={"device": "cpu"})
    models_dir = settings.resolve_path(settings.stt.models_dir)
    engine = WhisperEngine.load(settings.stt, models_dir, PROJECT_ROOT)
    assert (engine.loaded.device, engine.loaded.compute_type) == ("cpu", "int8")
    assert engine.loaded.load_seconds > 0
    assert not models_dir.exists(), "a local model directory must not trigger a download"


def test_explicit_cuda_without_a_gpu_fails_with_the_reason(make_settings) -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count():
        pytest.skip("this machine has a CUDA device")
    settings = make_settings(stt={"device": "cuda"})
    with pytest.raises(ModelLoadError, match="on cuda"):
        WhisperEngine.load(settings.stt, settings.resolve_path(settings.stt.models_dir), PROJECT_ROOT)


def test_transcribe_returns_structured_results(make_settings) -> None:
    settings = make_settings()
    engine = WhisperEngine.load(settings.stt, settings.resolve_path(settings.stt.models_dir), PROJECT_ROOT)
    audio = make_speech("Set a timer for ten minutes.", lead_silence_s=0.2, trail_silence_s=0.2)
    result = engine.transcribe(audio, language="en")
    assert result.language == "en"
    assert result.duration == pytest.approx(len(audio) / 16000, abs=1e-3)
    assert result.transcribe_seconds > 0
    assert result.real_time_factor == pytest.approx(result.transcribe_seconds / result.duration)
    assert all(0 <= s.start <= s.end <= result.duration + 0.5 for s in result.segments)
    assert result.text == " ".join(s.text for s in result.segments if s.text).strip()


def test_language_is_detected_when_not_given(make_settings) -> None:
    settings = make_settings()
    engine = WhisperEngine.load(settings.stt, settings.resolve_path(settings.stt.models_dir), PROJECT_ROOT)
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    result = engine.transcribe(np.zeros(16000, dtype=np.float32) + 0.01, language=None)
    assert result.language in _LANGUAGE_CODES
    assert 0.0 <= result.language_probability <= 1.0


def test_should_stop_ends_transcription_after_the_first_segment(make_settings) -> None:
    settings = make_settings(stt={"max_utterance_seconds": 30, "max_buffer_seconds": 60})
    engine = WhisperEngine.load(settings.stt, settings.resolve_path(settings.stt.models_dir), PROJECT_ROOT)
    audio = make_speech("One two three four five six seven eight nine ten.", trail_silence_s=0.2)
    # 70 s of audio spans three 30 s windows; stopping at once must leave at most one window's segments.
    long_audio = np.concatenate([audio] * 20)[: 16000 * 70]
    full = engine.transcribe(long_audio, language="en")
    stopped = engine.transcribe(long_audio, language="en", should_stop=lambda: True)
    assert len(full.segments) == 3
    assert len(stopped.segments) == 1 and stopped.segments[0].end <= 30.0


def test_auto_device_falls_back_to_cpu_when_cuda_cannot_be_used(
    make_settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count():
        pytest.skip("this machine has a working CUDA device")
    # Claim a CUDA device on a machine without one: the real CUDA load then fails for real,
    # which is the path a user with a broken driver or missing cuDNN takes.
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    settings = make_settings(stt={"device": "auto"})
    configure_logging(settings.logging, "stt")
    engine = WhisperEngine.load(settings.stt, settings.resolve_path(settings.stt.models_dir), PROJECT_ROOT)
    assert (engine.loaded.device, engine.loaded.compute_type) == ("cpu", "int8")
    warnings = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "cuda_unusable_falling_back_to_cpu"]
    assert len(warnings) == 1 and warnings[0]["error"]
