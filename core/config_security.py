"""The sections that keep both services safe to expose: API keys, origin and host checks, input limits, TLS."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from core.config_base import Section

Scope = Literal["speak", "transcribe", "voices", "admin"]
"""speak: every TTS route; transcribe: every STT route (and the forwarded /v1 transcriptions); voices:
changing voices and engines; admin: /api/config, /metrics and everything else."""

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback (what no other machine can reach)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiKey(Section):
    name: str = Field(pattern=KEY_NAME_PATTERN)
    """Who holds the key: shown in logs and metrics instead of the key."""
    key: SecretStr | None = None
    """The key itself (at least 16 characters); or give its sha256 instead, so the config file holds no secret."""
    sha256: str | None = None
    """Hex SHA-256 of the key (`printf %s KEY | sha256sum`), instead of key."""
    scopes: list[Scope] = Field(default_factory=lambda: ["speak", "transcribe"], min_length=1)
    """What the key may do: speak, transcribe, voices, admin (admin may do everything)."""
    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    """Requests and WebSocket sessions this key may start per minute; null: no limit. Past it: 429 with Retry-After."""
    audio_seconds_per_minute: float | None = Field(None, gt=0.0, le=1_000_000.0)
    """Seconds of audio this key may have spoken or transcribed per minute; null: no limit. Past it: 429 with Retry-After."""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value.lower()):
            raise ValueError("sha256 must be 64 hex digits: the output of `printf %s KEY | sha256sum`")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of key and sha256")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError(f"API key {self.name!r}: a key needs at least 16 characters (try `openssl rand -hex 24`)")
        return self


class AuthSettings(Section):
    keys: list[ApiKey] = Field(default_factory=list)
    """API keys; with none, no key is asked for (allowed only on a loopback address, or with allow_open)."""
    allow_open: bool = False
    """Serve without keys on a non-loopback address anyway (a trusted network, or a proxy that authenticates)."""
    ticket_ttl_s: float = Field(60.0, gt=0.0, le=3_600.0)
    """Lifetime of a WebSocket ticket (POST /v1/auth/ticket), for browsers, which cannot set headers on a WebSocket."""

    @model_validator(mode="after")
    def _unique_names(self) -> AuthSettings:
        names = [key.name for key in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("auth.keys: every key needs its own name")
        return self


class SecuritySettings(Section):
    allowed_origins: list[str] = Field(default_factory=list)
    """Web origins (scheme://host[:port]) besides the service's own and localhost that may open its
    WebSockets and send it requests that change something."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins whose pages may read the services' answers (CORS); none: CORS stays off."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host header values served besides the machine's own names and addresses (DNS rebinding protection);
    "*" serves any."""
    header_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    """A connection that has not sent a whole request header within this time is closed."""
    max_json_depth: int = Field(32, ge=2, le=1_000)
    """Deepest nesting of arrays and objects accepted in a JSON body or WebSocket message."""

    @field_validator("allowed_origins", "cors_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^https?://[^/\s]+$", value):
                raise ValueError(f"{value!r} is not an origin: write scheme://host[:port], without a path")
        return [value.lower() for value in values]


class TlsSettings(Section):
    certfile: Path | None = None
    """PEM certificate (chain) both services serve HTTPS and WSS with; null: plain HTTP."""
    keyfile: Path | None = None
    """PEM private key of certfile."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("tls: give both certfile and keyfile, or neither")
        return self

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


__all__ = ["ApiKey", "AuthSettings", "Scope", "SecuritySettings", "TlsSettings", "is_loopback"]
