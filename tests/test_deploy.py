"""Deployment files: the systemd unit (checked by systemd-analyze when it is installed, and parsed
always), the Dockerfile, compose.yaml and .dockerignore. No Docker engine exists here, so the image
is not built; these tests hold the files to what the README promises."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import PROJECT_ROOT, ConfigError, load_settings

DEPLOY = PROJECT_ROOT / "deploy"
UNIT = DEPLOY / "voice-assistant.service"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
INSTALL_DIR = "/opt/voice-assistant"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """What the deployment files tell the administrator to provide: the production config listens on
    every interface, so it needs a key."""
    key = "k" * 32
    monkeypatch.setenv("VOICE_ASSISTANT_API_KEY", key)
    return key


def test_the_production_config_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICE_ASSISTANT_API_KEY")
    with pytest.raises(ConfigError, match="VOICE_ASSISTANT_API_KEY.*openssl rand -hex 24.*auth.allow_open"):
        load_settings(PROJECT_ROOT / "config.prod.yaml")


def test_the_key_from_the_environment_may_do_everything() -> None:
    (key,) = load_settings(PROJECT_ROOT / "config.prod.yaml").auth.keys
    assert key.name == "default" and key.scopes == ["admin"] and key.key is not None
    assert key.key.get_secret_value() == "k" * 32


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate, comments only on their own lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number} is outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"line {number} is not key=value: {line!r}"
        assert "#" not in value, f"line {number}: systemd has no inline comments: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_systemd_unit_has_the_required_settings_and_hardening() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert single["Type"] == "simple"
    assert single["Restart"] == "on-failure"
    assert single["RestartSec"] == "10s"
    assert single["ExecStart"] == f"{INSTALL_DIR}/.venv/bin/python {INSTALL_DIR}/run_services.py"
    assert single["WorkingDirectory"] == INSTALL_DIR
    environment = dict(value.split("=", 1) for value in service["Environment"])
    assert service["EnvironmentFile"] == ["/etc/voice-assistant/env"]  # the API key, kept out of the unit
    assert environment["CONFIG_PATH"] == f"{INSTALL_DIR}/config.prod.yaml"
    assert environment["ENVIRONMENT"] == "production"
    # A dedicated unprivileged user, a read-only system, and writes only where models and voices go.
    assert single["User"] == single["Group"] == "voice-assistant"
    assert single["NoNewPrivileges"] == "true"
    assert single["ProtectSystem"] == "strict"
    assert single["ProtectHome"] == "true"
    assert single["PrivateTmp"] == "true"
    assert single["CapabilityBoundingSet"] == ""
    assert service["ReadWritePaths"] == [f"{INSTALL_DIR}/models {INSTALL_DIR}/data"]
    assert environment["HF_HOME"].startswith(f"{INSTALL_DIR}/models/")
    # The supervisor alone gets SIGTERM and drains within its grace (10 s); systemd waits longer before SIGKILL.
    assert single["KillMode"] == "mixed"
    assert int(single["TimeoutStopSec"]) > load_settings(PROJECT_ROOT / "config.prod.yaml").supervisor.shutdown_grace_s
    assert single["RestartPreventExitStatus"] == "2"  # run_services.py's exit code for a bad config
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_paths_match_the_production_config() -> None:
    settings = load_settings(PROJECT_ROOT / "config.prod.yaml")
    models, data = (Path(path) for path in parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]["ReadWritePaths"][0].split())
    for folder, writable in ((settings.stt.models_dir, models), (settings.tts.voices_dir, models), (settings.data_dir, data)):
        assert not folder.is_absolute()
        assert (Path(INSTALL_DIR) / folder).is_relative_to(writable), folder


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: point it at this interpreter, change nothing else.
    text = UNIT.read_text(encoding="utf-8").replace(f"{INSTALL_DIR}/.venv/bin/python", sys.executable)
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    # Unknown keys and bad values are only warnings to systemd (exit 0): any output fails the test.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_is_a_slim_cpu_image_run_by_a_non_root_user() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    keywords = [keyword for keyword, _ in instructions]
    assert keywords[0] == "FROM"
    assert re.fullmatch(r"python:3\.1[0-9]-slim(-\w+)?", instructions[0][1])
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    exposed = {port for keyword, rest in instructions if keyword == "EXPOSE" for port in rest.split()}
    assert exposed == {"8000", "8010", "10200", "10300"}
    volumes = [rest for keyword, rest in instructions if keyword == "VOLUME"]
    assert volumes == ['["/app/models"]']
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "CONFIG_PATH=/app/config.prod.yaml" in env and "ENVIRONMENT=production" in env
    cmd = [rest for keyword, rest in instructions if keyword == "CMD"][-1]
    assert cmd == '["python", "run_services.py"]'
    settings = load_settings(PROJECT_ROOT / "config.prod.yaml")
    # Inside a container the services must listen on every interface, and the models live in the volume.
    assert settings.stt.host == settings.tts.host == "0.0.0.0"
    assert (settings.stt.port, settings.tts.port) == (8010, 8000)
    prod = yaml.safe_load((PROJECT_ROOT / "config.prod.yaml").read_text())  # (the tests' environment moves ports)
    assert (prod["stt"]["wyoming"]["port"], prod["tts"]["wyoming"]["port"]) == (10300, 10200)  # what the image exposes
    assert settings.stt.wyoming.enabled and settings.tts.wyoming.enabled
    assert all(
        (Path("/app") / d).is_relative_to("/app/models") for d in (settings.stt.models_dir, settings.tts.voices_dir)
    )


def test_everything_the_dockerfile_copies_exists_and_is_not_ignored() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    ignored = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "models", "tests"} <= ignored
    copied = []
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = shlex.split(rest)
            copied += [source for source in sources if not source.startswith("--")]
    assert "requirements.txt" in copied and "run_services.py" in copied
    for source in copied:
        assert (PROJECT_ROOT / source).exists(), source
        assert source not in ignored, source
    # Everything the services import or serve at run time is in the image.
    assert {"core", "stt", "tts", "frontend", "config.prod.yaml"} <= set(copied)


def test_compose_runs_the_image_next_to_ollama() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["ollama"]["image"].startswith("ollama/ollama")
    app = services["voice-assistant"]
    context = (COMPOSE.parent / app["build"]["context"]).resolve()
    assert context == PROJECT_ROOT.resolve()
    assert (context / app["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert set(app["ports"]) == {"8000:8000", "8010:8010", "10200:10200", "10300:10300"}
    assert app["environment"]["LLM__URL"] == "http://ollama:11434"
    # compose refuses to start without the key, and says where to put it.
    assert app["environment"]["VOICE_ASSISTANT_API_KEY"].startswith("${VOICE_ASSISTANT_API_KEY:?set VOICE_ASSISTANT_API_KEY")
    assert app["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert "models:/app/models" in app["volumes"]
    grace = load_settings(PROJECT_ROOT / "config.prod.yaml").supervisor.shutdown_grace_s
    assert int(app["stop_grace_period"].removesuffix("s")) > grace
    # The one-shot pull fetches the model the production config asks for.
    pull = services["ollama-pull"]
    assert pull["entrypoint"] == ["ollama", "pull", load_settings(PROJECT_ROOT / "config.prod.yaml").llm.model]
    assert set(compose["volumes"]) == {"models", "ollama"}


def test_the_job_workers_have_a_unit_and_a_compose_override() -> None:
    worker = parse_unit((DEPLOY / "voice-assistant-worker@.service").read_text(encoding="utf-8"))["Service"]
    single = {key: values[-1] for key, values in worker.items()}
    assert single["ExecStart"] == f"{INSTALL_DIR}/.venv/bin/python -m tts.worker"
    assert single["WorkingDirectory"] == INSTALL_DIR and single["User"] == "voice-assistant"
    assert single["KillSignal"] == "SIGTERM" and single["RestartPreventExitStatus"] == "2"
    override = yaml.safe_load((DEPLOY / "compose.workers.yaml").read_text(encoding="utf-8"))["services"]
    assert override["tts-worker"]["command"] == ["python", "-m", "tts.worker"]
    for name in ("voice-assistant", "tts-worker"):
        environment = override[name]["environment"]
        assert environment["JOBS__BACKEND"] == "redis" and environment["JOBS__REDIS_URL"] == "redis://redis:6379/0"
        assert "jobs:/app/jobs" in override[name]["volumes"]
    assert override["redis"]["image"].startswith("redis:")
