"""A Piper voice's onnxruntime sessions, chosen by load: all cores for a synthesis that runs alone, a
share of them for each synthesis while others run (tts.piper.adaptive_threads).

Measured on 2 cores (bench/piper_probe.py): a lone sentence on onnxruntime's default threads (one per
core) takes about 1/1.5 of its time on one thread, but two syntheses at once, each on all cores,
oversubscribe them: eight sentences from two threads ran at 2.11/s that way and at 2.58/s with one
intra-op thread each. No one thread count serves both, and a session's count is fixed when it is
built. So a voice gets two sessions over the same weights, and each ONNX run (one sentence or
fragment) takes the wide one when no other synthesis of this engine is under way, the narrow one
otherwise (a run that began wide stays wide to its end).

The weights are held once: both sessions read the same buffers (SessionOptions.add_initializer). Only the
large float tensors are shared: onnxruntime's graph optimizations gave wrong shapes ("Attempting to
broadcast an axis by a dimension other than 1") when the small ones (norm gains, shape constants) were
overridden too, so every voice is checked against its plain session once, and a voice whose shared
sessions do not give the plain session's audio keeps the plain one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SHARED_MIN_ELEMENTS = 1024
"""Float initializers of at least this many elements are shared between the sessions: all but ~1% of a
VITS voice's bytes."""

_PROBE_IDS = [1, 0, 20, 0, 35, 0, 25, 0, 59, 0, 3, 0, 44, 0, 2]
"""Phoneme ids of a short word (ids Piper's English voices all have), for the check at load."""


class SynthesisLoad:
    """How many syntheses of one engine are under way now, across its voices and worker threads. A whole
    synthesis counts, not only its ONNX runs: between two sentences of one text (phonemization, handing the
    audio on) the other synthesis is not alone, and a wide run started in that gap would share the cores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @contextmanager
    def run(self) -> Iterator[None]:
        """Count one synthesis while the block lasts."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def shared(self) -> bool:
        """Whether another synthesis runs beside the caller's (a run outside any synthesis is not counted)."""
        return self._running > 1


class LoadAwareSession:
    """Stands in for PiperVoice's InferenceSession (PiperVoice calls only `run`)."""

    def __init__(self, wide: Any, narrow: Any, load: SynthesisLoad, weights: list[Any]) -> None:
        self._wide = wide
        self._narrow = narrow
        self._load = load
        self._weights = weights
        """The initializers both sessions read: onnxruntime does not copy them, so they live as long as we do."""

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        session = self._narrow if self._load.shared() else self._wide
        return session.run(output_names, input_feed, run_options)


def load_aware_session(model: Path, load: SynthesisLoad, narrow_threads: int, plain: Any) -> LoadAwareSession | None:
    """Two CPU sessions of `model` sharing its weights: onnxruntime's default threads (one per core), and
    `narrow_threads` (cores / tts.max_concurrent, so that that many syntheses at once fill the cores).
    None when they do not give the audio of `plain`, a plain session of the same model; raises what onnx or
    onnxruntime raise when they cannot be built."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    shared = [
        (tensor.name, onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(tensor))))
        for tensor in proto.graph.initializer
        if tensor.data_type == onnx.TensorProto.FLOAT and int(np.prod(tensor.dims)) >= SHARED_MIN_ELEMENTS
    ]
    graph = proto.SerializeToString()
    del proto

    def session(threads: int) -> Any:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        for name, value in shared:
            options.add_initializer(name, value)
        return onnxruntime.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])

    wide, narrow = session(0), session(narrow_threads)  # a failure to build them is the caller's to report
    if not all(_same_audio(plain, candidate) for candidate in (wide, narrow)):
        return None
    return LoadAwareSession(wide, narrow, load, [value for _, value in shared])


def _same_audio(plain: Any, candidate: Any) -> bool:
    """Whether `candidate` speaks the probe word as `plain` does, without noise (so both are deterministic)."""
    ids = np.array([_PROBE_IDS], dtype=np.int64)
    feed = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64)}
    feed["scales"] = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    if any(given.name == "sid" for given in plain.get_inputs()):
        feed["sid"] = np.array([0], dtype=np.int64)
    try:
        expected = plain.run(None, feed)[0]
        got = candidate.run(None, feed)[0]
    except Exception:  # onnxruntime raises its own Fail/RuntimeException types; unchecked is not the same
        return False
    return bool(got.shape == expected.shape and np.allclose(got, expected, rtol=1e-3, atol=1e-4))
