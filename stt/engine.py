"""The faster-whisper engine: load one model per process, transcribe float32 arrays.

Everything here blocks (CTranslate2 is C++); callers run it in a worker thread.
"""

from __future__ import annotations

import os
import re
import site
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from core.config import SttSettings
from core.logging import get_logger
from core.priority import available_cores, build_at_nice

log = get_logger(__name__)

WHISPER_SAMPLE_RATE = 16000
OFFLINE_MODEL_HINT = (
    "Check the network, or use a model you already have: set stt.model to a local CTranslate2 model "
    "directory (config.json, model.bin and tokenizer.json; a faster-whisper model from the Hugging Face "
    "hub, e.g. Systran/faster-whisper-small, copied from another machine, or one converted with "
    "ct2-transformers-converter; see the README, section \"Models without a network\")"
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(Exception):
    """The model could not be loaded; the message says why and what to change."""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    """Seconds from the start of the utterance (or of the file)."""
    end: float
    text: str
    words: tuple[Word, ...] | None = None
    """Only when word timestamps were asked for."""
    id: int = 0
    seek: int = 0
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class FileRequest:
    """How to transcribe a whole file (the fields of OpenAI's transcription request)."""

    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str | None = None
    """Whisper's initial prompt: spelling of names, style."""
    temperature: float | None = None
    """None: stt.temperatures, tried in turn."""
    word_timestamps: bool = False


@dataclass(frozen=True)
class FileInfo:
    language: str
    language_probability: float
    duration: float
    """Seconds of audio in the file."""
    speech_duration: float
    """Seconds left after voice activity detection skipped the silence."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration: float
    """Seconds of audio transcribed."""
    transcribe_seconds: float
    segments: list[Segment] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        return self.transcribe_seconds / self.duration if self.duration else 0.0


@dataclass(frozen=True)
class LoadedModel:
    name: str
    device: str
    compute_type: str
    load_seconds: float


def nvidia_dll_dirs(site_dirs: Iterable[Path]) -> list[Path]:
    """The `bin` folders of the nvidia-* wheels (cuBLAS, cuDNN) under the given site-packages."""
    found: list[Path] = []
    for root in site_dirs:
        nvidia = root / "nvidia"
        if nvidia.is_dir():
            found.extend(sorted(path for path in nvidia.glob("*/bin") if path.is_dir()))
    return found


def add_windows_cuda_dll_dirs() -> list[Path]:
    """Make pip-installed CUDA libraries loadable on Windows without manual PATH edits."""
    if sys.platform != "win32":
        return []
    site_dirs = [Path(p) for p in [*site.getsitepackages(), site.getusersitepackages()]]
    added = nvidia_dll_dirs(site_dirs)
    for directory in added:
        os.add_dll_directory(str(directory))  # type: ignore[attr-defined]
        # CTranslate2 loads cuBLAS/cuDNN lazily with LoadLibrary, which only searches PATH.
        os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"
        log.info("cuda_dll_directory_added", path=str(directory))
    return added


def cpu_threads(stt: SttSettings) -> int:
    """stt.cpu_threads, where 0 means one thread per available core."""
    return stt.cpu_threads or available_cores()


def choose_device(requested: str, cuda_devices: int) -> tuple[str, str]:
    """The device to try first and why."""
    if requested == "cpu":
        return "cpu", "stt.device is cpu"
    if requested == "cuda":
        return "cuda", "stt.device is cuda"
    if cuda_devices > 0:
        return "cuda", f"CTranslate2 sees {cuda_devices} CUDA device(s)"
    return "cpu", "CTranslate2 sees no CUDA device"


def choose_compute_type(requested: str, device: str, supported: set[str]) -> str:
    """auto: float16 on CUDA and int8 on the CPU, degraded to what the hardware supports."""
    if requested != "auto":
        if requested not in supported:
            raise ModelLoadError(
                f"stt.compute_type {requested!r} is not supported on {device}; "
                f"supported: {', '.join(sorted(supported))}"
            )
        return requested
    preferences = ["float16", "int8_float16", "float32"] if device == "cuda" else ["int8", "int8_float32", "float32"]
    return next(choice for choice in preferences if choice in supported or choice == "float32")


def _directory_size(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        try:
            total += entry.stat().st_size if entry.is_file() else 0
        except OSError:
            continue  # huggingface_hub renames *.incomplete files while we look
    return total


def _download(name: str, target: Path) -> Path:
    """Download a size name or Hub id into target, logging progress every few seconds."""
    from faster_whisper.utils import download_model

    done = threading.Event()

    def report_progress() -> None:
        while not done.wait(5.0):
            log.info("model_download_progress", model=name, megabytes=round(_directory_size(target) / 1e6, 1))

    log.info("model_download_started", model=name, into=str(target))
    started = time.perf_counter()
    watcher = threading.Thread(target=report_progress, name="model-download-progress", daemon=True)
    watcher.start()
    try:
        download_model(name, output_dir=str(target))
    except Exception as exc:
        cause = str(exc).strip().rstrip(".") or exc.__class__.__name__
        raise ModelLoadError(
            f"could not download Whisper model {name!r} into {target} ({cause}). {OFFLINE_MODEL_HINT}"
        ) from exc
    finally:
        done.set()
        watcher.join()
    log.info("model_download_finished", model=name, seconds=round(time.perf_counter() - started, 1))
    return target


def resolve_model_path(model: str, models_dir: Path, project_root: Path) -> Path:
    """A local directory as is; a size name or Hub id from models_dir, downloading it once."""
    from faster_whisper.utils import available_models

    candidate = Path(model).expanduser()
    if not candidate.is_absolute():
        candidate = project_root / candidate
    if candidate.is_dir():
        if not (candidate / "model.bin").is_file():
            raise ModelLoadError(f"stt.model directory {candidate} has no model.bin (is it a CTranslate2 model?)")
        return candidate
    if model not in available_models() and not _REPO_ID.match(model):
        raise ModelLoadError(
            f"stt.model {model!r} is neither an existing directory nor a known size "
            f"({', '.join(available_models())}) nor a Hub id like Systran/faster-whisper-small"
        )
    target = models_dir / model.replace("/", "--")
    if (target / "model.bin").is_file() and (target / "tokenizer.json").is_file():
        return target
    return _download(model, target)


class WhisperEngine:
    """One loaded WhisperModel, shared by every session of the process."""

    def __init__(self, model: object, loaded: LoadedModel, settings: SttSettings) -> None:
        self._model = model
        self.loaded = loaded
        self._settings = settings

    @classmethod
    def load(cls, settings: SttSettings, models_dir: Path, project_root: Path) -> WhisperEngine:
        import ctranslate2
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        path = resolve_model_path(settings.model, models_dir, project_root)
        add_windows_cuda_dll_dirs()
        device, reason = choose_device(settings.device, ctranslate2.get_cuda_device_count())
        log.info("device_selected", device=device, reason=reason)
        attempts = [device, "cpu"] if device == "cuda" and settings.device == "auto" else [device]
        threads = cpu_threads(settings)
        failure: Exception | None = None
        for attempt in attempts:
            try:
                compute_type = choose_compute_type(
                    settings.compute_type, attempt, set(ctranslate2.get_supported_compute_types(attempt))
                )
                # Built at a lower priority: CTranslate2's worker threads inherit it (core/priority.py), so the
                # audio intake of every session goes first when transcription has more work than the CPU.
                model = build_at_nice(
                    lambda: WhisperModel(
                        str(path),
                        device=attempt,
                        compute_type=compute_type,
                        cpu_threads=threads,
                        # One CTranslate2 worker per pool slot, so concurrent transcriptions run in parallel.
                        num_workers=settings.max_concurrent,
                    ),
                    settings.transcribe_nice,
                )
            except ModelLoadError:
                raise
            except Exception as exc:  # CUDA/cuDNN missing, corrupt model: all surface as RuntimeError/OSError
                failure = exc
                if attempt != attempts[-1]:
                    log.warning("cuda_unusable_falling_back_to_cpu", error=str(exc))
                continue
            loaded = LoadedModel(settings.model, attempt, compute_type, time.perf_counter() - started)
            log.info(
                "model_loaded",
                model=settings.model,
                path=str(path),
                device=attempt,
                compute_type=compute_type,
                cpu_threads=threads,
                seconds=round(loaded.load_seconds, 2),
            )
            return cls(model, loaded, settings)
        raise ModelLoadError(f"could not load Whisper model from {path} on {attempts[-1]}: {failure}") from failure

    @property
    def settings(self) -> SttSettings:
        return self._settings

    @property
    def whisper(self) -> object:
        """The faster-whisper WhisperModel (stt/batch_decode.py drives its stages for a batch)."""
        return self._model

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None,
        should_stop: Callable[[], bool] = lambda: False,
        word_timestamps: bool = False,
    ) -> Transcript:
        """Transcribe 16 kHz mono float32 audio; stops between segments once should_stop() is true."""
        started = time.perf_counter()
        segments_iter, info = self._model.transcribe(  # type: ignore[attr-defined]
            audio,
            language=language,
            beam_size=self._settings.beam_size,
            temperature=self._settings.temperatures,
            # The session's VAD already cut the utterance; a second pass only costs time.
            vad_filter=False,
            condition_on_previous_text=False,
            word_timestamps=word_timestamps,
        )
        return collect_transcript(
            segments_iter, info.language, info.language_probability, audio, started, should_stop, word_timestamps
        )

    def transcribe_file(self, audio: np.ndarray, request: FileRequest) -> tuple[Iterator[Segment], FileInfo]:
        """A whole file (16 kHz mono float32): voice activity detection skips its silence, and segments
        are decoded lazily, window by window, as the returned iterator is advanced."""
        settings = self._settings
        segments, info = self._model.transcribe(  # type: ignore[attr-defined]
            audio,
            language=request.language,
            task=request.task,
            initial_prompt=request.prompt or None,
            beam_size=settings.beam_size,
            temperature=settings.temperatures if request.temperature is None else request.temperature,
            vad_filter=True,
            word_timestamps=request.word_timestamps,
        )
        file_info = FileInfo(
            info.language,
            round(float(info.language_probability), 4),
            round(float(info.duration), 3),
            round(float(info.duration_after_vad), 3),
        )
        return (_segment(segment, request.word_timestamps) for segment in segments), file_info

    def transcribe_partial(self, audio: np.ndarray, language: str | None) -> str:
        """A quick hypothesis of an utterance still being spoken: greedy, no timestamps, no fallback."""
        segments, _ = self._model.transcribe(  # type: ignore[attr-defined]
            audio,
            language=language,
            beam_size=1,
            temperature=0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()


def collect_transcript(
    segments_iter: Iterable[object],
    language: str,
    language_probability: float,
    audio: np.ndarray,
    started: float,
    should_stop: Callable[[], bool],
    word_timestamps: bool,
) -> Transcript:
    """faster-whisper's lazy segments decoded into our Transcript; stops between segments once should_stop() is true."""
    segments: list[Segment] = []
    for segment in segments_iter:
        segments.append(_segment(segment, word_timestamps))
        if should_stop():
            break
    return Transcript(
        text=" ".join(s.text for s in segments if s.text).strip(),
        language=language,
        language_probability=round(float(language_probability), 4),
        duration=round(len(audio) / WHISPER_SAMPLE_RATE, 3),
        transcribe_seconds=time.perf_counter() - started,
        segments=segments,
    )


def _segment(segment: object, word_timestamps: bool) -> Segment:
    """faster-whisper's segment as ours (rounded, text stripped)."""
    raw_words = getattr(segment, "words", None)
    words = (
        tuple(Word(round(w.start, 3), round(w.end, 3), w.word, round(w.probability, 4)) for w in raw_words)
        if word_timestamps and raw_words
        else None
    )
    return Segment(
        start=round(segment.start, 3),  # type: ignore[attr-defined]
        end=round(segment.end, 3),  # type: ignore[attr-defined]
        text=segment.text.strip(),  # type: ignore[attr-defined]
        words=words,
        id=segment.id,  # type: ignore[attr-defined]
        seek=segment.seek,  # type: ignore[attr-defined]
        tokens=tuple(segment.tokens),  # type: ignore[attr-defined]
        temperature=float(segment.temperature or 0.0),  # type: ignore[attr-defined]
        avg_logprob=round(float(segment.avg_logprob), 4),  # type: ignore[attr-defined]
        compression_ratio=round(float(segment.compression_ratio), 4),  # type: ignore[attr-defined]
        no_speech_prob=round(float(segment.no_speech_prob), 4),  # type: ignore[attr-defined]
    )
