"""`python -m tts.worker`: a job worker process for jobs.backend redis (README: Jobs).

It reads the same configuration as the TTS service (config.yaml, CONFIG_PATH, the environment), starts
every engine of tts.engines (the default one, or its fallback, as the service does), and runs huey's consumer over the shared
Redis queue with jobs.workers threads: the same task code the embedded service runs (tts/jobs.py). Start
as many as the machines allow, here or elsewhere: each needs the voices the jobs name (tts.voices_dir)
and the results storage (a shared jobs.results_dir, or jobs.storage s3).

SIGTERM (systemd, docker stop) stops it gracefully: the parts in progress finish first. A worker that dies
another way loses the part it held; the service queues it again once its lease (jobs.lease_s) runs out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from core.config import Settings, load_settings
from core.errors import ServiceError
from core.logging import configure_logging, get_logger
from tts.engines import create_engine
from tts.engines.host import EngineFactory, EngineHost
from tts.jobs import JobQueue

log = get_logger("tts.worker")


def run_worker(settings: Settings, workers: int, engine_factory: EngineFactory = create_engine) -> int:
    """Serve the queue until stopped; the exit status (2: a configuration that has nothing to serve)."""
    if settings.jobs.backend != "redis":
        log.error(
            "worker_not_needed",
            reason="jobs.backend is sqlite: the TTS service runs its jobs itself; set jobs.backend redis "
            "(and jobs.redis_url) in the service's and the workers' configuration",
        )
        return 2
    # Every engine of tts.engines, loaded now: a part may name any of them, and a worker serves all jobs.
    engines = EngineHost(settings, engine_factory)
    anyio.run(engines.start, True)
    try:
        engine = engines.current()
    except ServiceError as exc:  # neither the engine nor its fallback could start: nothing to render with
        log.error("worker_engine_unavailable", reason=exc.message)
        return 1
    queue = JobQueue(settings, engines.loaded)
    log.info("worker_started", engine=engine.name, voice=engine.default_voice, threads=workers,
             queue=settings.jobs.queue_name, storage=settings.jobs.storage)  # fmt: skip
    try:
        queue.consumer(workers, embedded=False).run()
    finally:
        engines.close()
    log.info("worker_stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="the YAML configuration (default: CONFIG_PATH or config.yaml)")
    parser.add_argument("--threads", type=int, help="worker threads (default: jobs.workers, at least 1)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.logging, service="tts-worker")
    return run_worker(settings, args.threads or max(1, settings.jobs.workers))


if __name__ == "__main__":
    sys.exit(main())
