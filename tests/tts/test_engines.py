"""Each engine behind the one interface: real Piper on a synthetic voice, real espeak-ng, Groq against a
local HTTP double of its API, XTTS with the coqui-tts model object replaced by a double."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from structlog.testing import capture_logs

from core.config import Settings
from core.errors import EngineAuth, EngineBusy, EngineError, VoiceNotFound
from tests.fixtures.groq_double import SAMPLE_RATE as GROQ_RATE
from tests.fixtures.groq_double import groq_double
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.fixtures.speech import write_wav
from tts.engines import EngineStartError, create_engine
from tts.engines.espeak import EspeakEngine
from tts.engines.groq import GroqEngine, pack_sentences
from tts.engines.piper import PiperEngine
from tts.engines.xtts import XttsEngine

VOICE = "en_US-test-medium"
TEXT = "Hello world. This is a test of the speech engine."


def piper(voices_dir: Path, **piper_settings: Any) -> PiperEngine:
    engine = PiperEngine(Settings(tts={"voices_dir": str(voices_dir), "voice": VOICE, "piper": piper_settings}))
    engine.start()
    return engine


def total(chunks: list[Any]) -> int:
    return sum(len(chunk.samples) for chunk in chunks)


# -- piper -----------------------------------------------------------------------------------------


def test_piper_output_length_is_exact(voices_dir: Path) -> None:
    engine = piper(voices_dir)
    chunks = list(engine.synthesize(TEXT, VOICE, 1.0))
    assert len(chunks) == 2  # one chunk per sentence
    assert {chunk.sample_rate for chunk in chunks} == {22050}
    assert all(chunk.samples.dtype == np.float32 for chunk in chunks)
    assert total(chunks) == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)


@pytest.mark.parametrize("speed", [0.5, 0.8, 2.0])
def test_piper_speed_is_the_inverse_length_scale(voices_dir: Path, speed: float) -> None:
    engine = piper(voices_dir)
    samples = total(list(engine.synthesize(TEXT, VOICE, speed)))
    assert samples == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT, length_scale=1.0 / speed)


def test_piper_thread_count_is_configurable(voices_dir: Path) -> None:
    engine = piper(voices_dir, threads=1)
    chunks = list(engine.synthesize(TEXT, VOICE, 1.0))
    assert total(chunks) == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)
    session = engine._voice(VOICE).session  # noqa: SLF001 (the loaded PiperVoice's onnxruntime session)
    assert session.get_session_options().intra_op_num_threads == 1


def test_piper_is_lazy(voices_dir: Path) -> None:
    engine = piper(voices_dir)
    generator = engine.synthesize(TEXT, VOICE, 1.0)
    first = next(iter(generator))
    assert first.text == TEXT and len(first.samples) > 0
    generator.close()


def test_piper_picks_up_a_new_voice_and_caches_a_bounded_number(voices_dir: Path) -> None:
    engine = piper(voices_dir, cache_size=1)
    assert engine.voice_loaded and engine.voices() == [VOICE]
    with pytest.raises(VoiceNotFound, match="available voices: en_US-test-medium"):
        engine.resolve_voice("en_GB-new-low")

    build_piper_voice(voices_dir, "en_GB-new-low", sample_rate=16000)
    assert engine.voices() == ["en_GB-new-low", VOICE]
    assert engine.resolve_voice("en_GB-new-low") == "en_GB-new-low"
    with capture_logs() as logs:
        chunks = list(engine.synthesize("Hi there.", "en_GB-new-low", 1.0))
        assert chunks[0].sample_rate == 16000
        assert not engine.voice_loaded  # cache_size 1: the default was dropped
        list(engine.synthesize("Hi there.", VOICE, 1.0))
    assert engine.voice_loaded
    cache = [(entry["event"], entry["voice"]) for entry in logs if entry["event"] in ("voice_loaded", "voice_unloaded")]
    assert cache == [
        ("voice_unloaded", VOICE),
        ("voice_loaded", "en_GB-new-low"),
        ("voice_unloaded", "en_GB-new-low"),
        ("voice_loaded", VOICE),
    ]


def test_piper_reloads_a_voice_replaced_in_place(voices_dir: Path, tmp_path: Path) -> None:
    engine = piper(voices_dir)
    assert list(engine.synthesize("Hi.", VOICE, 1.0))[0].sample_rate == 22050
    other = build_piper_voice(tmp_path / "other", VOICE, sample_rate=16000)
    shutil.copy(other.with_suffix(".onnx.json"), voices_dir / f"{VOICE}.onnx.json")
    shutil.copy(other, voices_dir / f"{VOICE}.onnx")
    import os

    stat = (voices_dir / f"{VOICE}.onnx").stat()
    os.utime(voices_dir / f"{VOICE}.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert list(engine.synthesize("Hi.", VOICE, 1.0))[0].sample_rate == 16000


class _HeldLoadPiperEngine(PiperEngine):
    """The real Piper engine with our own loader hook (`PiperEngine._load`, not Piper) held for one
    voice: nothing else can keep a voice load in flight for as long as the test needs. The voice is
    still really loaded once the hold is released."""

    held_voice = "en_GB-new-low"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.loading = threading.Event()
        self.loads: list[str] = []

    def _load(self, model: Path, config: Path):  # type: ignore[no-untyped-def]
        name = model.name.removesuffix(".onnx")
        self.loads.append(name)
        if name == self.held_voice:
            self.loading.set()
            assert self.release.wait(30), "load never released"
        return super()._load(model, config)


def test_piper_loading_a_voice_does_not_stall_the_cached_ones(voices_dir: Path) -> None:
    build_piper_voice(voices_dir, "en_GB-new-low", sample_rate=16000)
    engine = _HeldLoadPiperEngine(Settings(tts={"voices_dir": str(voices_dir), "voice": VOICE}))
    engine.start()
    results: dict[str, list[Any]] = {}

    def speak(key: str, voice: str) -> None:
        results[key] = list(engine.synthesize("Hi there.", voice, 1.0))

    loaders = [threading.Thread(target=speak, args=(key, "en_GB-new-low"), daemon=True) for key in ("new1", "new2")]
    for thread in loaders:
        thread.start()
    assert engine.loading.wait(10)
    # While the new voice is loading, the default (cached) voice still speaks.
    default = threading.Thread(target=speak, args=("default", VOICE), daemon=True)
    default.start()
    default.join(10)
    assert not default.is_alive(), "synthesis with the cached voice waited for another voice's load"
    assert total(results["default"]) == expected_samples(voices_dir / f"{VOICE}.onnx", "Hi there.")
    assert "new1" not in results and "new2" not in results
    engine.release.set()
    for thread in loaders:
        thread.join(10)
    assert results["new1"][0].sample_rate == results["new2"][0].sample_rate == 16000
    # Two requests for the same voice at once load it once.
    assert engine.loads == [VOICE, "en_GB-new-low"]


def test_piper_multi_speaker_uses_the_configured_speaker(tmp_path: Path) -> None:
    folder = tmp_path / "voices"
    build_piper_voice(folder, VOICE, num_speakers=3)
    chunk = next(iter(piper(folder, speaker_id=2).synthesize("Hi.", VOICE, 1.0)))
    # The synthetic voice's tone is 220 Hz + 110 Hz per speaker id.
    spectrum = np.abs(np.fft.rfft(chunk.samples))
    peak_hz = np.argmax(spectrum) * chunk.sample_rate / len(chunk.samples)
    assert abs(peak_hz - 440.0) < 5
    with pytest.raises(EngineError, match="speaker_id 5 is out of range"):
        next(iter(piper(folder, speaker_id=5).synthesize("Hi.", VOICE, 1.0)))


def test_piper_start_without_voice_and_download_off_fails_with_a_fix(tmp_path: Path) -> None:
    engine = PiperEngine(Settings(tts={"voices_dir": str(tmp_path), "piper": {"download": False}}))
    with pytest.raises(EngineStartError, match="en_US-lessac-medium.*python -m piper.download_voices"):
        engine.start()


def test_piper_start_with_a_broken_voice_file_says_so(voices_dir: Path) -> None:
    (voices_dir / f"{VOICE}.onnx").write_bytes(b"not an onnx model")
    engine = PiperEngine(Settings(tts={"voices_dir": str(voices_dir), "voice": VOICE}))
    with pytest.raises(EngineStartError, match="cannot be loaded"):
        engine.start()


# -- espeak ----------------------------------------------------------------------------------------


def test_espeak_speaks_sentence_by_sentence() -> None:
    engine = EspeakEngine(Settings(tts={"engine": "espeak"}))
    engine.start()
    assert engine.default_voice == "en-us"
    assert {"en-us", "de", "fr"} <= set(engine.voices())
    assert all("/" not in name and " " not in name for name in engine.voices())
    chunks = list(engine.synthesize("Hello world. How are you today?", "en-us", 1.0))
    assert [chunk.text for chunk in chunks] == ["Hello world.", "How are you today?"]
    assert {chunk.sample_rate for chunk in chunks} == {22050}
    seconds = total(chunks) / 22050
    assert 1.0 < seconds < 4.0
    assert float(np.sqrt(np.mean(np.square(np.concatenate([c.samples for c in chunks]))))) > 0.02


def test_espeak_speed_changes_the_rate() -> None:
    engine = EspeakEngine(Settings())
    text = "The quick brown fox jumps over the lazy dog again and again."
    normal = total(list(engine.synthesize(text, "en-us", 1.0)))
    fast = total(list(engine.synthesize(text, "en-us", 2.0)))
    assert fast < normal * 0.65


def test_espeak_voices_and_variants() -> None:
    engine = EspeakEngine(Settings())
    assert engine.resolve_voice("de") == "de"
    assert engine.resolve_voice("en-us+f3") == "en-us+f3"
    assert len(list(engine.synthesize("Guten Tag.", "de", 1.0))) == 1
    with pytest.raises(VoiceNotFound, match="unknown voice 'xx-nope' for the espeak engine"):
        engine.resolve_voice("xx-nope")
    with pytest.raises(VoiceNotFound):
        list(engine.synthesize("Hi.", "en-us+nosuchvariant", 1.0))


def test_espeak_as_fallback_ignores_the_other_engines_voice() -> None:
    settings = Settings(tts={"voice": "en_US-lessac-medium", "espeak": {"voice": "en-gb"}})
    assert EspeakEngine(settings, as_fallback=True).default_voice == "en-gb"
    primary = EspeakEngine(settings)
    with pytest.raises(EngineStartError, match="unknown voice 'en_US-lessac-medium'.*set tts.voice"):
        primary.start()


# -- groq ------------------------------------------------------------------------------------------


def groq(base_url: str, key: str | None = "gsk_test_key", **groq_settings: Any) -> GroqEngine:
    engine = create_engine(
        "groq", Settings(tts={"engine": "groq", "groq": {"base_url": base_url, "api_key": key, **groq_settings}})
    )
    engine.start()
    return engine  # type: ignore[return-value]


def test_groq_speaks_through_the_openai_compatible_endpoint() -> None:
    with groq_double() as double:
        engine = groq(double.base_url)
        chunks = list(engine.synthesize("Hello there. General Kenobi.", "autumn", 1.0))
        engine.close()
    request = double.behaviour.requests[0]
    assert request["path"] == "/openai/v1/audio/speech"
    assert request["auth"] == "Bearer gsk_test_key"
    assert request["body"] == {
        "model": "canopylabs/orpheus-v1-english",
        "input": "Hello there. General Kenobi.",
        "voice": "autumn",
        "response_format": "wav",
    }
    assert len(chunks) == 1 and chunks[0].sample_rate == GROQ_RATE
    assert len(chunks[0].samples) == len("Hello there. General Kenobi.") * 100


def test_groq_splits_long_text_within_its_input_limit() -> None:
    text = "One two three. Four five six. Seven eight nine ten eleven twelve."
    assert pack_sentences(text, 30) == ["One two three. Four five six.", "Seven eight nine ten eleven", "twelve."]
    with groq_double() as double:
        engine = groq(double.base_url, max_input_chars=30)
        chunks = list(engine.synthesize(text, "troy", 1.5))
    assert [r["body"]["input"] for r in double.behaviour.requests] == pack_sentences(text, 30)
    assert {r["body"]["speed"] for r in double.behaviour.requests} == {1.5}
    assert len(chunks) == 3


def test_groq_wrong_key_is_engine_auth() -> None:
    with groq_double() as double:
        engine = groq(double.base_url, key="gsk_wrong")
        with pytest.raises(EngineAuth, match="Groq refused the API key \\(401: Invalid API Key\\).*GROQ_API_KEY"):
            list(engine.synthesize("Hi.", "autumn", 1.0))


def test_groq_rate_limit_is_engine_busy_with_retry_after() -> None:
    with groq_double() as double:
        double.behaviour.status = 429
        engine = groq(double.base_url)
        with pytest.raises(EngineBusy) as error:
            list(engine.synthesize("Hi.", "autumn", 1.0))
    assert error.value.code == "engine_busy"
    assert error.value.retry_after_s == 8  # Groq said 7 s; we add one for rounding


def test_groq_server_error_and_unreachable_api_are_engine_errors() -> None:
    with groq_double() as double:
        double.behaviour.status = 500
        engine = groq(double.base_url)
        with pytest.raises(EngineError, match="Groq answered 500: Internal server error"):
            list(engine.synthesize("Hi.", "autumn", 1.0))
    from tests.fixtures.ollama_double import down_url

    unreachable = groq(down_url() + "/openai/v1")
    with pytest.raises(EngineError, match="cannot reach Groq"):
        list(unreachable.synthesize("Hi.", "autumn", 1.0))


def test_groq_without_a_key_cannot_start() -> None:
    with pytest.raises(EngineStartError, match="set GROQ_API_KEY"):
        groq("http://127.0.0.1:9/openai/v1", key=None)


def test_groq_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import load_settings

    monkeypatch.setenv("GROQ_API_KEY", "gsk_from_env")
    settings = load_settings()
    assert settings.tts.groq.api_key is not None
    assert settings.tts.groq.api_key.get_secret_value() == "gsk_from_env"
    assert "gsk_from_env" not in str(settings.redacted()) and "gsk_from_env" not in repr(settings)


def test_groq_unknown_voice_lists_the_configured_ones() -> None:
    engine = GroqEngine(Settings(tts={"engine": "groq"}))
    with pytest.raises(VoiceNotFound, match="available voices: austin, autumn, daniel, diana, hannah, troy"):
        engine.resolve_voice("nova")


# -- xtts ------------------------------------------------------------------------------------------


class CoquiTtsDouble:
    """A double of the coqui-tts API object (`TTS(...)`): `.tts(text=, speaker_wav=, language=, speed=)`
    returns a list of floats, `.synthesizer.output_sample_rate` is 24000. No real XTTS model can be
    downloaded here, so the adapter is tested against this double of coqui-tts's public API."""

    class _Synth:
        output_sample_rate = 24000

    def __init__(self) -> None:
        self.synthesizer = self._Synth()
        self.calls: list[dict[str, Any]] = []

    def tts(self, text: str, speaker_wav: str, language: str, speed: float = 1.0) -> list[float]:
        self.calls.append({"text": text, "speaker_wav": speaker_wav, "language": language, "speed": speed})
        return [0.25] * int(len(text) * 240 / speed)


def xtts_settings(tmp_path: Path, **xtts: Any) -> Settings:
    return Settings(
        tts={"engine": "xtts", "xtts": {"speakers_dir": str(tmp_path / "speakers"), "device": "cpu", **xtts}}
    )


def test_xtts_adapter_speaks_with_reference_wavs(tmp_path: Path) -> None:
    speakers = tmp_path / "speakers"
    speakers.mkdir()
    for name in ("default", "alice"):
        write_wav(speakers / f"{name}.wav", np.zeros(16000, dtype=np.float32), 16000)
    model = CoquiTtsDouble()
    devices: list[str] = []
    engine = XttsEngine(xtts_settings(tmp_path, language="de"), model_factory=lambda s, d: devices.append(d) or model)
    engine.start()
    assert devices == ["cpu"] and engine.voice_loaded
    assert engine.voices() == ["alice", "default"]
    chunks = list(engine.synthesize("Hallo Welt. Wie geht es?", engine.resolve_voice("alice"), 2.0))
    assert model.calls == [
        {"text": "Hallo Welt.", "speaker_wav": str(speakers / "alice.wav"), "language": "de", "speed": 2.0},
        {"text": "Wie geht es?", "speaker_wav": str(speakers / "alice.wav"), "language": "de", "speed": 2.0},
    ]
    assert [len(c.samples) for c in chunks] == [1320, 1440]
    assert {c.sample_rate for c in chunks} == {24000}
    with pytest.raises(VoiceNotFound, match="available voices: alice, default"):
        engine.resolve_voice("bob")


def test_xtts_without_speaker_wav_cannot_start(tmp_path: Path) -> None:
    engine = XttsEngine(xtts_settings(tmp_path), model_factory=lambda s, d: CoquiTtsDouble())
    with pytest.raises(EngineStartError, match="put default.wav .* into"):
        engine.start()


def test_xtts_without_the_extra_names_the_install_command(tmp_path: Path) -> None:
    # coqui-tts is an optional extra, not installed in the test environment.
    try:
        import TTS  # noqa: F401

        pytest.skip("coqui-tts is installed here")
    except ImportError:
        pass
    speakers = tmp_path / "speakers"
    speakers.mkdir()
    write_wav(speakers / "default.wav", np.zeros(1600, dtype=np.float32), 16000)
    engine = XttsEngine(xtts_settings(tmp_path))
    with pytest.raises(EngineStartError, match=r"pip install -e \.\[xtts\]"):
        engine.start()


def test_piper_use_cuda_without_a_cuda_runtime_warns_and_runs_on_the_cpu(voices_dir: Path) -> None:
    import onnxruntime
    from structlog.testing import capture_logs

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with capture_logs() as logs:
        engine = piper(voices_dir, use_cuda=True)
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["cuda_unavailable"]
    assert "pip install onnxruntime-gpu" in logs[0]["fix"]
    assert total(list(engine.synthesize(TEXT, VOICE, 1.0))) == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)
