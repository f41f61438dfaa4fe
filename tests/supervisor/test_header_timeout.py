"""security.header_timeout_s on both real services, started by the real supervisor: a connection that
sends half a request header is closed, while a complete request, a kept-alive connection and an open
WebSocket are left alone."""

from __future__ import annotations

import json
import socket
import time

from websockets.sync.client import connect

HALF_HEADER = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
TIMEOUT_S = 0.5
BOUND_S = 10.0
"""How long the test waits for the close: far more than the setting, so a slow machine never fails it."""


def closed_by_server(sock: socket.socket) -> tuple[bool, bytes]:
    """(whether the server closed the connection within BOUND_S, what it sent before)."""
    sock.settimeout(BOUND_S)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_half_a_request_header_is_closed_on_both_services(make_config, start_supervisor) -> None:
    config = make_config(security={"header_timeout_s": TIMEOUT_S})
    ports = {"stt": config["stt"]["port"], "tts": config["tts"]["port"]}
    run = start_supervisor(config)
    run.wait_event("all_services_ready")

    for service, port in ports.items():
        with socket.create_connection(("127.0.0.1", port)) as silent, socket.create_connection(("127.0.0.1", port)) as half:
            half.sendall(HALF_HEADER)
            assert closed_by_server(half) == (True, b""), f"{service}: half a header was not closed"
            assert closed_by_server(silent) == (True, b""), f"{service}: a silent connection was not closed"

        # A kept-alive connection: its first request is served, half of its second is timed like any other.
        with socket.create_connection(("127.0.0.1", port)) as kept:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = kept.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 "), first[:80]
            kept.sendall(HALF_HEADER)
            closed, rest = closed_by_server(kept)
            assert closed, f"{service}: half of a second header was not closed"
            assert b"HTTP/1.1" not in rest  # nothing was answered for it

    # A WebSocket outlives the header deadline: its header was complete.
    with connect(f"ws://127.0.0.1:{ports['stt']}/ws/stt", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        time.sleep(TIMEOUT_S * 3)
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "no_speech"
    assert run.find("header_timeout"), "each close is logged"
