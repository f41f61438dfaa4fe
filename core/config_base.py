"""The building blocks of the configuration shared by every section, and the sections of no one service."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    """Lowest level that is logged."""
    json_logs: bool = Field(False, validation_alias=AliasChoices("json", "json_logs"), alias="json")
    """One JSON object per line (production) instead of readable console lines."""
    to_supervisor: bool = False
    """Set by run_services.py for the services it starts: they write JSON lines for the supervisor, which
    shows them as logging.json says. Not meant to be set by hand."""

    @property
    def writes_json(self) -> bool:
        return self.json_logs or self.to_supervisor


class LlmSettings(Section):
    provider: Literal["ollama", "openai"] = "ollama"
    """ollama: Ollama's own API; openai: any OpenAI-compatible chat completions server (llama-server, vLLM,
    LM Studio, LocalAI, Ollama's /v1, OpenAI)."""
    url: str = "http://localhost:11434"
    """The LLM server: Ollama's address, or an OpenAI-compatible server's base URL such as
    http://localhost:8080/v1 (OLLAMA_URL is accepted too)."""
    model: str = "llama3.2:3b"
    """The model that writes the replies."""
    api_key: SecretStr | None = None
    """API key of an OpenAI-compatible server that asks for one; never logged or reported."""
    system_prompt: str = (
        "You are a helpful voice assistant. Answer briefly in plain spoken sentences, without markdown, lists or emoji."
    )
    """System prompt sent with every request."""
    options: dict[str, float | int | str | bool] = Field(default_factory=dict)
    """Model options passed as they are: Ollama's (temperature, num_predict) or, with provider openai,
    extra request fields (temperature, max_tokens)."""
    keep_alive: str | None = None
    """How long Ollama keeps the model loaded after a request (e.g. 5m); null keeps Ollama's default."""
    timeout_s: float = Field(60.0, gt=0.0, le=600.0)
    """Longest wait for one LLM request."""
    retry_attempts: int = Field(3, ge=0, le=10)
    """Retries after a failed first attempt, on connection errors and 5xx answers only."""
    retry_base_delay_s: float = Field(1.0, ge=0.0, le=60.0)
    """Wait before the first retry; it doubles for each further one (1 s, 2 s, 4 s)."""
    max_reply_chars: int = Field(2_000, ge=1, le=100_000)
    """Longest reply spoken; a longer one is cut at the last sentence end within it."""
    health_timeout_s: float = Field(1.0, gt=0.0, le=30.0)
    """Timeout of the LLM reachability check behind /health."""
    health_cache_s: float = Field(5.0, ge=0.0, le=3_600.0)
    """How old /health's view of the LLM may get: it is probed in the background every half of this (at most twice a second)."""

    @field_validator("url")
    @classmethod
    def _url_parses(cls, url: str) -> str:
        # Checked here, not where the client is made: a password holding "/" or "#" ends the host early,
        # and the TTS service would die at start-up on "port could not be cast to integer".
        parts = urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            raise ValueError(
                "not a URL of the form http://[user:password@]host[:port][/path]; "
                "a password holding '/', '#', '?' or '@' must be percent-encoded (%2F, %23, %3F, %40)"
            )
        return url


class SupervisorSettings(Section):
    startup_timeout_s: float = Field(60.0, gt=0.0, le=3_600.0)
    """Longest wait for a started service's /health to answer; past it the supervisor reports the service's last output and exits."""
    shutdown_grace_s: float = Field(10.0, gt=0.0, le=600.0)
    """After SIGTERM, how long in-flight requests and utterances may take to finish before the services are killed."""
    restart_backoff_initial_s: float = Field(1.0, ge=0.0, le=600.0)
    """Wait before restarting a service that died; it doubles with each further crash."""
    restart_backoff_max_s: float = Field(30.0, ge=0.0, le=3_600.0)
    """Longest wait between restarts; the wait starts over after a service stayed up for crash_loop_window_s."""
    crash_loop_count: int = Field(5, ge=1, le=1_000)
    """Crashes of one service within crash_loop_window_s that make the supervisor stop everything and exit non-zero."""
    crash_loop_window_s: float = Field(60.0, gt=0.0, le=86_400.0)
    """Window, in seconds, in which crash_loop_count crashes count as a crash loop."""
    output_lines: int = Field(20, ge=1, le=10_000)
    """Last output lines kept per service and logged when it crashes or fails to start."""

    @model_validator(mode="after")
    def _backoff_in_order(self) -> SupervisorSettings:
        if self.restart_backoff_max_s < self.restart_backoff_initial_s:
            raise ValueError(
                f"restart_backoff_max_s ({self.restart_backoff_max_s}) must be at least "
                f"restart_backoff_initial_s ({self.restart_backoff_initial_s})"
            )
        return self


class WyomingSettings(Section):
    """A Wyoming listener (Home Assistant's protocol) of one service, in the service's own process."""

    enabled: bool = True
    """Listen for Wyoming clients (Home Assistant's Wyoming integration) on this port."""
    port: int = Field(10300, ge=0, le=65535)
    """TCP port of the Wyoming listener, on the service's host; 0 takes a free port (tests)."""
    max_connections: int = Field(16, ge=1, le=10_000)
    """Wyoming clients served at once; the next one gets an error event and is disconnected."""
    max_event_bytes: int = Field(1_048_576, ge=1_024, le=67_108_864)
    """Largest data or payload of one event (an audio chunk, a text); a larger one is refused and the client disconnected."""
    close_linger_s: float = Field(2.0, ge=0.0, le=60.0)
    """How long a closing connection discards what the client still sends, so its last event (an error) is read
    rather than lost to a reset; a client that reads to the end closes at once. 0 closes at once."""
    close_linger_max_bytes: int = Field(16_777_216, ge=0, le=1_073_741_824)
    """Most bytes discarded that way, so a client that keeps sending cannot hold a closing connection open."""
    allow_unauthenticated: bool = False
    """Wyoming has no authentication: listening on a non-loopback address needs this set (with a warning logged)."""
    zeroconf: bool = False
    """Advertise the listener on the local network (_wyoming._tcp) so Home Assistant discovers it by itself."""
    zeroconf_name: str | None = Field(None, max_length=63)
    """Name of the zeroconf advertisement; null: voice-assistant-stt or voice-assistant-tts and the host name."""


class ConversationSettings(Section):
    store: Literal["memory", "sqlite"] = "memory"
    """Where conversations are kept: memory (lost on restart), or a SQLite file in data_dir that survives one."""
    max_turns: int = Field(20, ge=1, le=10_000)
    """Turns kept per conversation; the oldest is dropped first."""
    max_history_chars: int = Field(6_000, ge=0, le=1_000_000)
    """Characters of earlier turns sent to the LLM with each new one (the newest turns first); 0 sends none."""
    idle_ttl_s: float = Field(3_600.0, gt=0.0, le=31_536_000.0)
    """A conversation unused this long is forgotten."""
    max_conversations: int = Field(1_000, ge=1, le=1_000_000)
    """Conversations kept in all; the least recently used is forgotten first."""
