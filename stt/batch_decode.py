"""Finals of several sessions decoded together: one batched Whisper encoder pass for all of them.

On a short utterance most of Whisper's cost is the encoder, which always runs on a 30 s window; a
batch of utterances is encoded in one CTranslate2 call (its GEMMs fill the cores far better than
one window at a time). Each utterance is then decoded from its own row of that output by
faster-whisper's own `generate_segments`, with the options `WhisperModel.transcribe` would build
(temperature fallback, no-speech and quality checks included), so a batched result is the
unbatched one. Language detection, where asked, is batched the same way and on the same features
`transcribe` uses for it. faster-whisper's BatchedInferencePipeline batches the decoding too, but it
drops the fallback and the checks, which would change the transcripts.
Blocking (CTranslate2): callers run `transcribe_batch` in a worker thread.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stt.engine import Transcript, WhisperEngine, collect_transcript


@dataclass(frozen=True)
class FinalRequest:
    """One utterance of a batch, with the options of its session."""

    audio: np.ndarray
    language: str | None
    word_timestamps: bool = False
    should_stop: Callable[[], bool] = lambda: False


def _options(model: Any, language: str, request: FinalRequest, engine: WhisperEngine) -> tuple[Any, Any]:
    """The tokenizer and TranscriptionOptions `WhisperModel.transcribe` builds for our arguments."""
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

    given: dict[str, Any] = {
        name: parameter.default
        for name, parameter in inspect.signature(model.transcribe).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    # What WhisperEngine.transcribe passes.
    given.update(
        beam_size=engine.settings.beam_size,
        condition_on_previous_text=False,
        word_timestamps=request.word_timestamps,
    )
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=given["task"], language=language)
    fields = {field.name for field in dataclasses.fields(TranscriptionOptions)}
    given["temperatures"] = list(engine.settings.temperatures)
    suppress = given["suppress_tokens"]
    given["suppress_tokens"] = get_suppressed_tokens(tokenizer, suppress) if suppress else suppress
    return tokenizer, TranscriptionOptions(**{name: given[name] for name in fields})


def _encode(model: Any, windows: list[np.ndarray]) -> np.ndarray:
    """One encoder call for every window [80, 3000]; the output comes back on the CPU so rows can be split."""
    import ctranslate2

    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(windows)))
    return np.asarray(model.model.encode(batch, to_cpu=True))


def _languages(model: Any, features: list[np.ndarray], requests: Sequence[FinalRequest]) -> list[tuple[str, float]]:
    """Each request's language: as given, or detected (in one batch) as `transcribe` detects it."""
    from faster_whisper.audio import pad_or_trim

    found: list[tuple[str, float]] = [(r.language, 1.0) if r.language else ("en", 1.0) for r in requests]
    unknown = [i for i, r in enumerate(requests) if r.language is None]
    if not unknown or not model.model.is_multilingual:
        return found
    import ctranslate2

    frames = model.feature_extractor.nb_max_frames
    encoded = _encode(model, [pad_or_trim(features[i][..., :frames]) for i in unknown])
    detected = model.model.detect_language(ctranslate2.StorageView.from_array(encoded))
    for i, results in zip(unknown, detected, strict=True):
        # One detection segment (transcribe's default): its top language, whatever its probability.
        token, probability = results[0]
        found[i] = (token[2:-2], probability)
    return found


@dataclass(frozen=True)
class Encoded:
    """One request of a batch after the shared stages: its features, language and row of the encoder output."""

    request: FinalRequest
    features: np.ndarray
    language: str
    language_probability: float
    encoder_output: np.ndarray
    started: float


def encode_batch(engine: WhisperEngine, requests: Sequence[FinalRequest]) -> list[Encoded]:
    """The stages shared by the batch: features, language detection (where asked) and one encoder call. Blocking."""
    from faster_whisper.audio import pad_or_trim

    model: Any = engine.whisper
    started = time.perf_counter()
    features = [model.feature_extractor(request.audio) for request in requests]
    languages = _languages(model, features, requests)
    frames = model.feature_extractor.nb_max_frames
    # The first window of each, cut as generate_segments cuts it (the extractor's last frame is not content).
    encoded = _encode(model, [pad_or_trim(f[:, : min(frames, f.shape[-1] - 1)]) for f in features])
    return [
        Encoded(request, features[i], *languages[i], encoded[i : i + 1], started) for i, request in enumerate(requests)
    ]


def decode(engine: WhisperEngine, encoded: Encoded) -> Transcript:
    """One request decoded from its row, as `engine.transcribe` decodes it; its time counts from the batch's start.
    Blocking."""
    import ctranslate2

    model: Any = engine.whisper
    request = encoded.request
    tokenizer, options = _options(model, encoded.language, request, engine)
    own = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded.encoder_output))
    segments = model.generate_segments(encoded.features, tokenizer, options, False, own)
    return collect_transcript(
        segments,
        encoded.language,
        encoded.language_probability,
        request.audio,
        encoded.started,
        request.should_stop,
        request.word_timestamps,
    )


def transcribe_batch(engine: WhisperEngine, requests: Sequence[FinalRequest]) -> list[Transcript]:
    """Each request's transcript, in order, as `engine.transcribe` would give it. Blocking."""
    return [decode(engine, encoded) for encoded in encode_batch(engine, requests)]
