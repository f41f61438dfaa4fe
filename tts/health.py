"""The TTS service's health report (GET /health): every reason it is degraded, with what to do, and what serves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core import __version__
from core.redact import public_url

if TYPE_CHECKING:
    from tts.service import TtsService


def health_report(service: TtsService) -> dict[str, Any]:
    """GET /health: ok or degraded with the reasons and what to do, and what serves."""
    engines = service.engines
    engine = engines.engine
    llm = service.settings.llm
    llm_health = service.llm_health
    reachable, model_ok = llm_health.reachable, llm_health.model_available
    reasons: list[str] = []
    if engines.loading:
        reasons.append(f"the {engines.configured} engine is starting")
    if engines.error:
        reasons.append(engines.error + (f"; speaking with {engine.name} instead" if engine and engines.fallback else ""))
    reasons += [f"{slot.error}; requests for it fail" for slot in engines.slots.values() if slot.error and slot is not engines.default]
    if llm_health.checked_at is not None and not reachable:
        reasons.append(f"{service.llm.server} is not reachable at {public_url(llm.url)}: replies (reply true) fail")
    elif llm_health.failure is not None:
        reasons.append(f"{llm_health.failure} (at {public_url(llm.url)}): replies (reply true) fail; check its log")
    elif model_ok is False:
        fix = f"run `ollama pull {llm.model}`" if llm.provider == "ollama" else "set llm.model to a model it serves"
        reasons.append(f"{service.llm.server} has no model {llm.model!r}: {fix}")
    return {
        "status": "ok" if not reasons else "degraded",
        "reasons": reasons,
        "loading": engines.loading,
        "llm_reachable": reachable,
        "ollama": reachable,  # the name before llm.provider; kept for existing clients
        "llm_provider": llm.provider,
        "llm_model": llm.model,
        "llm_model_available": model_ok,
        "llm_failure": llm_health.failure,
        "environment": service.settings.environment,
        "engine": engine.name if engine else engines.configured,
        "configured_engine": engines.configured,
        "fallback": engines.fallback,
        "engines": {name: slot.state for name, slot in engines.slots.items()},
        "voice": engine.default_voice if engine else engines.configured_voice(),
        "voice_loaded": bool(engine and engine.voice_loaded),
        "workers": service.workers(),
        "jobs": service.jobs.health(),
        **{name: report() for name, report in service.listeners.items()},
        "version": __version__,
    }

