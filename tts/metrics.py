"""The TTS service's Prometheus metrics, in a registry of its own (see core.metrics).

Every turn (POST /tts, /tts/stream, the SSE routes and each WS generation) is observed once, when it
ends, from its TurnTimings: per-stage histograms (LLM time to first token and token rate, time to
first audio, synthesis time and real-time factor, waits for a worker) and a counter of outcomes.
Gauges read the worker pool's live counters when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.metrics import AUDIO_SECONDS_BUCKETS, LATENCY_BUCKETS, REAL_TIME_FACTOR_BUCKETS, render
from tts.turn import TurnTimings
from tts.workers import WorkerPool

TOKENS_PER_SECOND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0, 120.0, 200.0)
"""LLM tokens per second after the first token; below about 5 a spoken reply stalls between sentences.
(core.metrics has no token-rate buckets; they live here until the STT side needs them too.)"""

ENDPOINTS = ("tts", "stream", "sse", "ws", "openai", "wyoming", "speech", "job")
"""The `endpoint` label: POST /tts, POST /tts/stream, the SSE routes, WS /ws/tts, POST /v1/audio/speech, Wyoming,
POST /v1/speech, and a job's turns."""


class TtsMetrics:
    """The metric objects of one TTS app, in its own CollectorRegistry."""

    def __init__(self, pool: WorkerPool, websocket_clients: Callable[[], int] = lambda: 0) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.turns = Counter(
            "tts_turns",
            "Turns that ended, by endpoint and outcome (ok, cancelled, or the error code).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.llm_time_to_first_token = Histogram(
            "tts_llm_time_to_first_token_seconds",
            "From sending the request to Ollama to its first token (retries included).",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.llm_tokens_per_second = Histogram(
            "tts_llm_tokens_per_second",
            "LLM generation rate after the first token, per reply.",
            registry=registry,
            buckets=TOKENS_PER_SECOND_BUCKETS,
        )
        self.llm_tokens = Counter("tts_llm_tokens", "Tokens received from the LLM.", registry=registry)
        self.time_to_first_audio = Histogram(
            "tts_time_to_first_audio_seconds",
            "From the request (or text_input) to the first audio ready to send, by endpoint.",
            ["endpoint"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.synthesis = Histogram(
            "tts_synthesis_seconds",
            "Seconds in a worker per synthesis (one fragment of a turn).",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.real_time_factor = Histogram(
            "tts_synthesis_real_time_factor",
            "Synthesis seconds per second of audio, per synthesis.",
            registry=registry,
            buckets=REAL_TIME_FACTOR_BUCKETS,
        )
        self.queue_wait = Histogram(
            "tts_queue_wait_seconds",
            "Seconds waited for a free worker, per synthesis.",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.audio = Histogram(
            "tts_audio_seconds",
            "Seconds of audio spoken per turn.",
            registry=registry,
            buckets=AUDIO_SECONDS_BUCKETS,
        )
        self.turn_duration = Histogram(
            "tts_turn_seconds",
            "From the request to the end of the turn, by endpoint.",
            ["endpoint"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._gauges(pool, websocket_clients)
        for endpoint in ENDPOINTS:  # every series exists from the start, at zero
            self.time_to_first_audio.labels(endpoint)
            self.turn_duration.labels(endpoint)

    def _gauges(self, pool: WorkerPool, websocket_clients: Callable[[], int]) -> None:
        """Read live when scraped."""
        registry = self.registry
        counters = pool.counters
        Gauge("tts_workers_running", "Syntheses running now.", registry=registry).set_function(
            lambda: counters.running
        )
        Gauge("tts_workers_waiting", "Syntheses waiting for a worker now.", registry=registry).set_function(
            lambda: counters.waiting
        )
        Gauge(
            "tts_workers_max", "Syntheses that may run at once (tts.max_concurrent).", registry=registry
        ).set_function(lambda: pool.size)
        Gauge("tts_streaming_turns", "Turns in progress now.", registry=registry).set_function(
            lambda: counters.turns
        )
        Gauge("tts_websocket_clients", "Clients connected to /ws/tts now.", registry=registry).set_function(
            websocket_clients
        )

    def observe_turn(self, endpoint: str, timings: TurnTimings, outcome: str) -> None:
        """Record one ended turn. `outcome`: ok, cancelled, or the error code."""
        self.turns.labels(endpoint, outcome).inc()
        llm = timings.llm
        if llm is not None:
            if llm.time_to_first_token_s is not None:
                self.llm_time_to_first_token.observe(llm.time_to_first_token_s)
            if llm.tokens_per_s is not None:
                self.llm_tokens_per_second.observe(llm.tokens_per_s)
            self.llm_tokens.inc(llm.tokens)
        if timings.time_to_first_audio_s is not None:
            self.time_to_first_audio.labels(endpoint).observe(timings.time_to_first_audio_s)
        for seconds, audio_s in timings.syntheses:
            self.synthesis.observe(seconds)
            if audio_s > 0:
                self.real_time_factor.observe(seconds / audio_s)
        for wait in timings.queue_waits:
            self.queue_wait.observe(wait)
        if outcome == "ok":
            self.audio.observe(timings.audio_s)
        if timings.total_s is not None:
            self.turn_duration.labels(endpoint).observe(timings.total_s)

    def render(self) -> tuple[bytes, str]:
        return render(self.registry)
