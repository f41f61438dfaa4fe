"""The voices kept on disk at run time: Piper voices uploaded (or downloaded from the catalog) into
tts.voices_dir, XTTS voices cloned from a reference clip into tts.xtts.speakers_dir, where each came
from and which key owns it, and removing them again.

Where a voice came from and who owns it is kept beside it in `NAME.voice.json`; a voice without one
was put in the folder by hand (`local`). Names are checked before they touch the file system; files
are written under a temporary name in the same folder and renamed into place, the voice's main file
last, so no half voice is ever listed. Every method blocks (file work, loading a model to check it):
callers run them in a worker thread.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from core.access import Principal, may_see
from core.audio import decode_file, float32_to_pcm16, wav_bytes
from core.config import Settings
from core.errors import InvalidVoice, VoiceConflict
from core.logging import get_logger
from tts.voices import check_voice_name, piper_voice_files

log = get_logger(__name__)

Origin = Literal["local", "downloaded", "uploaded", "cloned"]
META_SUFFIX = ".voice.json"
CLIP_RATE = 22_050
"""XTTS reads its reference clips at 22,050 Hz mono: clips are kept in that form."""
CLIP_PEAK = 0.9
"""Clips are scaled to this peak (about -1 dBFS): loud enough to clone from, never clipped."""


@dataclass(frozen=True)
class VoiceMeta:
    origin: Origin = "local"
    owner: str | None = None
    """The key that uploaded or cloned it (None: no key, or auth off); only it sees the voice unless shared."""
    shared: bool = False
    """An admin shared it with every key."""
    description: str = ""
    language: str | None = None
    """The language given when it was cloned (Piper voices carry theirs in their config)."""

    def visible_to(self, principal: Principal | None) -> bool:
        return self.shared or may_see(self.owner, principal)


class VoiceStore:
    def __init__(self, settings: Settings) -> None:
        tts = settings.tts
        self.folders: dict[str, Path] = {
            "piper": settings.resolve_path(tts.voices_dir),
            "xtts": settings.resolve_path(tts.xtts.speakers_dir),
        }
        """The engines whose voices are files, and their folders."""
        self.xtts = tts.xtts
        self._lock = threading.Lock()
        """Held while a voice is put in place or removed: two uploads of one name cannot both win."""

    def meta(self, engine: str, name: str) -> VoiceMeta:
        folder = self.folders.get(engine)
        if folder is None:
            return VoiceMeta()
        try:
            data = json.loads((folder / f"{name}{META_SUFFIX}").read_text(encoding="utf-8"))
            return VoiceMeta(**data)
        except (OSError, ValueError, TypeError):
            return VoiceMeta()

    def _write_meta(self, folder: Path, name: str, meta: VoiceMeta) -> None:
        staged = folder / f".{name}{META_SUFFIX}.tmp"
        staged.write_text(json.dumps(asdict(meta)), encoding="utf-8")
        staged.replace(folder / f"{name}{META_SUFFIX}")

    def set_shared(self, engine: str, name: str, shared: bool) -> VoiceMeta:
        meta = self.meta(engine, name)
        updated = VoiceMeta(**{**asdict(meta), "shared": shared})
        with self._lock:
            self._write_meta(self.folders[engine], name, updated)
        return updated

    @contextmanager
    def staging(self, engine: str) -> Iterator[Path]:
        """A temporary folder inside `engine`'s voices folder (so a rename out of it is atomic), removed after."""
        staging = self.open_staging(engine)
        try:
            yield staging
        finally:
            self.drop_staging(staging)

    def open_staging(self, engine: str) -> Path:
        """A new staging folder of `engine` (see staging()); the caller drops it with drop_staging."""
        folder = self.folders[engine]
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".upload-", dir=folder))

    @staticmethod
    def drop_staging(staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def add_piper(self, name: str, model: bytes, config: bytes, meta: VoiceMeta) -> None:
        """Keep a Piper voice once Piper has loaded it; InvalidVoice saying what is wrong, VoiceConflict for a
        name in use."""
        check_voice_name(name)
        self.refuse_taken("piper", name)
        with self.staging("piper") as staging:
            staged_model, staged_config = piper_voice_files(staging, name)
            staged_model.write_bytes(model)
            staged_config.write_bytes(config)
            self.install_piper(name, staging, meta)

    def install_piper(self, name: str, staging: Path, meta: VoiceMeta) -> None:
        """Move the Piper voice `name` in `staging` (a folder from staging()) into place once Piper loads it."""
        staged_model, staged_config = piper_voice_files(staging, name)
        _check_piper(staged_model, staged_config)
        folder = self.folders["piper"]
        target_model, target_config = piper_voice_files(folder, name)
        with self._lock:
            self.refuse_taken("piper", name)
            self._write_meta(folder, name, meta)
            # Config first, model last: a voice counts as present only once its model is in place.
            staged_config.replace(target_config)
            staged_model.replace(target_model)
        log.info("voice_added", engine="piper", voice=name, origin=meta.origin, owner=meta.owner)

    def add_clip(self, name: str, clip: bytes, meta: VoiceMeta) -> float:
        """Keep a reference clip for XTTS, decoded (any format PyAV reads), checked for length and loudness and
        normalised to 22,050 Hz mono PCM16 WAV; its length in seconds."""
        check_voice_name(name)
        folder = self.folders["xtts"]
        self.refuse_taken("xtts", name)
        samples = decode_file(clip, CLIP_RATE, self.xtts.clip_max_s, "tts.xtts.clip_max_s")
        seconds = len(samples) / CLIP_RATE
        if seconds < self.xtts.clip_min_s:
            raise InvalidVoice(
                f"the clip is {seconds:.1f} s long; a voice is cloned from at least {self.xtts.clip_min_s:g} s of "
                f"clean speech (tts.xtts.clip_min_s), at most {self.xtts.clip_max_s:g} s",
                param="file",
            )
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        level = 20 * np.log10(rms) if rms > 0 else -np.inf
        if level < self.xtts.clip_min_dbfs:
            raise InvalidVoice(
                f"the clip is too quiet to clone from ({level:.1f} dBFS; the least is {self.xtts.clip_min_dbfs:g} "
                "dBFS, tts.xtts.clip_min_dbfs): record closer to the microphone",
                param="file",
            )
        peak = float(np.max(np.abs(samples)))
        wav = wav_bytes(float32_to_pcm16(samples * (CLIP_PEAK / peak)), CLIP_RATE)
        with self.staging("xtts") as staging:
            staged = staging / f"{name}.wav"
            staged.write_bytes(wav)
            with self._lock:
                self.refuse_taken("xtts", name)
                self._write_meta(folder, name, meta)
                staged.replace(folder / f"{name}.wav")
        log.info("voice_added", engine="xtts", voice=name, origin=meta.origin, owner=meta.owner, seconds=round(seconds, 2))
        return seconds

    def refuse_taken(self, engine: str, name: str) -> None:
        """VoiceConflict when `engine` has a voice `name` already."""
        main = self.folders[engine] / (f"{name}.onnx" if engine == "piper" else f"{name}.wav")
        if main.exists():
            raise VoiceConflict(
                f"the {engine} engine already has a voice {name!r}; choose another name, or delete that one first",
                param="name",
            )

    def delete(self, engine: str, name: str) -> None:
        """Remove a voice's files (its main file first, so it stops being listed at once)."""
        folder = self.folders[engine]
        files = [*piper_voice_files(folder, name)] if engine == "piper" else [folder / f"{name}.wav"]
        with self._lock:
            for path in [*files, folder / f"{name}{META_SUFFIX}"]:
                path.unlink(missing_ok=True)
        log.info("voice_deleted", engine=engine, voice=name)


def _check_piper(model: Path, config: Path) -> None:
    """InvalidVoice unless Piper loads the voice."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidVoice(f"the config is not JSON ({exc}); send the voice's .onnx.json", param="config") from None
    audio = data.get("audio") if isinstance(data, dict) else None
    if not isinstance(audio, dict) or not isinstance(audio.get("sample_rate"), int):
        raise InvalidVoice("the config is not a Piper voice config (no audio.sample_rate); send its .onnx.json", param="config")
    from piper import PiperVoice

    try:
        PiperVoice.load(model, config_path=config)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise InvalidVoice(
            f"Piper cannot load the voice ({reason}); send the .onnx model and the .onnx.json config of one voice",
            param="model",
        ) from None
