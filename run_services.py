"""The supervisor: starts, watches and stops the STT and TTS services as one.

    python run_services.py              # both services (what `make run` does)
    python run_services.py --only stt   # one of them
    python run_services.py --config config.prod.yaml

Each service runs as a child process (`python -m stt.server`, `python -m tts.server`) reading the
same configuration (CONFIG_PATH and the environment). The supervisor

- checks that each service's port is free before starting it, and names the port and its config key
  when it is not;
- checks tls.certfile and tls.keyfile before anything starts, when TLS is configured;
- waits until every `/health` answers (over https with TLS, verified against tls.certfile), then logs
  one line per service with its URL (and the dashboard's); a service that does not answer within
  `supervisor.startup_timeout_s` is reported with its last output lines and the supervisor exits 1;
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
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from core.child import Child, ServiceFailed
from core.child_spec import ServiceSpec, port_problem
from core.config import ConfigError, Settings, load_settings
from core.logging import configure_logging, get_logger
from core.tls import check_files, client_context

log = get_logger("supervisor")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def service_specs(settings: Settings, only: str | None) -> list[ServiceSpec]:
    tls = client_context(settings)
    specs = []
    for name, section in (("stt", settings.stt), ("tts", settings.tts)):
        wyoming = section.wyoming
        others = ((f"{name}.wyoming.port", wyoming.port),) if wyoming.enabled and wyoming.port else ()
        specs.append(ServiceSpec(name, f"{name}.server", section.host, section.port, others, tls))
    return [spec for spec in specs if only in (None, spec.name)]


class Supervisor:
    def __init__(self, settings: Settings, specs: Sequence[ServiceSpec]) -> None:
        self.config = settings.supervisor
        self.stopping = asyncio.Event()
        self.force = asyncio.Event()
        self.signal_name: str | None = None
        # Children always log JSON to the supervisor, which renders them as logging.json says; their own
        # logging.json stays what the configuration says (the dashboard's Settings show it so).
        env = {**os.environ, "LOGGING__TO_SUPERVISOR": "true", "PYTHONUNBUFFERED": "1"}
        if settings.config_file is not None:
            env["CONFIG_PATH"] = str(settings.config_file.resolve())
        self.children = [Child(spec, self.config, env, settings.logging.json_logs, self.stopping) for spec in specs]
        self._ready: set[str] = set()
        self._settled: dict[str, str] = {}

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

    def _on_settled(self, child: Child, health: dict[str, Any]) -> None:
        """A service finished loading: say plainly what works, and what does not and why."""
        name = child.spec.name
        status = health.get("status")
        self._settled[name] = str(status)
        if name == "stt" and health.get("whisper_loaded") is False:
            log.error(
                "service_unusable",
                child=name,
                reason=health.get("error"),
                effect="speech to text refuses every session (model_unavailable, close 1011) until this is fixed "
                "and the service restarted",
            )
        elif status != "ok":
            log.warning("service_degraded", child=name, reasons=health.get("reasons") or health.get("error"))
        else:
            log.info("service_settled", child=name, status=status)
        if child.restarts == 0 and len(self._settled) == len(self.children):
            log.info("all_services_settled", **self._settled)

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
                event, message, key, port = problem
                log.error(event, child=child.spec.name, port=port, key=key, message=message)
                return EXIT_FAILURE if event != "host_invalid" else EXIT_CONFIG
        tasks = [
            asyncio.create_task(child.supervise(self._on_ready, self._on_settled), name=f"supervise-{child.spec.name}")
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
        if settings.tls.enabled:
            check_files(settings)  # a missing or unusable certificate stops everything before anything starts
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
