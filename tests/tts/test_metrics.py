"""GET /metrics on the TTS service: Prometheus text format, explicit buckets, counts after real requests."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from core.metrics import AUDIO_SECONDS_BUCKETS, LATENCY_BUCKETS, REAL_TIME_FACTOR_BUCKETS
from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import make_settings, serve
from tts.metrics import TOKENS_PER_SECOND_BUCKETS


def families(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def buckets(samples: list, name: str, **labels: str) -> list[float]:
    return [
        float(s.labels["le"])
        for s in samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_metrics_before_and_after_requests(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = "Hello there, my friend. How are you today?"
    ollama.behaviour.tokens = "words"
    with serve(make_settings(voices_dir, ollama.url, max_concurrent=3)) as (_, client):
        empty = client.get("/metrics")
        assert client.post("/tts", json={"text": "Hi"}).status_code == 200
        assert client.post("/tts/stream", json={"text": "Hi"}).status_code == 200
        assert client.post("/tts", json={"text": "Read this.", "reply": False}).status_code == 200
        after = client.get("/metrics")

    assert empty.status_code == 200
    assert empty.headers["content-type"].startswith("text/plain; version=")
    before = families(empty.text)
    expected = {
        "tts_turns",
        "tts_llm_time_to_first_token_seconds",
        "tts_llm_tokens_per_second",
        "tts_llm_tokens",
        "tts_time_to_first_audio_seconds",
        "tts_synthesis_seconds",
        "tts_synthesis_real_time_factor",
        "tts_queue_wait_seconds",
        "tts_audio_seconds",
        "tts_turn_seconds",
        "tts_workers_running",
        "tts_workers_waiting",
        "tts_workers_max",
        "tts_streaming_turns",
        "tts_websocket_clients",
    }
    assert {name for name in before if not name.endswith("_created")} == expected  # one service, its own registry: no process or platform collectors
    infinity = [float("inf")]
    assert buckets(before["tts_time_to_first_audio_seconds"], "tts_time_to_first_audio_seconds", endpoint="tts") == [
        *LATENCY_BUCKETS,
        *infinity,
    ]
    assert buckets(before["tts_synthesis_real_time_factor"], "tts_synthesis_real_time_factor") == [
        *REAL_TIME_FACTOR_BUCKETS,
        *infinity,
    ]
    assert buckets(before["tts_audio_seconds"], "tts_audio_seconds") == [*AUDIO_SECONDS_BUCKETS, *infinity]
    assert buckets(before["tts_llm_tokens_per_second"], "tts_llm_tokens_per_second") == [
        *TOKENS_PER_SECOND_BUCKETS,
        *infinity,
    ]
    assert value(before["tts_workers_max"], "tts_workers_max") == 3
    assert value(before["tts_time_to_first_audio_seconds"], "tts_time_to_first_audio_seconds_count", endpoint="ws") == 0

    now = families(after.text)
    turns = now["tts_turns"]
    assert value(turns, "tts_turns_total", endpoint="tts", outcome="ok") == 2
    assert value(turns, "tts_turns_total", endpoint="stream", outcome="ok") == 1
    ttfa = now["tts_time_to_first_audio_seconds"]
    assert value(ttfa, "tts_time_to_first_audio_seconds_count", endpoint="tts") == 2
    assert value(ttfa, "tts_time_to_first_audio_seconds_count", endpoint="stream") == 1
    assert value(ttfa, "tts_time_to_first_audio_seconds_count", endpoint="sse") == 0
    # Two replies from the LLM (the third request spoke its text): 8 word tokens each.
    assert value(now["tts_llm_time_to_first_token_seconds"], "tts_llm_time_to_first_token_seconds_count") == 2
    assert value(now["tts_llm_tokens"], "tts_llm_tokens_total") == 16
    assert value(now["tts_llm_tokens_per_second"], "tts_llm_tokens_per_second_count") == 2
    # Syntheses: one per fragment, whatever the endpoint: two per reply (two sentences), one for the text.
    assert value(now["tts_synthesis_seconds"], "tts_synthesis_seconds_count") == 5
    assert value(now["tts_synthesis_real_time_factor"], "tts_synthesis_real_time_factor_count") == 5
    assert value(now["tts_queue_wait_seconds"], "tts_queue_wait_seconds_count") == 5
    assert value(now["tts_audio_seconds"], "tts_audio_seconds_count") == 3
    assert value(now["tts_turn_seconds"], "tts_turn_seconds_count", endpoint="tts") == 2
    assert value(now["tts_workers_running"], "tts_workers_running") == 0
    # Cumulative buckets end at the count.
    assert value(ttfa, "tts_time_to_first_audio_seconds_bucket", endpoint="tts", le="+Inf") == 2
