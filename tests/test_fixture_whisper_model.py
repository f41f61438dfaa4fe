"""Checks that the offline Whisper fixture drives the real faster-whisper code path.

Why: every STT test and benchmark relies on this builder instead of downloaded weights, so
it must load without the network, go through decoding, language detection, timestamps and
word alignment, and be reproducible byte for byte. Only the "toy" shape is built here (the
"tiny" one takes seconds and ~60 MB). The weights are random: nothing asserts on words.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from tests.fixtures import whisper_model
from tests.fixtures.whisper_model import (
    LANGUAGE_CODES,
    MARKER_FILE,
    build_whisper_model,
    is_complete,
)

SAMPLE_RATE = 16000
MODEL_FILES = {
    "config.json",
    "model.bin",
    "preprocessor_config.json",
    "tokenizer.json",
    "vocabulary.json",
    MARKER_FILE,
}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One toy model for the whole module (built once, ~0.1 s)."""
    return build_whisper_model(tmp_path_factory.mktemp("whisper") / "toy", shape="toy")


@pytest.fixture
def audio_2s() -> np.ndarray:
    """2 s of 16 kHz float32 audio: a tone plus seeded noise (content is irrelevant)."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    noise = np.random.default_rng(0).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * 220.0 * t) + noise).astype(np.float32)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Offline mode plus hard failures on any socket use or Hub download attempt."""
    import faster_whisper.transcribe
    import faster_whisper.utils

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r} {kwargs!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(tokenizers.Tokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(faster_whisper.transcribe, "download_model", refuse)
    monkeypatch.setattr(faster_whisper.utils, "download_model", refuse)
    yield


@pytest.fixture
def model(toy_dir: Path, no_network: None):  # -> faster_whisper.WhisperModel
    """A fresh WhisperModel on the toy dir, loaded with the network blocked (~10 ms)."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(toy_dir), device="cpu", compute_type="int8", cpu_threads=1)


def _vocabulary(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))


def _timestamp_begin(model_dir: Path) -> int:
    return _vocabulary(model_dir).index("<|notimestamps|>") + 1


def test_directory_holds_a_complete_small_model(toy_dir: Path) -> None:
    assert {p.name for p in toy_dir.iterdir()} == MODEL_FILES
    assert is_complete(toy_dir, "toy")
    assert not is_complete(toy_dir, "tiny")
    assert (toy_dir / "model.bin").stat().st_size < 2_000_000
    # No temporary build dirs left next to it.
    assert [p.name for p in toy_dir.parent.iterdir()] == ["toy"]


def test_vocabulary_keeps_whisper_special_token_layout(toy_dir: Path) -> None:
    vocab = _vocabulary(toy_dir)
    eot = vocab.index("<|endoftext|>")
    assert vocab[eot + 1] == "<|startoftranscript|>"
    langs = vocab[eot + 2 : eot + 2 + len(LANGUAGE_CODES)]
    assert langs == [f"<|{code}|>" for code in LANGUAGE_CODES]
    controls = vocab[eot + 2 + len(LANGUAGE_CODES) : eot + 8 + len(LANGUAGE_CODES)]
    assert controls == [
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    timestamps = vocab[_timestamp_begin(toy_dir) :]
    assert len(timestamps) == 1501
    assert (timestamps[0], timestamps[1], timestamps[-1]) == ("<|0.00|>", "<|0.02|>", "<|30.00|>")
    # Text ids all below <|endoftext|>, including the empty token that marks "multilingual".
    assert "" in vocab and vocab.index("") < eot
    assert all(not (t.startswith("<|") and t.endswith("|>")) for t in vocab[:eot])

    config = json.loads((toy_dir / "config.json").read_text(encoding="utf-8"))
    assert config["lang_ids"] == list(range(eot + 2, eot + 2 + len(LANGUAGE_CODES)))
    assert config["alignment_heads"]
    assert eot in config["suppress_ids_begin"]


def test_tokenizer_json_matches_vocabulary_and_faster_whisper_rules(toy_dir: Path) -> None:
    from faster_whisper.tokenizer import Tokenizer

    hf = tokenizers.Tokenizer.from_file(str(toy_dir / "tokenizer.json"))
    vocab = _vocabulary(toy_dir)
    assert hf.get_vocab_size(with_added_tokens=True) == len(vocab)
    assert all(hf.token_to_id(token) == i for i, token in enumerate(vocab))

    tok = Tokenizer(hf, multilingual=True, task="transcribe", language="en")
    space = tok.encode(" ")
    assert len(space) == 1
    # faster-whisper suppresses encode(" -")[0], encode(" '")[0] and encode(" ♪")[0]: they
    # must be merged tokens, or the plain space token would be suppressed.
    assert space[0] not in tok.non_speech_tokens
    assert tok.decode(tok.encode(" hello, world - it's")) == " hello, world - it's"
    assert tok.timestamp_begin == _timestamp_begin(toy_dir)


def test_loads_offline_as_multilingual_model(model) -> None:
    assert model.model.is_multilingual
    assert model.model.n_mels == 80
    assert set(model.supported_languages) <= set(LANGUAGE_CODES)
    assert len(model.supported_languages) == len(LANGUAGE_CODES)


def test_network_guard_is_effective(toy_dir: Path, tmp_path: Path, no_network: None) -> None:
    """The offline checks above mean something: a Hub lookup does trip the guard."""
    from faster_whisper import WhisperModel

    with pytest.raises(AssertionError, match="network access attempted"):
        WhisperModel("tiny", device="cpu", compute_type="int8")
    # Without tokenizer.json faster-whisper silently fetches one from the Hub.
    bare = tmp_path / "bare"
    shutil.copytree(toy_dir, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(AssertionError, match="network access attempted"):
        WhisperModel(str(bare), device="cpu", compute_type="int8")


def test_transcribe_english(model, audio_2s: np.ndarray, toy_dir: Path) -> None:
    segments, info = model.transcribe(audio_2s, beam_size=1, temperature=0.0, language="en")
    segments = list(segments)  # decoding happens while iterating

    assert info.language == "en"
    assert info.duration == pytest.approx(2.0)
    # The fixture is steered to emit one non-empty segment per window (see whisper_model).
    assert len(segments) >= 1
    eot = _vocabulary(toy_dir).index("<|endoftext|>")
    for segment in segments:
        assert 0.0 <= segment.start <= segment.end <= info.duration + 0.02
        assert isinstance(segment.text, str) and segment.text.strip()
        assert segment.tokens
        assert all(t < eot or t >= _timestamp_begin(toy_dir) for t in segment.tokens)


def test_language_detection(model, audio_2s: np.ndarray) -> None:
    segments, info = model.transcribe(audio_2s, beam_size=1, temperature=0.0, language=None)
    list(segments)

    assert info.language in LANGUAGE_CODES
    assert 0.0 <= info.language_probability <= 1.0
    assert len(info.all_language_probs) == len(LANGUAGE_CODES)
    assert info.language == "en"  # by construction: <|en|> carries the highest bias


def test_word_timestamps(model, audio_2s: np.ndarray) -> None:
    segments, _ = model.transcribe(
        audio_2s, beam_size=1, temperature=0.0, language="en", word_timestamps=True
    )
    words = [w for s in segments for w in (s.words or [])]

    assert words
    for word in words:
        assert 0.0 <= word.start <= word.end <= 2.0 + 0.02
        assert 0.0 <= word.probability <= 1.0


def test_timestamp_tokens_are_decoded(model, audio_2s: np.ndarray, toy_dir: Path) -> None:
    ts_begin = _timestamp_begin(toy_dir)

    segments, _ = model.transcribe(
        audio_2s, beam_size=1, temperature=0.0, language="en", without_timestamps=False
    )
    tokens = [t for s in list(segments) for t in s.tokens]
    assert any(t >= ts_begin for t in tokens)

    segments, _ = model.transcribe(
        audio_2s, beam_size=1, temperature=0.0, language="en", without_timestamps=True
    )
    tokens = [t for s in list(segments) for t in s.tokens]
    assert tokens and all(t < ts_begin for t in tokens)


def test_build_is_byte_identical(tmp_path: Path, toy_dir: Path) -> None:
    first = build_whisper_model(tmp_path / "a")
    second = build_whisper_model(tmp_path / "b")

    for name in MODEL_FILES:
        data = (first / name).read_bytes()
        assert data == (second / name).read_bytes(), name
        assert data == (toy_dir / name).read_bytes(), name


def test_second_call_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = build_whisper_model(tmp_path / "m")
    mtime = (out / "model.bin").stat().st_mtime_ns

    def must_not_build(*args: object) -> None:
        raise AssertionError("rebuilt a complete model")

    monkeypatch.setattr(whisper_model, "_write_model", must_not_build)
    assert build_whisper_model(tmp_path / "m") == tmp_path / "m"
    assert (out / "model.bin").stat().st_mtime_ns == mtime


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(target: Path, shape: str) -> None:
        (target / "model.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(whisper_model, "_write_model", crash)
    with pytest.raises(KeyboardInterrupt):
        build_whisper_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_reuses_empty_dir_replaces_stale_build_refuses_foreign_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_complete(build_whisper_model(empty))

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / MARKER_FILE).write_text("whisper-fixture-0\nshape=toy\n", encoding="utf-8")
    (stale / "model.bin").write_bytes(b"old")
    assert is_complete(build_whisper_model(stale))
    assert (stale / "model.bin").read_bytes() != b"old"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError):
        build_whisper_model(foreign)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "keep me"

    with pytest.raises(ValueError):
        build_whisper_model(tmp_path / "x", shape="large")  # type: ignore[arg-type]
