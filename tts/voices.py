"""Which voices exist: plain-name checks, the Piper voices folder, and downloading the missing default.

Names are validated before any file-system access, so a request can never make the service look
at (let alone load) a path outside the voices folder.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.config import VOICE_NAME_PATTERN
from core.errors import InvalidVoiceName
from core.logging import get_logger
from tts.engines.base import EngineStartError

log = get_logger(__name__)

VOICE_NAME = re.compile(VOICE_NAME_PATTERN)
MAX_VOICE_NAME_LENGTH = 100
MODEL_SUFFIX = ".onnx"
CONFIG_SUFFIX = ".onnx.json"

Downloader = Callable[[str, Path], None]
"""Fetches voice NAME's model and config into a folder (piper.download_voices.download_voice)."""


def check_voice_name(name: str) -> str:
    """`name` when it is a plain voice name; InvalidVoiceName otherwise. Touches no file."""
    if not isinstance(name, str) or not name or len(name) > MAX_VOICE_NAME_LENGTH or not VOICE_NAME.fullmatch(name):
        raise InvalidVoiceName(
            f"voice {str(name)[:120]!r} is not a plain voice name: use up to {MAX_VOICE_NAME_LENGTH} letters, "
            "digits, '_', '-', '+' and inner dots (e.g. en_US-lessac-medium), never a path"
        )
    return name


def language_matches(languages: list[str], wanted: str) -> bool:
    """`en` matches en_US and en-gb; `en_US` matches en-us."""
    wanted = wanted.replace("_", "-").casefold()
    return any(
        (code := language.replace("_", "-").casefold()) == wanted or code.startswith(wanted + "-") for language in languages
    )


def piper_voice_files(voices_dir: Path, name: str) -> tuple[Path, Path]:
    """Model and config paths of the Piper voice `name` (which must already be checked)."""
    return voices_dir / f"{name}{MODEL_SUFFIX}", voices_dir / f"{name}{CONFIG_SUFFIX}"


def piper_voice_present(voices_dir: Path, name: str) -> bool:
    model, config = piper_voice_files(voices_dir, check_voice_name(name))
    return model.is_file() and config.is_file() and model.stat().st_size > 0


def list_piper_voices(voices_dir: Path) -> list[str]:
    """Sorted names of the complete voices (model and config) in `voices_dir`."""
    if not voices_dir.is_dir():
        return []
    names = []
    for model in voices_dir.glob(f"*{MODEL_SUFFIX}"):
        name = model.name[: -len(MODEL_SUFFIX)]  # the suffix, not characters (never rstrip)
        if VOICE_NAME.fullmatch(name) and len(name) <= MAX_VOICE_NAME_LENGTH and model.is_file():
            if (voices_dir / f"{name}{CONFIG_SUFFIX}").is_file():
                names.append(name)
    return sorted(names)


def piper_downloader() -> Downloader:
    """Piper's own downloader (imported lazily: it is only needed when a voice is missing)."""
    from piper.download_voices import download_voice

    return lambda name, folder: download_voice(name, folder)


def ensure_piper_voice(voices_dir: Path, name: str, *, download: bool, downloader: Downloader | None = None) -> None:
    """Make sure voice `name` is in `voices_dir`, downloading it when allowed. Raises EngineStartError
    whose message says how to fix the problem. A failed download leaves no partial file behind: files
    are fetched into a temporary folder and moved into place only when complete."""
    check_voice_name(name)
    if piper_voice_present(voices_dir, name):
        return
    manual = (
        f"put {name}{MODEL_SUFFIX} and {name}{CONFIG_SUFFIX} into {voices_dir} "
        f"(e.g. `python -m piper.download_voices {name} --download-dir {voices_dir}` on a machine with "
        "internet access), or choose an installed voice with tts.voice"
    )
    if not download:
        raise EngineStartError(f"Piper voice {name!r} is not in {voices_dir} and tts.piper.download is off: {manual}")
    fetch = downloader or piper_downloader()
    try:
        voices_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineStartError(f"cannot create the voices folder {voices_dir}: {exc}; set tts.voices_dir") from None
    log.info("voice_download_started", voice=name, folder=str(voices_dir))
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=voices_dir))
    try:
        fetch(name, staging)
        model, config = piper_voice_files(staging, name)
        if not (model.is_file() and config.is_file() and model.stat().st_size > 0):
            raise OSError("the downloader finished without writing both files")
        target_model, target_config = piper_voice_files(voices_dir, name)
        # Config first, model last: a voice counts as present only once its model is in place.
        config.replace(target_config)
        model.replace(target_model)
    except Exception as exc:
        raise EngineStartError(f"could not download Piper voice {name!r} ({exc}): {manual}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("voice_downloaded", voice=name, folder=str(voices_dir))
