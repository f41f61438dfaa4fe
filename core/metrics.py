"""Prometheus conventions both services share: explicit buckets and rendering one registry.

Each app owns a CollectorRegistry (not the process-global one), so several apps in one process
(tests, embedders) never collide and /metrics shows exactly one service.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Seconds; dense below one second, where a voice assistant is judged."""
REAL_TIME_FACTOR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
"""Processing seconds per second of audio; above 1 the model cannot keep up with speech."""
AUDIO_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 60.0)
"""Length of an utterance or a spoken reply."""


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus text format, with its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
