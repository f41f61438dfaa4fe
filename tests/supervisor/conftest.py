"""Run the real supervisor (`python run_services.py`) as a subprocess against synthetic models.

The children are the real services: STT on the toy Whisper model, TTS with a synthetic Piper voice
(no download) and the Ollama double on 127.0.0.1. The supervisor logs JSON, so the tests read its
output as events; every child PID it reports is killed at teardown, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import PROJECT_ROOT
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice

VOICE = "en_US-test-medium"
_OUR_VARIABLES = ("CONFIG_PATH", "ENVIRONMENT", "OLLAMA_URL", "GROQ_API_KEY")
_OUR_PREFIXES = ("STT__", "TTS__", "LLM__", "LOGGING__", "SUPERVISOR__")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """True while any thread of the process still runs. A zombie is dead: nothing may reap orphans
    in a container. Threads are looked at one by one because a killed multi-threaded process shows
    its main thread as a zombie while the others are still tearing down (and holding its sockets)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: ask the kernel, which counts zombies as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.01)


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The PIDs still alive after `timeout` seconds (an empty list is what tests want)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.02)
    return [pid for pid in pids if alive(pid)]


@dataclass
class SupervisorRun:
    """One running `run_services.py` and the events it has logged so far."""

    process: subprocess.Popen[bytes]
    config: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                event = json.loads(text)
                if not isinstance(event, dict):
                    raise ValueError
            except ValueError:
                event = {"event": text, "raw": True}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0, start: int = 0
    ) -> dict[str, Any]:
        """The first event from index `start` on that satisfies predicate; fails after timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[start:]:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader_alive()):
                    raise AssertionError(f"no matching event within {timeout} s; output:\n{self.dump()}")
                self._changed.wait(min(left, 0.1))

    def wait_event(self, name: str, timeout: float = 30.0, start: int = 0, **fields: Any) -> dict[str, Any]:
        return self.wait_for(
            lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()), timeout, start
        )

    def find(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]

    def child_pids(self) -> list[int]:
        return [e["pid"] for e in self.find("service_started")]

    def pid_of(self, child: str) -> int:
        return self.find("service_started", child=child)[-1]["pid"]

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._thread.join(5)
        return code

    def dump(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events[-80:])

    def _reader_alive(self) -> bool:
        return self._thread.is_alive()

    def start_reader(self) -> None:
        self._thread = threading.Thread(target=self._read, name="supervisor-output", daemon=True)
        self._thread.start()


@pytest.fixture(scope="session")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("supervisor-voices")
    build_piper_voice(folder, VOICE)
    return folder


@pytest.fixture
def make_config(
    tmp_path: Path, whisper_model_dir: Path, voices_dir: Path, ollama: OllamaDouble
) -> Callable[..., dict[str, Any]]:
    """A config for the toy model, the synthetic voice and the Ollama double, on free ports, with
    small supervisor timings; sections passed in are merged over it."""

    def build(**sections: dict[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "environment": "development",
            "logging": {"level": "info", "json": True},
            "stt": {
                "host": "127.0.0.1",
                "port": free_port(),
                "model": str(whisper_model_dir),
                "models_dir": str(tmp_path / "whisper"),
                "beam_size": 1,
                "temperatures": [0.0],
                "wyoming": {"port": free_port()},
            },
            "tts": {
                "host": "127.0.0.1",
                "port": free_port(),
                "engine": "piper",
                "voice": VOICE,
                "voices_dir": str(voices_dir),
                "piper": {"download": False},
                "wyoming": {"port": free_port()},
            },
            "llm": {"url": ollama.url, "retry_base_delay_s": 0.0, "health_timeout_s": 0.5},
            "supervisor": {
                "startup_timeout_s": 30,
                "shutdown_grace_s": 5,
                "restart_backoff_initial_s": 0.1,
                "restart_backoff_max_s": 0.2,
                "crash_loop_count": 3,
                "crash_loop_window_s": 60,
            },
        }
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        return config

    return build


@pytest.fixture
def start_supervisor(tmp_path: Path) -> Iterator[Callable[..., SupervisorRun]]:
    """Start `python run_services.py ARGS` with a config; at teardown nothing it started survives."""
    runs: list[SupervisorRun] = []

    def start(config: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> SupervisorRun:
        path = tmp_path / f"config-{len(runs)}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in _OUR_VARIABLES and not name.upper().startswith(_OUR_PREFIXES)
        }
        environment.update({"CONFIG_PATH": str(path), "HF_HUB_OFFLINE": "1", **(env or {})})
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "run_services.py"), *args],
            cwd=PROJECT_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        run = SupervisorRun(process, config)
        run.start_reader()
        runs.append(run)
        return run

    yield start

    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(10)
        for pid in run.child_pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
