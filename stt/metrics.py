"""Prometheus metrics of the STT service, on the app's own registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.metrics import AUDIO_SECONDS_BUCKETS, LATENCY_BUCKETS, REAL_TIME_FACTOR_BUCKETS, render
from stt.engine import Transcript


class SttMetrics:
    def __init__(self, connections: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.final_latency = Histogram(
            "stt_final_latency_seconds",
            "From the end of speech (or the client's end message) to the final transcript being sent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transcribe_seconds = Histogram(
            "stt_transcribe_seconds", "Time faster-whisper took for one final transcript.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.real_time_factor = Histogram(
            "stt_real_time_factor",
            "Transcribe seconds per second of audio for final transcripts.",
            buckets=REAL_TIME_FACTOR_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "stt_queue_wait_seconds", "Wait for a free transcription worker.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.utterance_audio = Histogram(
            "stt_utterance_audio_seconds", "Length of transcribed utterances.", buckets=AUDIO_SECONDS_BUCKETS, registry=r
        )
        self.utterances = Counter(
            "stt_utterances_total", "Final transcripts by why the utterance ended.", ["reason"], registry=r
        )
        self.partials = Counter(
            "stt_partials_total", "Partial transcripts sent, or skipped because every worker was busy.", ["outcome"],
            registry=r,
        )
        self.speculative = Counter(
            "stt_speculative_finals_total",
            "Speculative finals by outcome: used as the final, dropped (speech resumed), skipped (no free worker).",
            ["outcome"],
            registry=r,
        )
        self.turns = Counter(
            "stt_turn_judgements_total", "End-of-turn model verdicts (smart_turn) on pauses.", ["verdict"], registry=r
        )
        self.audio_received = Counter(
            "stt_audio_received_seconds_total", "Seconds of audio received from clients.", registry=r
        )
        self.buffer_limit_reached = Counter(
            "stt_buffer_limit_reached_total", "Times a session's buffer filled up and audio was dropped.", registry=r
        )
        self.connections = Gauge("stt_connections", "Open /ws/stt sessions.", registry=r)
        self.connections.set_function(connections)
        self.connections_refused = Counter(
            "stt_connections_refused_total", "Sessions refused: stt.max_connections were open, or the backlog passed stt.max_backlog_seconds.", registry=r
        )
        self.workers_busy = Gauge("stt_workers_busy", "Transcriptions running now (finals and partials).", registry=r)
        self.model_loaded = Gauge("stt_model_loaded", "1 once the Whisper model is loaded.", registry=r)
        self.files = Counter(
            "stt_files_total", "Uploaded files transcribed, by outcome (ok or the error code).", ["outcome"], registry=r
        )
        self.file_audio = Histogram(
            "stt_file_audio_seconds", "Length of uploaded files.", buckets=(*AUDIO_SECONDS_BUCKETS, 300.0, 1800.0), registry=r
        )

    def observe_utterance(self, result: Transcript, reason: str, queue_wait_s: float) -> None:
        """One final transcription."""
        self.transcribe_seconds.observe(result.transcribe_seconds)
        self.real_time_factor.observe(result.real_time_factor)
        self.queue_wait.observe(queue_wait_s)
        self.utterance_audio.observe(result.duration)
        self.utterances.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        return render(self.registry)
