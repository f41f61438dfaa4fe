"""Schemathesis against each real service, over its own /openapi.json: every operation, every check
(`--checks all`), each service on a real uvicorn with its real engines (the toy Whisper model, the
synthetic Piper voice, the Ollama double as the LLM; the TTS service forwards transcriptions to a real
STT service). Any failure is a server error, or a place where the document and the code disagree.

Reproducible on every clean clone: a fixed seed, derandomized generation, no example database, and a
bounded number of examples per operation, so the module runs in about a minute on two cores.

No operation is excluded: the streamed audio of /tts/stream, /tts/sse and /v1/audio/speech is read to
its end and checked like any other body. Two checks are relaxed, each for one reason given in CONFIG.
The WebSocket routes are not in the document (tests/test_ws_fuzz.py). For a deeper run:
`FUZZ_MAX_EXAMPLES=200 .venv/bin/python -m pytest tests/test_openapi_schemathesis.py`.
"""

from __future__ import annotations

import io
import os
import wave
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import events, from_schema
from schemathesis.specs.openapi import unregister_string_format

from core.config import Settings
from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_catalog import PiperCatalogDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import RunningServer, run_server
from tests.stt.test_server import wait_until_settled
from tests.tts.conftest import VOICE, serve
from tests.tts.conftest import make_settings as tts_settings

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))
"""Per operation and generation phase: enough to reach every field's edges, few enough for CI."""

CONFIG: dict[str, Any] = {
    "seed": 20240611,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    # Every check schemathesis has is on by default, as with `--checks all` (max_response_time only
    # with a limit: timing claims belong in bench/).
    "checks": {
        # text_too_long answers 413 (core.http.HTTP_STATUS), which schemathesis does not count as a refusal.
        "negative_data_rejection": {"expected-statuses": ["400", "404", "405", "409", "413", "415", "422", "429", "5xx"]},
    },
    "operations": [
        {
            # Query parameters are independent in OpenAPI: the one rule across them (conversation_id only
            # with reply true) cannot be written into the document, so a schema-valid query may get 422.
            "include-name": "GET /tts/sse",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
                }
            },
        },
        {
            # A voice upload holds a Piper model and config, or a clip of speech: the files the fuzzer fills
            # (noise WAVs) are neither, and are refused (invalid_voice) as the document says; the uploads that
            # load are tests/tts/test_voice_management.py's. Its form is multipart, as below.
            "include-name": "POST /v1/voices",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]
                },
                "negative_data_rejection": {"enabled": False},
            },
        },
        {
            # Whether a text is well-formed SSML (text_format ssml, or text starting with <speak) cannot be
            # written into JSON Schema: a schema-valid body may hold malformed markup (invalid_ssml). The
            # SSML refusals have their own tests (tests/core/test_ssml.py, tests/tts/test_ssml_speech.py).
            # Nor can which speakers a voice has (a speaker the voice lacks is invalid_request; their test is
            # tests/tts/test_voice_management.py's). Both hold for GET /tts/sse's query too.
            "include-path-regex": "^/(tts|tts/stream|tts/sse|v1/audio/speech)$",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]
                }
            },
        },
        {
            # A document's blocks may hold SSML (as above), and the limit on all their characters together
            # cannot be written into JSON Schema either (only each block's): 413. Their own tests:
            # tests/tts/test_documents.py.
            "include-path-regex": "^/v1/speech",
            "include-method": "POST",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]
                }
            },
        },
        {
            # DELETE of a queued or running job cancels it, and the job stays to say so (state cancelled,
            # as the issue asks); only a second DELETE removes it. Schemathesis takes any DELETE for a removal.
            "include-path-regex": "^/v1/speech/jobs/",
            "checks": {"use_after_free": {"enabled": False}},
        },
        {
            # Schemathesis cannot re-validate a multipart body that holds a file (its validator takes no
            # bytes), so it cannot see that a type mutation of a text field is valid once sent as text
            # (model: true arrives as the model name "true"). The form's refusals have their own tests
            # (tests/stt/test_openai_transcription.py).
            "include-path-regex": "^/v1/audio/(transcriptions|translations)$",
            "checks": {"negative_data_rejection": {"enabled": False}},
        },
    ],
}


@dataclass
class Findings:
    operations: set[str]
    """Every operation of the document."""
    problems: list[str] = field(default_factory=list)
    """Every failed check and error, with a curl line that reproduces it."""
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    """The statuses each operation answered."""


def fuzz(url: str) -> Findings:
    """Schemathesis' run over the service whose document is at `url`."""
    schema = schemathesis.openapi.from_url(url, config=schemathesis.Config.from_dict(CONFIG))
    found = Findings(operations={result.ok().label for result in schema.get_all_operations()})
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(event.recorder, found)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            found.problems.append(f"{type(event).__name__}: {getattr(event, 'value', getattr(event, 'exception', ''))!r}")
    return found


def _record(recorder: Any, found: Findings) -> None:
    for case_id, interaction in recorder.interactions.items():
        if interaction.response is not None:
            found.statuses[recorder.cases[case_id].value.operation.label][interaction.response.status_code] += 1
    for checks in recorder.checks.values():
        for check in checks:
            if check.failure_info is not None:
                failure = check.failure_info.failure
                found.problems.append(
                    f"{recorder.label} [{check.name}] {failure.title}: {failure.message}\n    {check.failure_info.code_sample}"
                )


NO_SUCCESS_WITHOUT_AN_UPLOAD = frozenset({
    "POST /v1/voices", "DELETE /v1/voices/{engine}:{name}", "PUT /v1/voices/{engine}:{name}/shared",
    "POST /v1/voices/download", "GET /v1/voices/download/{job_id}", "GET /v1/voices/download/{job_id}/events",
})
"""Operations that succeed only on a voice uploaded first (no fuzzed file is a loadable voice, and voices put
in the folder by hand are neither deleted nor shared), or on a voice of the catalog and the job its download
started (no fuzzed id is either): their successes are tests/tts/test_voice_management.py's and
tests/tts/test_voice_catalog.py's."""


REACHED_BY_LINKS_ONLY = frozenset({
    "GET /v1/conversations/{conversation_id}", "DELETE /v1/conversations/{conversation_id}",
    "GET /v1/speech/jobs/{job_id}", "DELETE /v1/speech/jobs/{job_id}",
})
"""Operations that succeed only on an id another answer gave (a reply's conversation, a submitted job): the
stateful phase reaches them when its random walk follows that link, and how its fixed budget spreads over the
links changes whenever an operation is added (a merge that added the voice routes left these two unreached
on the same seed). Their successes are tests/tts/test_conversations.py's and tests/tts/test_jobs.py's; here
they must still answer every request as documented."""


def assert_agrees(found: Findings, pending: frozenset[str] = frozenset()) -> None:
    """No failure, and every operation was reached and answered some request with success (but those in
    `pending`, which need a state the fuzzer cannot wait for)."""
    assert found.problems == [], "\n".join(found.problems)
    assert set(found.statuses) == found.operations
    unanswered = {name for name, statuses in found.statuses.items() if not any(200 <= s < 300 for s in statuses)}
    assert unanswered <= pending, {name: dict(found.statuses[name]) for name in sorted(unanswered - pending)}


def _wav(rate: int, seconds: float, seed: int) -> bytes:
    samples = np.random.default_rng(seed).normal(0, 3000, int(rate * seconds)).clip(-32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


@pytest.fixture
def audio_uploads() -> Iterator[None]:
    """Every `format: binary` field the fuzzer fills holds a real WAV (noise of some length and rate), so
    schema-valid uploads reach the model: the document can say "a file", not "a file a decoder reads".
    Undecodable files are the STT tests' own (tests/stt/test_openai_transcription.py)."""
    files = st.builds(_wav, st.sampled_from([8_000, 16_000, 44_100]), st.sampled_from([0.1, 0.5, 1.0]), st.integers(0, 9))
    schemathesis.openapi.format("binary", files)
    yield
    unregister_string_format("binary")  # back to schemathesis' own


@pytest.fixture
def stt_server(make_settings: Any) -> Iterator[RunningServer]:
    with run_server(create_stt_app(make_settings(logging={"level": "warning"}))) as server:
        wait_until_settled(server)
        yield server


def test_the_stt_service_agrees_with_its_openapi_document(stt_server: RunningServer, audio_uploads: None) -> None:
    found = fuzz(f"{stt_server.http_url}/openapi.json")
    assert_agrees(found)


def test_the_tts_service_agrees_with_its_openapi_document(
    tmp_path: Path, ollama: OllamaDouble, stt_server: RunningServer, audio_uploads: None
) -> None:
    build_piper_voice(tmp_path / "voices", VOICE)
    # A small text limit keeps the over-long texts the fuzzer sends (and their refusals) cheap.
    repository = PiperCatalogDouble(tmp_path / "repository", ["en_GB-alba-medium"]).start()
    piper = {"catalog_url": f"{repository.url}/voices.json", "download_base_url": f"{repository.url}/"}
    # No job worker threads: jobs stay queued, so what the fuzzer's sequences see of them does not depend on
    # how fast a worker renders (the job routes' answers in every state are tests/tts/test_jobs.py's).
    base = tts_settings(
        tmp_path / "voices", ollama.url, max_text_length=200, data_dir=str(tmp_path / "data"), piper=piper,
        jobs={"workers": 0},
    )
    settings = Settings(**{**base.model_dump(), "stt": {"host": stt_server.host, "port": stt_server.port}})
    try:
        with serve(settings) as (server, _):
            found = fuzz(f"{server.http_url}/openapi.json")
    finally:
        repository.stop()
    # A job's audio exists only once the job is done, and here none is (409 job_not_done).
    assert_agrees(found, pending=NO_SUCCESS_WITHOUT_AN_UPLOAD | REACHED_BY_LINKS_ONLY | {"GET /v1/speech/jobs/{job_id}/audio"})
