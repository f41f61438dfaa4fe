"""/health and the LLM, against the real Ollama double: a change shows within one probe interval without
/health being asked (the probe runs ahead of the cache's expiry), and a server that answers with errors
is reported as failing, not as not running."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import make_settings, serve, wait_for

CACHE_S = 1.0
INTERVAL_S = CACHE_S / 2
"""The background probe runs every half of llm.health_cache_s."""


def test_health_notices_ollama_dying_within_a_probe_interval_unasked(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url, llm={"health_cache_s": CACHE_S})) as (server, client):
        wait_for(lambda: client.get("/health").json()["status"] == "ok")
        probe = server.app.state.service.llm_health
        ollama.stop()
        # No /health in between: the probe runs by itself, before the last result is due.
        wait_for(lambda: not probe.reachable, timeout=4 * INTERVAL_S + 1.0, what=lambda: probe.__dict__)
        health = client.get("/health").json()  # the first /health after the death already knows
    assert health["status"] == "degraded" and health["llm_reachable"] is False
    assert health["reasons"] == [f"Ollama is not reachable at {ollama.url}: replies (reply true) fail"]


def test_an_ollama_answering_500_is_failing_not_unreachable(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.tags_fail_status = 500
    with serve(make_settings(voices_dir, ollama.url, llm={"health_cache_s": CACHE_S})) as (_, client):
        wait_for(lambda: client.get("/health").json()["llm_failure"] is not None)
        failing = client.get("/health").json()
        ollama.behaviour.tags_fail_status = 0
        wait_for(lambda: client.get("/health").json()["status"] == "ok", timeout=4 * INTERVAL_S + 1.0)
        recovered = client.get("/health").json()
    failure = "Ollama failed: it answered 500 (llama runner process has terminated)"
    assert (failing["status"], failing["llm_reachable"], failing["llm_failure"]) == ("degraded", True, failure)
    assert failing["reasons"] == [f"{failure} (at {ollama.url}): replies (reply true) fail; check its log"]
    assert (recovered["llm_reachable"], recovered["llm_failure"], recovered["llm_model_available"]) == (True, None, True)
