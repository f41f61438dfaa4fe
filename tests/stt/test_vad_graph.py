"""The batched Silero graph is built by a child process, so the STT service never imports onnx (about 14 MB)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.utils import get_assets_path
from structlog.testing import capture_logs

from core.config import PROJECT_ROOT
from stt import vad, vad_graph
from tests.fixtures.speech import make_speech

SOURCE = f"{get_assets_path()}/silero_vad_v6.onnx"


@pytest.fixture
def fresh_session() -> Iterator[None]:
    """The batched session is built once per process: build it again inside the test, and again after it."""
    vad._batched_session.cache_clear()
    yield
    vad._batched_session.cache_clear()


def test_the_child_builds_the_same_graph_as_this_process() -> None:
    assert vad_graph.build_in_child(SOURCE) == vad_graph.batched_graph(SOURCE)


def test_a_failed_build_says_why(tmp_path: Path) -> None:
    missing = f"{tmp_path}/no-such-model.onnx"
    with pytest.raises(vad_graph.GraphBuildError, match="exit status 1: .*no-such-model.onnx"):
        vad_graph.build_in_child(missing)


def test_the_service_process_never_imports_onnx() -> None:
    # A fresh interpreter: this one imported onnx for the tests above.
    script = (
        "import sys, numpy as np\n"
        "import stt.server\n"
        "from stt import vad\n"
        "vad.load()\n"
        "vads = [vad.StreamingVad(), vad.StreamingVad()]\n"
        "results = vad.score_batch(vads, [np.zeros(1024, np.float32)] * 2)\n"
        "assert [len(r.probabilities) for r in results] == [2, 2]\n"
        "print('onnx' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False"


def test_without_a_child_the_graph_is_built_here_and_scores_the_same(
    monkeypatch: pytest.MonkeyPatch, fresh_session: None
) -> None:
    audio = make_speech("Please turn on the kitchen lights.", lead_silence_s=0.3, trail_silence_s=0.3)
    streams = [audio, audio[::-1].copy()]
    expected = [r.probabilities for r in vad.score_batch([vad.StreamingVad(), vad.StreamingVad()], streams)]
    vad._batched_session.cache_clear()
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with capture_logs() as logs:
        scored = [r.probabilities for r in vad.score_batch([vad.StreamingVad(), vad.StreamingVad()], streams)]
    assert [log["event"] for log in logs] == ["vad_graph_child_failed"]
    assert "/nonexistent/python" in logs[0]["error"]
    for got, want in zip(scored, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_child_that_writes_something_else_falls_back_too(monkeypatch: pytest.MonkeyPatch, fresh_session: None) -> None:
    # What a stray print in the child's start-up (a sitecustomize, a .pth file) would do to its stdout.
    monkeypatch.setattr(vad_graph, "build_in_child", lambda source: b"hello\n" + vad_graph.batched_graph(source))
    with capture_logs() as logs:
        scores = vad.score_batch([vad.StreamingVad(), vad.StreamingVad()], [np.zeros(1024, np.float32)] * 2)
    assert [log["event"] for log in logs] == ["vad_graph_child_failed"]
    assert [len(result.probabilities) for result in scores] == [2, 2]
