"""The supervisor: starts, watches and stops the STT and TTS services as one.

    python run_services.py              # both services (what `make run` does)
    python run_services.py --only stt   # one of them
    python run_services.py --config config.prod.yaml

Each service runs as a child process (`python -m stt.server`, `python -m tts.server`) reading the
same configuration (CONFIG_PATH and the environment). The supervisor

- checks that each service's port is free before starting it, and names the port and its config key
  when it is not;
- waits until every `/health` answers, then logs one line per service with its URL (and the
  dashboard's); a service that does not answer within `supervisor.startup_timeout_s` is reported
  with its last output lines and the supervisor exits 1;
- re-emits every line the children write through its own structured logging, tagged with
  `service`, and keeps the last `supervisor.output_lines` lines of each for crash reports;
- restarts a child that dies on its own after an exponential backoff (`restart_backoff_initial_s`
  doubling up to `restart_backoff_max_s`), logging its exit code and last output; a crash loop
  (`crash_loop_count` crashes within `crash_loop_window_s`) stops everything and exits 1, naming
  the service;
- on SIGINT or SIGTERM sends SIGTERM to the children, which finish in-flight work (a /tts request,
  an STT utterance) for up to `supervisor.shutdown_grace_s`, kills what is left, and exits 0; a
  second SIGINT kills at once;
- leaves no orphans: on Linux each child gets SIGKILL from the kernel when the supervisor dies,
  however it dies (PR_SET_PDEATHSIG); each child also runs in its own session, so a Ctrl-C in a
  terminal reaches only the supervisor, which then stops the children in order.

Exit codes: 0 after a requested stop, 1 when a service failed (busy port, startup timeout, crash
loop), 2 for an invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from core.config import PROJECT_ROOT, ConfigError, Settings, SupervisorSettings, load_settings
from core.logging import configure_logging, get_logger

log = get_logger("supervisor")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

HEALTH_POLL_S = 0.1
"""How often /health is polled while a service starts."""
HEALTH_REQUEST_TIMEOUT_S = 2.0
MAX_LINE_BYTES = 64 * 1024
"""A longer output line is cut here (the rest is dropped), so one runaway line cannot exhaust memory."""
STORED_LINE_CHARS = 1_000
"""Each line kept for a crash report is cut to this many characters."""

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LEVELS = ("debug", "info", "warning", "error", "critical")
# Keys of a child's JSON log line that the supervisor's own processors set again.
_REPLACED_KEYS = ("timestamp", "level", "logger", "event", "service")


class ServiceFailed(Exception):
    """A service cannot be kept running; the supervisor stops everything and exits 1."""

    def __init__(self, event: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.event = event
        self.message = message
        self.details = details


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    host: str
    port: int

    @property
    def port_key(self) -> str:
        return f"{self.name}.port"

    @property
    def host_key(self) -> str:
        return f"{self.name}.host"

    @property
    def url(self) -> str:
        """Where this machine reaches the service (a wildcard listen address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def service_specs(settings: Settings, only: str | None) -> list[ServiceSpec]:
    specs = [
        ServiceSpec("stt", "stt.server", settings.stt.host, settings.stt.port),
        ServiceSpec("tts", "tts.server", settings.tts.host, settings.tts.port),
    ]
    return [spec for spec in specs if only in (None, spec.name)]


def port_problem(spec: ServiceSpec) -> tuple[str, str] | None:
    """Try to bind the service's address as uvicorn will; (event, message) when that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            spec.host or None, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return "host_invalid", f"cannot resolve {spec.host!r} ({spec.host_key}): {exc.strerror}"
    with socket.socket(family, kind, proto) as probe:
        # asyncio (and so uvicorn) binds with SO_REUSEADDR: sockets in TIME_WAIT are no conflict.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "port_in_use", (
                    f"port {spec.port} on {spec.host} is already in use, so the {spec.name} service cannot "
                    f"start; stop the program using it or set {spec.port_key} "
                    f"(environment {spec.port_key.upper().replace('.', '__')}) to a free port"
                )
            if exc.errno == errno.EACCES:
                return "port_forbidden", (
                    f"port {spec.port} ({spec.port_key}) needs privileges this user does not have; "
                    "use a port above 1023"
                )
            return (
                "host_invalid",
                f"cannot listen on {spec.host}:{spec.port} ({spec.host_key}, {spec.port_key}): {exc.strerror}",
            )
    return None


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when the supervisor dies (Linux only).

    libc and prctl are resolved here, before the fork, so the child only makes one plain call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    supervisor_pid = os.getpid()
    kill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != supervisor_pid:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _exception_text(value: Any) -> str:
    """A child's JSON traceback (structlog's dict form) as the text a console reader expects."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return json.dumps(value)
    parts = []
    for exc in value:
        if not isinstance(exc, dict):
            continue
        lines = ["Traceback (most recent call last):"]
        for frame in exc.get("frames") or []:
            lines.append(f'  File "{frame.get("filename")}", line {frame.get("lineno")}, in {frame.get("name")}')
        lines.append(f"{exc.get('exc_type')}: {exc.get('exc_value')}")
        parts.append("\n".join(lines))
    return "\n\nDuring handling of the above exception, another exception occurred:\n\n".join(reversed(parts))


class Child:
    """One service process: start, health, output, restarts and stop."""

    def __init__(
        self,
        spec: ServiceSpec,
        config: SupervisorSettings,
        env: dict[str, str],
        json_logs: bool,
        stopping: asyncio.Event,
    ) -> None:
        self.spec = spec
        self.config = config
        self.env = env
        self.json_logs = json_logs
        self.stopping = stopping
        self.process: asyncio.subprocess.Process | None = None
        self.output: deque[str] = deque(maxlen=config.output_lines)
        self.crash_times: deque[float] = deque()
        self.consecutive_crashes = 0
        self.restarts = 0
        self.started_at = 0.0
        self._reader: asyncio.Task[None] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._preexec = _death_signal_preexec()

    # -- lifecycle -------------------------------------------------------------------------------

    async def supervise(self, on_ready: Callable[[Child], None]) -> None:
        """Keep the service running until the supervisor stops; raise ServiceFailed when it cannot."""
        first = True
        while True:
            problem = port_problem(self.spec)
            if problem and first:
                event, message = problem
                raise ServiceFailed(
                    event,
                    message,
                    child=self.spec.name,
                    port=self.spec.port,
                    key=self.spec.port_key,
                    host=self.spec.host,
                )
            if problem:
                # Something took the port while the service was down: a failed start, like a crash.
                event, message = problem
                log.error(event, child=self.spec.name, port=self.spec.port, key=self.spec.port_key, message=message)
                returncode: int | None = None
                self.started_at = time.monotonic()
            else:
                await self._spawn()
                if await self._wait_healthy():
                    on_ready(self)
                assert self.process is not None
                returncode = await self.process.wait()
                await self._finish_reading()
            first = False
            if self.stopping.is_set():
                return
            delay = self._record_crash(returncode)
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _spawn(self) -> None:
        command = [sys.executable, "-m", self.spec.module]
        self.output.clear()  # a crash report shows the lines of the process that crashed
        self.process = await asyncio.create_subprocess_exec(
            *command,
            cwd=str(PROJECT_ROOT),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        self.started_at = time.monotonic()
        self._exited = asyncio.ensure_future(self.process.wait())
        assert self.process.stdout is not None
        self._reader = asyncio.create_task(self._pump(self.process.stdout), name=f"{self.spec.name}-output")
        log.info(
            "service_started",
            child=self.spec.name,
            pid=self.process.pid,
            command=" ".join([os.path.basename(command[0]), *command[1:]]),
            restarts=self.restarts,
        )

    async def _wait_healthy(self) -> bool:
        """True once /health answers 200; False if the process exits first; ServiceFailed on timeout."""
        assert self.process is not None
        deadline = self.started_at + self.config.startup_timeout_s
        url = f"{self.spec.url}/health"
        async with httpx.AsyncClient(timeout=HEALTH_REQUEST_TIMEOUT_S, trust_env=False) as client:
            while self.process.returncode is None:
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        self._log_ready(response)
                        return True
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    await self.stop(grace_s=0)
                    raise ServiceFailed(
                        "startup_timeout",
                        f"the {self.spec.name} service did not answer {url} within "
                        f"{self.config.startup_timeout_s:g} s (supervisor.startup_timeout_s); it was stopped",
                        child=self.spec.name,
                        last_output=self.last_output(),
                    )
                await self._sleep_or_exit(HEALTH_POLL_S)
        return False

    async def _sleep_or_exit(self, seconds: float) -> None:
        assert self._exited is not None
        await asyncio.wait([self._exited], timeout=seconds)

    def _log_ready(self, response: httpx.Response) -> None:
        try:
            health = response.json()
        except ValueError:
            health = {}
        fields: dict[str, Any] = {
            "child": self.spec.name,
            "url": self.spec.url,
            "health": health.get("status"),
            "seconds": round(time.monotonic() - self.started_at, 2),
            "pid": self.process.pid if self.process else None,
        }
        if health.get("status") not in (None, "ok"):
            # Answering but degraded: say why (a model still loading, an engine fallback, Ollama down).
            fields["why"] = (
                health.get("reasons") or health.get("error") or ("loading" if health.get("loading") else None)
            )
        if self.spec.name == "stt":
            fields["websocket"] = self.spec.url.replace("http://", "ws://", 1) + "/ws/stt"
        else:
            fields["dashboard"] = self.spec.url + "/"
        if self.restarts:
            fields["restarts"] = self.restarts
        log.info("service_ready", **fields)

    def _record_crash(self, returncode: int | None) -> float:
        """Log the crash; return the backoff before the restart, or raise ServiceFailed on a crash loop."""
        now = time.monotonic()
        uptime = now - self.started_at
        if uptime >= self.config.crash_loop_window_s:
            self.consecutive_crashes = 0  # it ran fine for a while: this is a fresh failure
        self.consecutive_crashes += 1
        self.crash_times.append(now)
        while self.crash_times and now - self.crash_times[0] > self.config.crash_loop_window_s:
            self.crash_times.popleft()
        how = "could not start" if returncode is None else _describe_exit(returncode)
        log.error(
            "service_exited",
            child=self.spec.name,
            exit_code=returncode,
            reason=how,
            uptime_s=round(uptime, 2),
            last_output=self.last_output(),
        )
        if len(self.crash_times) >= self.config.crash_loop_count:
            raise ServiceFailed(
                "crash_loop",
                f"the {self.spec.name} service crashed {len(self.crash_times)} times within "
                f"{self.config.crash_loop_window_s:g} s (supervisor.crash_loop_count, crash_loop_window_s); "
                f"last: {how}. Stopping all services",
                child=self.spec.name,
                crashes=len(self.crash_times),
                exit_code=returncode,
                last_output=self.last_output(),
            )
        delay = min(
            self.config.restart_backoff_initial_s * 2 ** (self.consecutive_crashes - 1),
            self.config.restart_backoff_max_s,
        )
        log.warning(
            "service_restarting",
            child=self.spec.name,
            delay_s=round(delay, 3),
            crashes_in_window=len(self.crash_times),
            crash_loop_count=self.config.crash_loop_count,
        )
        return delay

    async def stop(self, grace_s: float, force: asyncio.Event | None = None) -> None:
        """SIGTERM, up to grace_s for the child to finish its work, then SIGKILL."""
        process = self.process
        if process is None or process.returncode is not None:
            await self._finish_reading()
            return
        started = time.monotonic()
        self._signal(signal.SIGTERM)
        if hasattr(signal, "SIGCONT"):
            self._signal(signal.SIGCONT)  # a stopped (SIGSTOP) child must run to handle SIGTERM
        waits = [asyncio.ensure_future(process.wait())]
        if force is not None:
            waits.append(asyncio.ensure_future(force.wait()))
        done, pending = await asyncio.wait(waits, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            if future is not waits[0]:
                future.cancel()
        if process.returncode is None:
            log.warning("service_killed", child=self.spec.name, pid=process.pid, grace_s=grace_s)
            self._signal(None)
        returncode = await process.wait()
        await self._finish_reading()
        log.info(
            "service_stopped",
            child=self.spec.name,
            pid=process.pid,
            exit_code=returncode,
            seconds=round(time.monotonic() - started, 2),
        )

    def _signal(self, sig: signal.Signals | None) -> None:
        """Send sig to the child's process group; None means "kill" (SIGKILL, or TerminateProcess on Windows)."""
        assert self.process is not None
        if not hasattr(os, "killpg"):  # Windows: no process groups, no graceful signal
            try:
                self.process.terminate() if sig is not None else self.process.kill()
            except ProcessLookupError:
                pass
            return
        sig = signal.SIGKILL if sig is None else sig
        try:
            # The child leads its own process group (start_new_session): signal anything it started too.
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    # -- output ----------------------------------------------------------------------------------

    async def _finish_reading(self) -> None:
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, timeout=2.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            self._reader = None

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        skipping = False  # inside an over-long line whose first MAX_LINE_BYTES were already emitted
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                if pending and not skipping:
                    self._line(pending[:MAX_LINE_BYTES])
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not skipping:
                    self._line(line[:MAX_LINE_BYTES])
                skipping = False
            if skipping:
                pending = b""
            elif len(pending) > MAX_LINE_BYTES:
                self._line(pending[:MAX_LINE_BYTES])
                pending, skipping = b"", True

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        try:
            fields = json.loads(text) if text.startswith("{") else None
        except ValueError:
            fields = None
        try:
            if isinstance(fields, dict) and "event" in fields:
                self._emit_structured(fields)
                return
        except Exception:  # a line we cannot re-emit is still shown, as it came
            pass
        self.output.append(text[:STORED_LINE_CHARS])
        structlog.stdlib.get_logger(f"{self.spec.name}.output").info(text, service=self.spec.name)

    def _emit_structured(self, fields: dict[str, Any]) -> None:
        level = str(fields.get("level", "info")).lower()
        level = level if level in _LEVELS else "info"
        event = str(fields.get("event", ""))
        logger_name = str(fields.get("logger") or f"{self.spec.name}.output")
        extra = {key: value for key, value in fields.items() if key not in _REPLACED_KEYS}
        if "exception" in extra and not self.json_logs:
            extra["exception"] = _exception_text(extra["exception"])
        summary = " ".join([event, *(f"{key}={value}" for key, value in extra.items() if key != "exception")])
        if "exception" in extra:
            summary += " " + _exception_text(extra["exception"]).splitlines()[-1]
        self.output.append((summary if level == "info" else f"[{level}] {summary}")[:STORED_LINE_CHARS])
        logger = structlog.stdlib.get_logger(logger_name)
        getattr(logger, level)(event, service=self.spec.name, **extra)

    def last_output(self) -> list[str]:
        """The last output lines of the current (or last) process, oldest first."""
        return list(self.output)


class Supervisor:
    def __init__(self, settings: Settings, specs: Sequence[ServiceSpec]) -> None:
        self.config = settings.supervisor
        self.stopping = asyncio.Event()
        self.force = asyncio.Event()
        self.signal_name: str | None = None
        env = {**os.environ, "LOGGING__JSON": "true", "PYTHONUNBUFFERED": "1"}
        # Children always log JSON to the supervisor, which renders them as configured.
        if settings.config_file is not None:
            env["CONFIG_PATH"] = str(settings.config_file.resolve())
        self.children = [Child(spec, self.config, env, settings.logging.json_logs, self.stopping) for spec in specs]
        self._ready: set[str] = set()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            if sig == signal.SIGINT:
                log.warning(
                    "stopping_now", signal=sig.name, reason="second SIGINT: services are killed without waiting"
                )
                self.force.set()
            return
        self.signal_name = sig.name
        self.stopping.set()

    def _on_ready(self, child: Child) -> None:
        self._ready.add(child.spec.name)
        if child.restarts == 0 and len(self._ready) == len(self.children):
            fields: dict[str, Any] = {"services": [c.spec.name for c in self.children]}
            for c in self.children:
                if c.spec.name == "tts":
                    fields["dashboard"] = c.spec.url + "/"
            log.info("all_services_ready", **fields)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except NotImplementedError:  # Windows
                signal.signal(sig, lambda number, _: loop.call_soon_threadsafe(self._on_signal, signal.Signals(number)))
        # Every port is checked before anything starts, so a busy one leaves nothing half started.
        for child in self.children:
            problem = port_problem(child.spec)
            if problem:
                event, message = problem
                log.error(event, child=child.spec.name, port=child.spec.port, key=child.spec.port_key, message=message)
                return EXIT_FAILURE if event != "host_invalid" else EXIT_CONFIG
        tasks = [
            asyncio.create_task(child.supervise(self._on_ready), name=f"supervise-{child.spec.name}")
            for child in self.children
        ]
        stop_wait = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)

        failure: ServiceFailed | None = None
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if isinstance(error, ServiceFailed):
                failure = error
                break
            if error is not None:  # a bug in the supervisor: still stop the services in order
                log.error("supervisor_error", exc_info=error)
                failure = ServiceFailed("supervisor_error", f"the supervisor failed: {error!r}")
                break
        self.stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_wait.cancel()

        if failure is not None:
            log.error(failure.event, message=failure.message, **failure.details)
            log.info("stopping", reason=f"{failure.event}", grace_s=self.config.shutdown_grace_s)
        else:
            log.info("stopping", signal=self.signal_name, grace_s=self.config.shutdown_grace_s)
        await asyncio.gather(*(child.stop(self.config.shutdown_grace_s, self.force) for child in self.children))
        code = EXIT_FAILURE if failure is not None else EXIT_OK
        log.info("supervisor_exit", exit_code=code)
        return code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start, watch and stop the STT and TTS services.")
    parser.add_argument("--only", choices=("stt", "tts"), help="start only this service")
    parser.add_argument("--config", help="YAML config file (default: CONFIG_PATH or config.yaml)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"run_services: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.logging, "supervisor")
    specs = service_specs(settings, args.only)
    log.info(
        "supervisor_started",
        pid=os.getpid(),
        services=[spec.name for spec in specs],
        config=str(settings.config_file) if settings.config_file else None,
        environment=settings.environment,
    )
    return asyncio.run(Supervisor(settings, specs).run())


if __name__ == "__main__":
    sys.exit(main())
