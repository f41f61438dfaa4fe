"""A voice's load-aware sessions (tts.piper.adaptive_threads): the same speech as PiperVoice.load's session, the
wide session for a synthesis that runs alone and the narrow one while another runs."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig
from structlog.testing import capture_logs

from core.config import Settings
from core.priority import available_cores
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.tts.conftest import VOICE, wait_for
from tts.engines.piper import PiperEngine
from tts.engines.piper_sessions import LoadAwareSession, SynthesisLoad, _same_audio, load_aware_session

TEXT = "Two sessions over one copy of the weights speak alike."
"""One sentence: one ONNX run."""


class Recording:
    """Wraps a session and counts its runs, so a test sees which session a run took."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.runs = 0

    def run(self, *args: Any) -> Any:
        self.runs += 1
        return self.session.run(*args)


def _plain(model: Path) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _voice(model: Path, session: Any) -> PiperVoice:
    config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text(encoding="utf-8")))
    return PiperVoice(config=config, session=session)


def _speech(voice: PiperVoice, speaker_id: int | None = None) -> np.ndarray:
    chunks = voice.synthesize(TEXT, syn_config=SynthesisConfig(speaker_id=speaker_id))
    return np.concatenate([chunk.audio_float_array for chunk in chunks])


def test_the_load_tells_a_synthesis_that_shares_the_cores_and_forgets_a_failed_one() -> None:
    load = SynthesisLoad()
    with load.run():
        assert not load.shared()
        with load.run():
            assert load.shared()
        assert not load.shared()
    try:
        with load.run():
            raise RuntimeError("the synthesis failed")
    except RuntimeError:
        pass
    with load.run():
        assert not load.shared()


def test_a_voice_on_load_aware_sessions_speaks_as_piper_voice_load_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fixture voice's tensors are all small: share every float one, so the sharing is what is tested.
    monkeypatch.setattr("tts.engines.piper_sessions.SHARED_MIN_ELEMENTS", 1)
    for name, speakers in (("en_US-one-medium", 1), ("en_US-many-medium", 3)):
        model = build_piper_voice(tmp_path, name, num_speakers=speakers)
        reference = PiperVoice.load(model)
        session = load_aware_session(model, SynthesisLoad(), 1, _plain(model))
        assert session is not None and session._weights
        gc.collect()  # the weights must outlive everything but the session
        ours = _voice(model, session)
        speaker = None if speakers == 1 else 2
        expected = _speech(reference, speaker)
        assert len(expected) > 0
        np.testing.assert_array_equal(_speech(ours, speaker), expected)


def test_a_run_takes_the_wide_session_alone_and_the_narrow_one_while_another_runs(tmp_path: Path) -> None:
    model = build_piper_voice(tmp_path, "en_US-one-medium")
    load = SynthesisLoad()
    session = load_aware_session(model, load, 1, _plain(model))
    assert isinstance(session, LoadAwareSession)
    wide, narrow = Recording(session._wide), Recording(session._narrow)
    session._wide, session._narrow = wide, narrow
    voice = _voice(model, session)
    with load.run():
        alone = _speech(voice)
    assert (wide.runs, narrow.runs) == (1, 0)

    # Another synthesis of the same engine (any voice) is under way beside this one.
    with load.run(), load.run():
        shared = _speech(voice)
    assert (wide.runs, narrow.runs) == (1, 1)
    np.testing.assert_array_equal(shared, alone)


def test_the_check_at_load_tells_a_session_that_speaks_otherwise(tmp_path: Path) -> None:
    ours = _plain(build_piper_voice(tmp_path, "en_US-ours-medium"))
    # The same graph at another sample rate: another tone in every sample, the same length.
    other = _plain(build_piper_voice(tmp_path, "en_US-other-medium", sample_rate=16000))
    assert _same_audio(ours, _plain(tmp_path / "en_US-ours-medium.onnx"))
    assert not _same_audio(ours, other)


def _engine(voices_dir: Path, **tts: Any) -> PiperEngine:
    engine = PiperEngine(Settings(tts={"voices_dir": str(voices_dir), "voice": VOICE, **tts}))
    engine.start()
    return engine


@pytest.mark.skipif(available_cores() < 2, reason="with one core both sessions would have one thread")
def test_the_engine_puts_its_cpu_voices_on_load_aware_sessions_by_default(voices_dir: Path) -> None:
    engine = _engine(voices_dir)
    assert engine.narrow_threads() == 1
    voice = engine._voice(VOICE)
    # The voice speaks at once on its plain session; the shared ones replace it when built.
    assert sum(len(chunk.samples) for chunk in engine.synthesize(TEXT, VOICE, 1.0)) == expected_samples(
        voices_dir / f"{VOICE}.onnx", TEXT
    )
    wait_for(lambda: isinstance(voice.session, LoadAwareSession), 30)
    chunks = list(engine.synthesize(TEXT, VOICE, 1.0))
    assert sum(len(chunk.samples) for chunk in chunks) == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)
    # Turned off, a fixed thread count, or one worker (a synthesis then always runs alone): one session.
    for tts in ({"piper": {"adaptive_threads": False}}, {"piper": {"threads": 1}}, {"max_concurrent": 1}):
        assert _engine(voices_dir, **tts).narrow_threads() is None


@pytest.mark.skipif(available_cores() < 2, reason="with one core no load-aware session is tried")
@pytest.mark.parametrize("failure", ["unusable", "failed"])
def test_a_voice_whose_shared_sessions_fail_keeps_its_plain_session(
    voices_dir: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    def load_aware_session(*args: Any) -> None:
        if failure == "failed":
            raise RuntimeError("onnxruntime could not build it")

    monkeypatch.setattr("tts.engines.piper.load_aware_session", load_aware_session)
    with capture_logs() as logs:
        engine = _engine(voices_dir)
        voice = engine._voice(VOICE)
        wait_for(lambda: any(log["event"] == f"piper_shared_sessions_{failure}" for log in logs), 30)
    assert not isinstance(voice.session, LoadAwareSession)
    chunks = list(engine.synthesize(TEXT, VOICE, 1.0))
    assert sum(len(chunk.samples) for chunk in chunks) == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)
