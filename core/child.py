"""One supervised service process (run_services.py): its address, its start, health, restarts with
backoff, crash-loop detection and graceful stop. Knows neither service: it runs `python -m MODULE`."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from core.child_output import OutputRelay
from core.child_spec import ServiceSpec, port_problem
from core.config import PROJECT_ROOT, SupervisorSettings
from core.logging import get_logger

log = get_logger("supervisor")

HEALTH_POLL_S = 0.1
"""How often /health is polled while a service starts."""
HEALTH_REQUEST_TIMEOUT_S = 2.0
SETTLE_POLL_S = 0.5
"""How often /health is followed after a service answers, until it has finished loading."""

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ServiceFailed(Exception):
    """A service cannot be kept running; the supervisor stops everything and exits 1."""

    def __init__(self, event: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.event = event
        self.message = message
        self.details = details


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
        self.stopping = stopping
        self.process: asyncio.subprocess.Process | None = None
        self.relay = OutputRelay(spec.name, json_logs, config.output_lines)
        self.crash_times: deque[float] = deque()
        self.consecutive_crashes = 0
        self.restarts = 0
        self.started_at = 0.0
        self._reader: asyncio.Task[None] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._preexec = _death_signal_preexec()

    # -- lifecycle -------------------------------------------------------------------------------

    async def supervise(
        self, on_ready: Callable[[Child], None], on_settled: Callable[[Child, dict[str, Any]], None]
    ) -> None:
        """Keep the service running until the supervisor stops; raise ServiceFailed when it cannot."""
        first = True
        while True:
            problem = port_problem(self.spec)
            if problem and first:
                event, message, key, port = problem
                raise ServiceFailed(event, message, child=self.spec.name, port=port, key=key, host=self.spec.host)
            if problem:
                # Something took the port while the service was down: a failed start, like a crash.
                event, message, key, port = problem
                log.error(event, child=self.spec.name, port=port, key=key, message=message)
                returncode: int | None = None
                self.started_at = time.monotonic()
            else:
                await self._spawn()
                settling: asyncio.Task[None] | None = None
                if await self._wait_healthy():
                    on_ready(self)
                    settling = asyncio.create_task(self._wait_settled(on_settled), name=f"{self.spec.name}-settling")
                assert self.process is not None
                returncode = await self.process.wait()
                if settling is not None:
                    settling.cancel()
                await self._finish_reading()
            first = False
            if self.stopping.is_set():
                return
            delay = self._record_crash(returncode)
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _spawn(self) -> None:
        command = [sys.executable, "-m", self.spec.module]
        self.relay.output.clear()  # a crash report shows the lines of the process that crashed
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
        self._reader = asyncio.create_task(self.relay.pump(self.process.stdout), name=f"{self.spec.name}-output")
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
        last_error = ""
        async with httpx.AsyncClient(timeout=HEALTH_REQUEST_TIMEOUT_S, trust_env=False, verify=self.spec.verify) as client:
            while self.process.returncode is None:
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        self._log_ready(response)
                        return True
                except httpx.HTTPError as exc:
                    # Shown on a timeout: a certificate that fails verification (expired, another one) says so here.
                    last_error = f" (last attempt: {type(exc).__name__}{f': {exc}' if str(exc) else ''})"
                if time.monotonic() >= deadline:
                    await self.stop(grace_s=0)
                    raise ServiceFailed(
                        "startup_timeout",
                        f"the {self.spec.name} service did not answer {url} within "
                        f"{self.config.startup_timeout_s:g} s (supervisor.startup_timeout_s){last_error}; it was stopped",
                        child=self.spec.name,
                        last_output=self.last_output(),
                    )
                await self._sleep_or_exit(HEALTH_POLL_S)
        return False

    async def _wait_settled(self, on_settled: Callable[[Child, dict[str, Any]], None]) -> None:
        """Follow /health until the service no longer loads (a model, a voice: a first download can take
        minutes), then report what it can do."""
        async with httpx.AsyncClient(timeout=HEALTH_REQUEST_TIMEOUT_S, trust_env=False, verify=self.spec.verify) as client:
            while True:
                try:
                    health = (await client.get(f"{self.spec.url}/health")).json()
                except (httpx.HTTPError, ValueError):
                    health = {"loading": True}
                if not health.get("loading"):
                    on_settled(self, health)
                    return
                await asyncio.sleep(SETTLE_POLL_S)

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
            fields["websocket"] = self.spec.url.replace("http", "ws", 1) + "/ws/stt"  # wss with https
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

    async def _finish_reading(self) -> None:
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, timeout=2.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            self._reader = None

    def last_output(self) -> list[str]:
        """The last output lines of the current (or last) process, oldest first."""
        return list(self.relay.output)
