"""core.priority: a model built at a lower priority runs its own threads at it; the caller keeps its own."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT, Settings
from core.priority import build_at_nice
from stt.engine import WhisperEngine

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")


def _nice(tid: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id())


def test_the_build_and_the_threads_it_starts_run_lower_and_the_caller_does_not() -> None:
    base = _nice()
    seen: dict[str, int] = {}

    def build() -> str:
        seen["builder"] = _nice()
        child = threading.Thread(target=lambda: seen.__setitem__("child", _nice()))
        child.start()
        child.join()
        return "built"

    assert build_at_nice(build, 5) == "built"
    assert seen == {"builder": min(19, base + 5), "child": min(19, base + 5)}
    assert _nice() == base


def test_a_failed_build_raises_in_the_caller() -> None:
    def build() -> None:
        raise OSError("no such model")

    with pytest.raises(OSError, match="no such model"):
        build_at_nice(build, 3)


def test_ctranslate2_workers_run_at_stt_transcribe_nice(whisper_model_dir: Path, tmp_path: Path) -> None:
    base = _nice()
    before = set(os.listdir("/proc/self/task"))
    stt = Settings(stt={"model": str(whisper_model_dir), "transcribe_nice": 7, "max_concurrent": 2}).stt
    engine = WhisperEngine.load(stt, tmp_path, PROJECT_ROOT)
    started = {int(tid) for tid in set(os.listdir("/proc/self/task")) - before}
    python_threads = {thread.native_id for thread in threading.enumerate()}
    # The threads CTranslate2 started (none of them Python's): its two workers at least, all lowered.
    native = started - python_threads
    assert len(native) >= 2
    assert {_nice(tid) for tid in native} == {min(19, base + 7)}
    assert _nice() == base
    assert engine.loaded.device == "cpu"
