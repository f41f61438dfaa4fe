"""The one typed configuration of both services.

Precedence: built-in defaults < YAML file (`config.yaml` at the project root, or `CONFIG_PATH`)
< environment (`STT__MODEL=tiny`, `LOGGING__JSON=true`, `ENVIRONMENT=production`).
Unknown keys are errors, so a typo never silently falls back to a default.
This is the only module that reads the process environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.config_base import (
    ConversationSettings,
    LlmSettings,
    LoggingSettings,
    Section,
    SupervisorSettings,
    WyomingSettings,
)
from core.config_jobs import JobsSettings
from core.config_security import ApiKey, AuthSettings, SecuritySettings, TlsSettings, is_loopback
from core.config_stt import ComputeType, SttSettings
from core.config_tts import (
    OPENAI_VOICES,
    VOICE_NAME_PATTERN,
    EspeakSettings,
    GroqSettings,
    OpenAiSpeechSettings,
    PiperSettings,
    TtsSettings,
    XttsSettings,
)
from core.redact import public_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config.yaml"
API_KEY_VARIABLE = "VOICE_ASSISTANT_API_KEY"
"""An environment variable holding one key with every scope (below AUTH__KEYS, which wins)."""


__all__ = [
    "OPENAI_VOICES",
    "PROJECT_ROOT",
    "OpenAiSpeechSettings",
    "ApiKey",
    "AuthSettings",
    "SecuritySettings",
    "TlsSettings",
    "VOICE_NAME_PATTERN",
    "ComputeType",
    "ConversationSettings",
    "ConfigError",
    "EspeakSettings",
    "GroqSettings",
    "LlmSettings",
    "LoggingSettings",
    "PiperSettings",
    "Section",
    "Settings",
    "SttSettings",
    "SupervisorSettings",
    "TtsSettings",
    "WyomingSettings",
    "XttsSettings",
    "environment_overrides",
    "get_settings",
    "load_settings",
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is allowed."""


class Settings(BaseSettings):
    """Everything tunable in both services."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_nested_delimiter="__",
        case_sensitive=False,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    environment: Literal["development", "staging", "production"] = "development"
    """Deployment environment, reported by /health."""
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    stt: SttSettings = Field(default_factory=SttSettings)
    tts: TtsSettings = Field(default_factory=TtsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    conversations: ConversationSettings = Field(default_factory=ConversationSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    data_dir: Path = Path("data")
    """Where the stores keep their files (conversations with store sqlite), relative to the project directory."""

    config_file: Path | None = Field(None, exclude=True)
    """The YAML file these settings were read from (set by load_settings)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the parsed YAML (see load_settings), so environment beats YAML.
        return (env_settings, _AliasEnvSource(settings_cls), init_settings)

    @model_validator(mode="after")
    def _not_open_to_the_network(self) -> Settings:
        # Secure by default: a service other machines can reach asks for keys unless told not to.
        for name, host, wyoming in (("stt", self.stt.host, self.stt.wyoming), ("tts", self.tts.host, self.tts.wyoming)):
            if is_loopback(host):
                continue
            if not (self.auth.keys or self.auth.allow_open):
                raise ValueError(
                    f"{name}.host {host} lets other machines in, and no API key is configured: set "
                    f"{API_KEY_VARIABLE} (e.g. to the output of `openssl rand -hex 24`), or add keys under "
                    "auth.keys; or set auth.allow_open: true to serve without keys on a trusted network"
                )
            if wyoming.enabled and not wyoming.allow_unauthenticated:
                raise ValueError(
                    f"{name}.wyoming listens on {host}, and Wyoming has no authentication: set "
                    f"{name}.wyoming.allow_unauthenticated: true to accept that (a trusted network), "
                    f"{name}.wyoming.enabled: false, or a loopback {name}.host"
                )
        return self

    def resolve_path(self, path: Path) -> Path:
        """Relative paths in the config are relative to the project directory, not the cwd."""
        return path if path.is_absolute() else PROJECT_ROOT / path

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked."""
        return self.model_dump(mode="json", by_alias=True)


class _AliasEnvSource(PydanticBaseSettingsSource):
    """Conventional variables other tools already use, below our own `SECTION__KEY` names."""

    ALIASES = {"OLLAMA_URL": ("llm", "url"), "GROQ_API_KEY": ("tts", "groq", "api_key"), API_KEY_VARIABLE: ("auth", "keys")}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for variable, (*sections, key) in self.ALIASES.items():
            if variable in os.environ:
                target = values
                for section in sections:
                    target = target.setdefault(section, {})
                target[key] = os.environ[variable]
        if API_KEY_VARIABLE in os.environ:
            # One key that may do everything: the quick way to secure a single-user install.
            values["auth"]["keys"] = [{"name": "default", "key": os.environ[API_KEY_VARIABLE], "scopes": ["admin"]}]
        return values


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _environment_variable(location: list[str]) -> str | None:
    """The variable a value came from (`STT__PORT` for stt.port), if the environment sets one."""
    wanted = "__".join(location).upper()
    aliases = {path: name for name, path in _AliasEnvSource.ALIASES.items()}
    alias = aliases.get(tuple(location))
    for name in os.environ:
        if name.upper() == wanted or name == alias:
            return name
    return None


def _describe(error: dict[str, Any], settings_cls: type[BaseModel], source: str) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join(location)
    variable = _environment_variable(location)
    origin = f"the environment variable {variable}" if variable else source
    if error["type"] == "extra_forbidden":
        section, name = location[:-1], location[-1]
        allowed = _allowed_keys(settings_cls, section)
        where = f"section '{'.'.join(section)}'" if section else "the top level"
        return f"unknown key '{name}' in {where}; allowed keys: {', '.join(allowed)} (set by {origin})"
    message = error["msg"].removeprefix("Value error, ")
    if not location:  # a rule across sections: its message names the keys
        return f"{message} (set by {source})"
    shown = _shown(error.get("input"))
    return f"{key}: {message} ({'' if shown is None else f'got {shown}; '}set by {origin})"


def _shown(value: Any) -> str | None:
    # The message is printed and logged: a URL's userinfo is a password (llm.url, a Redis or S3 URL, with or
    # without a scheme), and a section or list item (an auth key) may hold a key: its path says where it is.
    if isinstance(value, (dict, list, tuple)):
        return None
    if isinstance(value, str) and "@" in value:
        return repr(public_url(value)) + " (credentials not shown)"
    return repr(value)


def _allowed_keys(model: type[BaseModel], section: list[str]) -> list[str]:
    for part in section:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [field.alias or name for name, field in model.model_fields.items() if not field.exclude]


def _is_setting(path: list[str]) -> bool:
    model: type[BaseModel] = Settings
    for index, part in enumerate(path):
        fields = {field.alias or name: field for name, field in model.model_fields.items() if not field.exclude}
        field = fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif index != len(path) - 1:
            return False
    return True


def environment_overrides() -> dict[str, str]:
    """Which settings the environment sets, and by which variable (`{"stt.port": "STT__PORT"}`), so what
    is in effect can be explained: a value that differs from the file was set here."""
    found = {".".join(path): name for name, path in _AliasEnvSource.ALIASES.items() if name in os.environ}
    for name in os.environ:
        path = name.lower().split("__")
        if _is_setting(path):
            found[".".join(path)] = name
    return dict(sorted(found.items()))


def load_settings(config_path: str | os.PathLike[str] | None = None) -> Settings:
    """Read defaults, the YAML file and the environment; raise ConfigError naming what is wrong."""
    explicit = config_path or os.environ.get("CONFIG_PATH")
    path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    if explicit and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (set by CONFIG_PATH or --config)")
    data = _read_yaml(path) if path.is_file() else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        source = str(path) if path.is_file() else "the built-in defaults"
        problems = "; ".join(_describe(err, Settings, source) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    settings.config_file = path if path.is_file() else None
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
