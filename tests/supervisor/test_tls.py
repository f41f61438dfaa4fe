"""The real supervisor with TLS configured: it checks the files before anything starts, checks health over
https against the configured certificate, and says which certificate error kept a service from answering."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from core.config import PROJECT_ROOT
from tests.fixtures.tls import TlsFiles, tls_files, write_tls_files  # noqa: F401  (a fixture)
from tests.supervisor.conftest import wait_gone


def test_the_services_come_up_over_https_and_the_supervisor_checks_them_so(
    make_config, start_supervisor, tls_files: TlsFiles  # noqa: F811
) -> None:
    config = make_config(tls=tls_files.config)
    stt_port, tts_port = config["stt"]["port"], config["tts"]["port"]
    run = start_supervisor(config)

    ready = run.wait_event("all_services_ready")
    assert ready["dashboard"] == f"https://127.0.0.1:{tts_port}/"
    stt_ready = run.find("service_ready", child="stt")[0]
    assert (stt_ready["url"], stt_ready["websocket"]) == (
        f"https://127.0.0.1:{stt_port}",
        f"wss://127.0.0.1:{stt_port}/ws/stt",
    )
    for port in (stt_port, tts_port):
        run.wait_event(f"Uvicorn running on https://127.0.0.1:{port} (Press CTRL+C to quit)")
        response = httpx.get(f"https://127.0.0.1:{port}/health", verify=tls_files.client_context())
        assert response.status_code == 200
    run.wait_event("all_services_settled")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait_exit() == 0


def test_a_missing_certificate_stops_the_supervisor_before_anything_starts(
    make_config, start_supervisor, tls_files: TlsFiles, tmp_path: Path  # noqa: F811
) -> None:
    missing = tmp_path / "cert.pem"
    config = make_config(tls={"certfile": str(missing), "keyfile": str(tls_files.keyfile)})
    run = start_supervisor(config)
    assert run.wait_exit() == 2
    lines = [event["event"] for event in run.events]
    assert lines[0].startswith(f"run_services: tls.certfile: the certificate file {missing} does not exist; make a ")
    assert "mkcert" in lines[0] and "openssl req -x509" in lines[0]
    assert run.find("service_started") == []


def test_a_service_started_alone_refuses_a_missing_key(
    make_config, tls_files: TlsFiles, tmp_path: Path  # noqa: F811
) -> None:
    missing = tmp_path / "key.pem"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(make_config(tls={"certfile": str(tls_files.certfile), "keyfile": str(missing)})))
    done = subprocess.run(
        [sys.executable, "-m", "tts.server"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "CONFIG_PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"tts: tls.keyfile: the private key file {missing} does not exist; make a ")


def test_a_certificate_the_health_check_cannot_verify_is_named_when_the_service_times_out(
    make_config, start_supervisor, tmp_path: Path
) -> None:
    # The server loads an expired certificate without complaint; a client (the supervisor, a browser) refuses it.
    expired = write_tls_files(tmp_path / "expired", not_after=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1))
    config = make_config(tls=expired.config, supervisor={"startup_timeout_s": 8})
    run = start_supervisor(config, "--only", "stt")
    assert run.wait_exit(timeout=60) == 1
    failure = run.find("startup_timeout")[0]
    assert f"did not answer https://127.0.0.1:{config['stt']['port']}/health within 8 s" in failure["message"]
    assert "(last attempt: ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired" in failure["message"]
    assert wait_gone(run.child_pids()) == []
