"""faster-whisper's Silero v6 graph rewritten to score a batch of streams, built in a child process.

Editing the graph needs the `onnx` package, and importing it costs the process that does so about
14 MB for good: the STT service never needs it otherwise. So the service runs this module in a child
(`python -m stt.vad_graph SOURCE`), which writes the rewritten model to stdout, and loads the bytes with
onnxruntime alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The child's working directory, so that `-m stt.vad_graph` finds this file from wherever the service runs."""
_BUILD_TIMEOUT_S = 60.0
"""Generous: the child imports onnx and rewrites a 2 MB graph, about half a second here."""


class GraphBuildError(RuntimeError):
    """The child process could not build the batched graph."""


def batched_graph(source: str) -> bytes:
    """The Silero model at `source` with its LSTM fed a batch of streams instead of a sequence of windows."""
    import onnx

    model = onnx.load(source)
    graph = model.graph
    lstm = next(node for node in graph.node if node.op_type == "LSTM")
    to_lstm = next(node for node in graph.node if node.op_type == "Transpose" and node.output[0] == lstm.input[0])
    perm = next(attribute for attribute in to_lstm.attribute if attribute.name == "perm")
    # Encoder output [streams, 128, 1]: was [streams, 1, 128] (a sequence of windows of one stream),
    # now [1, streams, 128] (one time step of many streams). The decoder after the LSTM is per-row either way.
    perm.ints[:] = [2, 0, 1]
    for value in [*graph.input, *graph.output]:
        if value.name in ("h", "c", "hn", "cn"):
            value.type.tensor_type.shape.dim[1].dim_param = "streams"
    return model.SerializeToString()


def build_in_child(source: str) -> bytes:
    """`batched_graph(source)`, computed by a child Python so that this process never imports onnx. Blocking."""
    if not sys.executable or getattr(sys, "frozen", False):
        raise GraphBuildError("no Python to run it with (sys.executable is unset, or this is a frozen build)")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "stt.vad_graph", source],
            cwd=_PROJECT_ROOT,
            capture_output=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GraphBuildError(f"could not run {sys.executable}: {exc}") from exc
    if done.returncode != 0 or not done.stdout:
        stderr = done.stderr.decode(errors="replace").strip().splitlines()
        raise GraphBuildError(f"exit status {done.returncode}: {stderr[-1] if stderr else 'no output'}")
    return done.stdout


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m stt.vad_graph SILERO_ONNX  (writes the batched model to stdout)", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(batched_graph(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
