"""core.config: defaults, precedence (defaults < YAML < environment) and the error messages.

The autouse `clean_environment` fixture (tests/conftest.py) removes CONFIG_PATH, ENVIRONMENT,
OLLAMA_URL and every SECTION__KEY variable before each test, so what a test sets is all there is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import (
    DEFAULT_CONFIG_FILE,
    PROJECT_ROOT,
    ConfigError,
    LoggingSettings,
    Settings,
    load_settings,
)


def write_yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    """An empty YAML file: loading it gives the built-in defaults, whatever config.yaml says."""
    return write_yaml(tmp_path, "")


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_from_an_empty_file(empty_config: Path) -> None:
    settings = load_settings(empty_config)

    assert settings.environment == "development"
    assert settings.logging.level == "info"
    assert settings.logging.json_logs is False
    assert settings.stt.port == 8010
    assert settings.tts.port == 8000
    assert settings.stt.sample_rate == 16000
    assert settings.stt.max_utterance_seconds == 12.0
    assert settings.stt.max_buffer_seconds == 120.0
    assert settings.stt.model == "small"
    assert settings.stt.device == "auto"
    assert settings.stt.compute_type == "auto"
    assert settings.stt.language is None
    assert settings.llm.url == "http://localhost:11434"
    assert settings.config_file == empty_config


def test_defaults_without_any_file_match_the_model_defaults(empty_config: Path) -> None:
    assert load_settings(empty_config).model_dump() == Settings().model_dump()


def test_whitespace_only_yaml_is_treated_as_empty(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "# nothing configured yet\n\n")
    settings = load_settings(path)
    assert settings.stt.port == 8010
    assert settings.environment == "development"


# --- precedence ---------------------------------------------------------------------------------


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "environment: staging\n"
        "stt:\n  port: 9100\n  model: base\n  max_utterance_seconds: 20\n"
        "tts:\n  port: 9200\n  piper:\n    use_cuda: true\n",
    )
    settings = load_settings(path)

    assert settings.environment == "staging"
    assert settings.stt.port == 9100
    assert settings.stt.model == "base"
    assert settings.stt.max_utterance_seconds == 20.0
    assert settings.tts.port == 9200
    assert settings.tts.piper.use_cuda is True
    # Keys the file does not name keep their defaults, also inside a section it does name.
    assert settings.stt.sample_rate == 16000
    assert settings.stt.max_buffer_seconds == 120.0
    assert settings.tts.piper.download is True


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(
        tmp_path,
        "environment: staging\nlogging:\n  json: false\nstt:\n  port: 9100\n  model: base\n",
    )
    monkeypatch.setenv("STT__MODEL", "tiny")
    monkeypatch.setenv("STT__PORT", "9300")
    monkeypatch.setenv("LOGGING__JSON", "true")
    monkeypatch.setenv("ENVIRONMENT", "production")

    settings = load_settings(path)

    assert settings.stt.model == "tiny"
    assert settings.stt.port == 9300
    assert settings.logging.json_logs is True
    assert settings.environment == "production"
    # An env variable for one key does not reset the section's other keys from YAML/defaults.
    assert settings.stt.sample_rate == 16000


def test_environment_overrides_defaults_without_yaml(
    empty_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STT__MODEL", "tiny")
    monkeypatch.setenv("LOGGING__LEVEL", "debug")
    settings = load_settings(empty_config)
    assert settings.stt.model == "tiny"
    assert settings.logging.level == "debug"
    assert settings.stt.port == 8010


def test_environment_variable_names_are_case_insensitive(
    empty_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("stt__beam_size", "3")
    assert load_settings(empty_config).stt.beam_size == 3


def test_config_path_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "stt:\n  port: 9400\n", name="elsewhere.yaml")
    monkeypatch.setenv("CONFIG_PATH", str(path))

    settings = load_settings()

    assert settings.stt.port == 9400
    assert settings.config_file == path


def test_argument_beats_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write_yaml(tmp_path, "stt:\n  port: 9400\n", name="env.yaml")
    from_arg = write_yaml(tmp_path, "stt:\n  port: 9500\n", name="arg.yaml")
    monkeypatch.setenv("CONFIG_PATH", str(from_env))

    settings = load_settings(from_arg)

    assert settings.stt.port == 9500
    assert settings.config_file == from_arg


def test_load_settings_accepts_a_str_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "tts:\n  port: 9600\n")
    assert load_settings(str(path)).tts.port == 9600


def test_without_argument_or_config_path_the_repo_file_is_read() -> None:
    settings = load_settings()
    assert settings.config_file == DEFAULT_CONFIG_FILE
    assert DEFAULT_CONFIG_FILE == PROJECT_ROOT / "config.yaml"


def test_ollama_url_sets_llm_url(empty_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_URL", "http://ollama.internal:11434")
    assert load_settings(empty_config).llm.url == "http://ollama.internal:11434"


def test_ollama_url_beats_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "llm:\n  url: http://from-yaml:11434\n")
    monkeypatch.setenv("OLLAMA_URL", "http://from-alias:11434")
    assert load_settings(path).llm.url == "http://from-alias:11434"


def test_llm__url_beats_ollama_url(empty_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_URL", "http://from-alias:11434")
    monkeypatch.setenv("LLM__URL", "http://from-ours:11434")
    settings = load_settings(empty_config)
    assert settings.llm.url == "http://from-ours:11434"
    # The alias only fills llm.url; the rest of the section keeps its defaults.
    assert settings.llm.model == "llama3.2:3b"


# --- the repository's own files ----------------------------------------------------------------


def test_repo_config_yaml_loads() -> None:
    settings = load_settings(PROJECT_ROOT / "config.yaml")
    assert settings.environment == "development"
    assert settings.logging.json_logs is False
    assert settings.stt.port == 8010
    assert settings.tts.port == 8000


def test_repo_config_prod_yaml_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICE_ASSISTANT_API_KEY", "k" * 32)  # it listens on every interface: it needs a key
    settings = load_settings(PROJECT_ROOT / "config.prod.yaml")
    assert settings.environment == "production"
    assert settings.logging.json_logs is True
    assert settings.stt.port == 8010
    assert settings.tts.port == 8000
    assert settings.stt.host == "0.0.0.0"
    assert settings.stt.max_concurrent == 1


# --- missing and malformed files ----------------------------------------------------------------


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_missing_file_from_config_path_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "from-env.yaml"
    monkeypatch.setenv("CONFIG_PATH", str(missing))
    with pytest.raises(ConfigError, match="from-env.yaml"):
        load_settings()


def test_invalid_yaml_is_an_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  port: [8010\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


@pytest.mark.parametrize(("text", "kind"), [("- stt\n- tts\n", "list"), ("just a string\n", "str")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "mapping" in message
    assert kind in message
    assert str(path) in message


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_in_a_section_names_key_section_and_allowed_keys(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  modle: tiny\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "unknown key 'modle'" in message
    assert "section 'stt'" in message
    assert f"set by {path}" in message
    assert "allowed keys:" in message
    allowed = message.split("allowed keys:", 1)[1]
    for key in ("model", "port", "device", "max_utterance_seconds", "max_buffer_seconds"):
        assert key in allowed


def test_unknown_key_in_a_nested_section(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "tts:\n  piper:\n    use_gpu: true\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "unknown key 'use_gpu'" in message
    assert "section 'tts.piper'" in message
    allowed = message.split("allowed keys:", 1)[1]
    assert "download" in allowed
    assert "use_cuda" in allowed


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "sst:\n  port: 8010\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "unknown key 'sst'" in message
    assert "the top level" in message
    allowed = message.split("allowed keys:", 1)[1]
    for key in ("environment", "logging", "stt", "tts", "llm"):
        assert key in allowed
    # config_file is set by load_settings, never by the user, so it is not offered.
    assert "config_file" not in allowed


def test_logging_allowed_keys_use_the_yaml_name_json(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "logging:\n  format: json\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "allowed keys: level, json" in str(info.value)


def test_unknown_environment_key_in_a_known_section(
    empty_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STT__NOPE", "1")
    with pytest.raises(ConfigError) as info:
        load_settings(empty_config)
    message = str(info.value)
    assert "unknown key 'nope'" in message
    assert "section 'stt'" in message
    assert "set by the environment variable STT__NOPE" in message
    assert str(empty_config) not in message, "the file is not to blame"


def test_a_wrong_value_says_which_file_or_variable_set_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "stt:\n  device: gpu\n")
    monkeypatch.setenv("TTS__PORT", "99999")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert f"stt.device: Input should be 'auto', 'cuda' or 'cpu' (got 'gpu'; set by {path})" in message
    assert "(got '99999'; set by the environment variable TTS__PORT)" in message


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  modle: tiny\n  device: gpu\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "'modle'" in message
    assert "stt.device" in message


# --- wrong values -------------------------------------------------------------------------------


def test_wrong_literal_names_key_and_allowed_values(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  device: gpu\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "stt.device" in message
    assert "'gpu'" in message
    for allowed in ("'auto'", "'cuda'", "'cpu'"):
        assert allowed in message


def test_wrong_environment_value_from_env(empty_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "prod")
    with pytest.raises(ConfigError) as info:
        load_settings(empty_config)
    message = str(info.value)
    assert "environment" in message
    assert "'prod'" in message
    for allowed in ("'development'", "'staging'", "'production'"):
        assert allowed in message


def test_out_of_range_port_names_the_key_and_bound(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  port: 70000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "stt.port" in message
    assert "65535" in message
    assert "70000" in message


def test_non_integer_port_from_env(empty_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"tts\.port"):
        load_settings(empty_config)


def test_unknown_language_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  language: xx\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "stt.language" in message
    assert "unknown language 'xx'" in message
    assert "null to detect" in message
    # The list of allowed codes includes the common ones.
    assert ", en," in message


@pytest.mark.parametrize(("value", "expected"), [("en", "en"), ("de", "de"), ("null", None)])
def test_known_language_or_null_is_accepted(tmp_path: Path, value: str, expected: str | None) -> None:
    path = write_yaml(tmp_path, f"stt:\n  language: {value}\n")
    assert load_settings(path).stt.language == expected


@pytest.mark.parametrize("temperatures", ["[]", "[0.0, 1.5]", "[-0.1]"])
def test_temperatures_out_of_range_are_refused(tmp_path: Path, temperatures: str) -> None:
    path = write_yaml(tmp_path, f"stt:\n  temperatures: {temperatures}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "stt.temperatures" in message
    assert "between 0.0 and 1.0" in message


def test_temperatures_in_range_are_accepted(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  temperatures: [0.0, 0.5, 1.0]\n")
    assert load_settings(path).stt.temperatures == [0.0, 0.5, 1.0]


def test_buffer_shorter_than_an_utterance_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  max_utterance_seconds: 20\n  max_buffer_seconds: 10\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "max_buffer_seconds (10.0)" in message
    assert "max_utterance_seconds (20.0)" in message


def test_buffer_equal_to_an_utterance_is_accepted(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "stt:\n  max_utterance_seconds: 15\n  max_buffer_seconds: 15\n")
    settings = load_settings(path)
    assert settings.stt.max_buffer_seconds == settings.stt.max_utterance_seconds == 15.0


def test_buffer_check_sees_env_and_yaml_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "stt:\n  max_utterance_seconds: 20\n")
    monkeypatch.setenv("STT__MAX_BUFFER_SECONDS", "5")
    with pytest.raises(ConfigError, match=r"max_buffer_seconds \(5\.0\)"):
        load_settings(path)


# --- logging.json and redacted() ----------------------------------------------------------------


def test_logging_json_key_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "logging:\n  json: true\n  level: warning\n")
    settings = load_settings(path)
    assert settings.logging.json_logs is True
    assert settings.logging.level == "warning"


def test_logging_settings_accept_json_keyword() -> None:
    assert LoggingSettings(json=True).json_logs is True
    assert LoggingSettings().json_logs is False


def test_redacted_dumps_json_under_its_yaml_name(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "logging:\n  json: true\n")
    dumped = load_settings(path).redacted()

    assert dumped["logging"] == {"level": "info", "json": True, "to_supervisor": False}
    assert dumped["stt"]["port"] == 8010
    assert dumped["stt"]["models_dir"] == "models/whisper"
    assert dumped["tts"]["piper"]["download"] is True
    assert dumped["tts"]["piper"]["use_cuda"] is False
    assert "config_file" not in dumped
    sections = {name for name, field in Settings.model_fields.items() if not field.exclude}
    assert set(dumped) == sections and {"environment", "logging", "stt", "tts", "llm"} <= sections


def test_redacted_output_loads_back_unchanged(tmp_path: Path) -> None:
    import yaml

    original = load_settings(write_yaml(tmp_path, "stt:\n  port: 9100\nlogging:\n  json: true\n"))
    again = load_settings(write_yaml(tmp_path, yaml.safe_dump(original.redacted()), name="again.yaml"))
    assert again.redacted() == original.redacted()


# --- resolve_path -------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    settings = Settings()
    assert settings.resolve_path(settings.stt.models_dir) == PROJECT_ROOT / "models" / "whisper"
    assert settings.resolve_path(settings.tts.voices_dir) == PROJECT_ROOT / "models" / "piper"


def test_absolute_paths_are_unchanged(tmp_path: Path) -> None:
    absolute = tmp_path / "voices"
    assert Settings().resolve_path(absolute) == absolute


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_network_address_without_keys_is_refused_and_the_message_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tts.host 0.0.0.0 lets other machines in.*auth.keys.*auth.allow_open: true"):
        load_settings(_write(tmp_path, "tts: {host: 0.0.0.0, wyoming: {enabled: false}}\n"))
    opened = load_settings(_write(tmp_path, "auth: {allow_open: true}\ntts: {host: 0.0.0.0, wyoming: {enabled: false}}\n"))
    assert opened.auth.allow_open and not opened.auth.keys
    assert load_settings(_write(tmp_path, "tts: {host: localhost}\nstt: {host: '::1'}\n")).tts.host == "localhost"


def test_a_wyoming_listener_on_the_network_needs_allow_unauthenticated(tmp_path: Path) -> None:
    keyed = "auth: {keys: [{name: me, key: 0123456789abcdef0}]}\n"
    with pytest.raises(ConfigError, match=r"stt.wyoming listens on 0.0.0.0.*allow_unauthenticated: true"):
        load_settings(_write(tmp_path, keyed + "stt: {host: 0.0.0.0}\n"))
    settings = load_settings(_write(tmp_path, keyed + "stt: {host: 0.0.0.0, wyoming: {allow_unauthenticated: true}}\n"))
    assert settings.stt.wyoming.allow_unauthenticated


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("[{name: me}]", "exactly one of key and sha256"),
        ("[{name: me, key: short}]", "at least 16 characters"),
        ("[{name: me, sha256: abc}]", "64 hex digits"),
        ("[{name: me, key: 0123456789abcdef0, scopes: [fly]}]", "speak"),
        ("[{name: a, key: 0123456789abcdef0}, {name: a, key: 0123456789abcdef1}]", "its own name"),
        ("[{name: 'bad name', key: 0123456789abcdef0}]", "name"),
    ],
)
def test_bad_keys_are_refused_with_what_is_allowed(tmp_path: Path, keys: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(_write(tmp_path, f"auth: {{keys: {keys}}}\n"))


def test_origins_must_be_origins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an origin"):
        load_settings(_write(tmp_path, "security: {allowed_origins: ['https://example.com/app']}\n"))


@pytest.mark.parametrize("url", ["http://user:s3cr/et@127.0.0.1:11434", "http://user:s3cr#et@127.0.0.1:11434", "http://:11434"])
def test_an_llm_url_that_does_not_parse_is_refused_at_load_without_showing_its_password(
    tmp_path: Path, url: str
) -> None:
    # A password with "/" or "#" ends the host early: the TTS service used to die at start-up on
    # "port could not be cast to integer", long after the configuration was read.
    path = write_yaml(tmp_path, f"llm:\n  url: '{url}'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith("invalid configuration: llm.url: not a URL of the form http://[user:password@]host[:port][/path]")
    assert "must be percent-encoded (%2F, %23, %3F, %40)" in message
    assert "s3cr" not in message


@pytest.mark.parametrize(
    "url", ["http://user:pa%2Fss@127.0.0.1:11434", "admin:pw@ollama.internal:11434", "http://[::1]:8080/v1", "localhost:11434"]
)
def test_llm_urls_with_encoded_passwords_schemeless_or_ipv6_load(tmp_path: Path, url: str) -> None:
    path = write_yaml(tmp_path, f"llm:\n  url: '{url}'\n")
    assert load_settings(path).llm.url == url


@pytest.mark.parametrize(
    ("yaml_text", "secret"),
    [
        ("llm:\n  url: 'admin:p/ssw0rd@host:11434'\n", "p/ssw0rd"),  # no scheme: still a URL with a password
        ("auth:\n  keys:\n    - {name: a, key: shortsecret123, scopes: [admin]}\n", "shortsecret123"),
    ],
)
def test_a_configuration_error_never_prints_a_secret(tmp_path: Path, yaml_text: str, secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, yaml_text))
    assert secret not in str(caught.value)
    assert "set by" in str(caught.value)  # still says where the bad value is
