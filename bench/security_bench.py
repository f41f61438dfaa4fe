"""What the door costs, and whether hostile traffic hurts: two measurements of the real services.

1. Cost of auth and the checks (API key, origin, host, rate limits on) against the same server with
   none of them configured, in the same run, rounds interleaved: a short `POST /tts` (reply false, the
   costed synthetic Piper voice) and a `/ws/tts` handshake (connect, `connection` message, close).
   Target: ratio of medians <= 1.02 for both.
2. A soak: both services as their own processes (`python -m stt.server`, `python -m tts.server`, keys
   on) driven for `--soak-seconds` (600 by default) by several clients at once with mixed valid and
   hostile traffic: speech and transcriptions, and wrong keys, other sites' origins, rebound Host
   headers, deeply nested JSON, lone surrogates, wrong content types, garbage WebSocket frames, half
   request headers. Reports every answer by kind and status, the answers that are defects (a 5xx, a
   dropped connection, a valid request refused), each service's RSS growth, and /health p99.

    python -m bench.security_bench [--rounds 30] [--soak-seconds 600] [--voice costed|toy] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

from bench.openai_bench import voice
from bench.stt_bench import default_cache_dir
from core.audio import float32_to_pcm16
from core.config import PROJECT_ROOT, Settings
from tests.fixtures.ollama_double import down_url
from tests.fixtures.server import run_server
from tests.fixtures.speech import make_speech
from tests.fixtures.whisper_model import build_whisper_model
from tts.server import create_app as create_tts_app

KEY = "bench-key-0123456789abcdef"
TARGET = 1.02
KEYS = [{"name": f"client-{n}", "key": f"{KEY}-{n}", "scopes": ["speak", "transcribe"]} for n in range(4)] + [
    {"name": "bench", "key": KEY, "scopes": ["admin"]}
]


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def bench_cost(rounds: int, voices: Path, name: str) -> dict[str, Any]:
    def settings(secured: bool) -> Settings:
        extra: dict[str, Any] = {"auth": {"keys": KEYS}, "security": {"allowed_origins": ["https://app.example"]}} if secured else {}
        return Settings(logging={"level": "warning"}, tts={"voices_dir": str(voices), "voice": name, "wyoming": {"enabled": False}}, llm={"url": down_url()}, **extra)

    body = {"text": "Hello.", "reply": False}
    headers = {"Authorization": f"Bearer {KEY}", "Origin": "http://localhost:8000"}
    times: dict[str, dict[str, list[float]]] = {"open": {"tts": [], "ws": []}, "secured": {"tts": [], "ws": []}}
    open_app, secured_app = create_tts_app(settings(False)), create_tts_app(settings(True))
    with run_server(open_app) as open_server, run_server(secured_app) as secured_server:
        servers = {"open": open_server, "secured": secured_server}
        clients = {kind: httpx.Client(base_url=server.http_url, headers=headers, timeout=60) for kind, server in servers.items()}

        def once(kind: str) -> None:
            started = time.perf_counter()
            clients[kind].post("/tts", json=body).raise_for_status()
            times[kind]["tts"].append(time.perf_counter() - started)
            started = time.perf_counter()
            with connect(f"{servers[kind].ws_url}/ws/tts", additional_headers=headers, open_timeout=10) as ws:
                ws.recv(timeout=10)
            times[kind]["ws"].append(time.perf_counter() - started)

        while open_app.state.service.engines.loading or secured_app.state.service.engines.loading:
            time.sleep(0.05)
        for kind in times:  # warm-up: voice load
            once(kind)
            times[kind] = {"tts": [], "ws": []}
        for round_ in range(rounds):
            for kind in ("open", "secured") if round_ % 2 else ("secured", "open"):  # neither always goes first
                once(kind)
        for client in clients.values():
            client.close()
    medians = {kind: {what: _median_ms(values) for what, values in by.items()} for kind, by in times.items()}
    ratios = {what: medians["secured"][what] / medians["open"][what] for what in ("tts", "ws")}
    return {"medians_ms": medians, "ratios": ratios}


# -- the soak ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Soak:
    def __init__(self, tts_port: int, stt_port: int) -> None:
        self.tts = f"http://127.0.0.1:{tts_port}"
        self.stt = f"http://127.0.0.1:{stt_port}"
        self.answers: Counter[str] = Counter()
        self.defects: Counter[str] = Counter()
        self.health_ms: list[float] = []
        self.lock = threading.Lock()
        self.audio = float32_to_pcm16(make_speech("Turn on the kitchen light.", lead_silence_s=0.3, trail_silence_s=0.9))

    def record(self, kind: str, outcome: str, defect: bool = False) -> None:
        with self.lock:
            self.answers[f"{kind} -> {outcome}"] += 1
            if defect:
                self.defects[f"{kind} -> {outcome}"] += 1

    def http(self, client: httpx.Client, kind: str, expected: int, method: str, url: str, **options: Any) -> None:
        try:
            status = client.request(method, url, **options).status_code
        except httpx.HTTPError as exc:
            self.record(kind, type(exc).__name__, defect=True)
            return
        self.record(kind, str(status), defect=status >= 500 or status != expected)

    def stream_speech(self, key: str) -> None:
        try:
            with connect(f"{self.stt.replace('http', 'ws')}/ws/stt", additional_headers={"X-API-Key": key}, open_timeout=10) as ws:
                ws.recv(timeout=10)
                for start in range(0, len(self.audio), 3200):
                    ws.send(self.audio[start : start + 3200])
                ws.send(json.dumps({"type": "end"}))
                while json.loads(ws.recv(timeout=30)).get("type") not in ("transcript", "no_speech", "error"):
                    pass
            self.record("ws_stt speech", "ok")
        except (WebSocketException, TimeoutError, OSError) as exc:
            self.record("ws_stt speech", type(exc).__name__, defect=True)

    def garbage_socket(self, rng: random.Random, key: str) -> None:
        path = rng.choice(["/ws/stt", "/ws/tts"])
        base = (self.stt if path == "/ws/stt" else self.tts).replace("http", "ws")
        frames: list[str | bytes] = [
            rng.randbytes(rng.randint(1, 5000)),
            "[" * 3000,
            '{"type": "nope"}',
            '"\\ud800"',
            "{",
            json.dumps({"type": "cancel_generation"}),
        ]
        try:
            with connect(f"{base}{path}", additional_headers={"X-API-Key": key}, open_timeout=10) as ws:
                ws.recv(timeout=10)
                for frame in rng.sample(frames, 4):
                    ws.send(frame)
                ws.close()
            self.record(f"{path} garbage", "closed")
        except (WebSocketException, TimeoutError, OSError) as exc:
            self.record(f"{path} garbage", type(exc).__name__, defect=not isinstance(exc, WebSocketException))

    def hostile_handshake(self, origin: bool) -> None:
        headers = {"Origin": "http://evil.example"} if origin else {}
        try:
            with connect(f"{self.tts.replace('http', 'ws')}/ws/tts", additional_headers=headers, open_timeout=10):
                self.record("ws hostile handshake", "accepted", defect=True)
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.record("ws hostile handshake", str(status), defect=status not in (401, 403))

    def half_header(self) -> None:
        with socket.create_connection(("127.0.0.1", int(self.tts.rsplit(":", 1)[1])), timeout=30) as raw:
            raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            try:
                closed = raw.recv(1) == b""
            except (TimeoutError, OSError):
                closed = False
        self.record("half header", "closed" if closed else "left open", defect=not closed)

    def client(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        key = f"{KEY}-{seed % 4}"
        good = {"Authorization": f"Bearer {key}"}
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                choice = rng.randrange(10)
                if choice == 0:
                    self.http(client, "tts valid", 200, "POST", f"{self.tts}/tts", json={"text": "Hi there.", "reply": False}, headers=good)
                elif choice == 1:
                    self.stream_speech(key)
                elif choice == 2:
                    self.http(client, "wrong key", 401, "POST", f"{self.tts}/tts", json={"text": "Hi."}, headers={"X-API-Key": "wrong"})
                elif choice == 3:
                    evil = {**good, "Origin": "http://evil.example"}
                    self.http(client, "cross-site post", 403, "POST", f"{self.tts}/tts", json={"text": "Hi."}, headers=evil)
                elif choice == 4:
                    self.http(client, "rebound host", 403, "GET", f"{self.tts}/metrics", headers={"Host": "evil.example"})
                elif choice == 5:
                    nested = {**good, "Content-Type": "application/json"}
                    self.http(client, "nested json", 422, "POST", f"{self.tts}/tts", content="[" * 5000, headers=nested)
                elif choice == 6:
                    surrogate = {**good, "Content-Type": "application/json"}
                    body = '{"text": "Hi \\ud800 there.", "reply": false}'
                    self.http(client, "lone surrogate", 422, "POST", f"{self.tts}/tts", content=body, headers=surrogate)
                elif choice == 7:
                    plain = {**good, "Content-Type": "text/plain"}
                    self.http(client, "text/plain post", 415, "POST", f"{self.tts}/tts", content='{"text": "Hi."}', headers=plain)
                elif choice == 8:
                    self.garbage_socket(rng, key)
                else:
                    self.hostile_handshake(origin=rng.random() < 0.5)
                if rng.random() < 0.02:
                    self.half_header()

    def watch_health(self, deadline: float) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    client.get(f"{self.tts}/health")
                    client.get(f"{self.stt}/health")
                except httpx.HTTPError:
                    self.record("health", "failed", defect=True)
                self.health_ms.append((time.perf_counter() - started) * 1000 / 2)
                time.sleep(0.5)


def _start(service: str, config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONFIG_PATH": str(config)}
    return subprocess.Popen([sys.executable, "-m", f"{service}.server"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("status") in ("ok", "degraded"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy")


def bench_soak(seconds: float, clients: int, voices: Path, name: str, cache: Path) -> dict[str, Any]:
    model = build_whisper_model(cache / "whisper-toy", shape="toy")
    tts_port, stt_port = _free_port(), _free_port()
    config = {
        "logging": {"level": "warning", "json": True},
        "auth": {"keys": KEYS},
        "security": {"header_timeout_s": 5},
        "stt": {"port": stt_port, "model": str(model), "beam_size": 1, "wyoming": {"enabled": False}},
        "tts": {"port": tts_port, "voices_dir": str(voices), "voice": name, "wyoming": {"enabled": False}},
        "llm": {"url": down_url()},
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        processes = {"stt": _start("stt", path), "tts": _start("tts", path)}
        try:
            soak = Soak(tts_port, stt_port)
            _wait_healthy(soak.tts)
            _wait_healthy(soak.stt)
            rss_start = {service: _rss_kb(process.pid) for service, process in processes.items()}
            deadline = time.monotonic() + seconds
            threads = [threading.Thread(target=soak.client, args=(seed, deadline)) for seed in range(clients)]
            threads.append(threading.Thread(target=soak.watch_health, args=(deadline,)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rss_end = {service: _rss_kb(process.pid) for service, process in processes.items()}
            alive = {service: process.poll() is None for service, process in processes.items()}
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(30)
    health = sorted(soak.health_ms)
    return {
        "seconds": seconds,
        "answers": dict(sorted(soak.answers.items())),
        "defects": dict(soak.defects),
        "rss_growth_mb": {service: round((rss_end[service] - rss_start[service]) / 1024, 1) for service in processes},
        "alive": alive,
        "health_p99_ms": round(health[int(len(health) * 0.99) - 1], 1) if health else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--voice", choices=("costed", "toy"), default="costed")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    voices, name = voice(args.voice, args.cache_dir)
    cost = bench_cost(args.rounds, voices, name)
    soak = bench_soak(args.soak_seconds, args.clients, voices, name, args.cache_dir) if args.soak_seconds > 0 else None
    if args.json:
        print(json.dumps({"cost": cost, "soak": soak}))
        return 0
    print("\n| what | auth off | auth on | ratio | target |\n| --- | --- | --- | --- | --- |")
    labels = {"tts": "POST /tts (reply false, 'Hello.')", "ws": "/ws/tts handshake"}
    for what, label in labels.items():
        off, on = cost["medians_ms"]["open"][what], cost["medians_ms"]["secured"][what]
        print(f"| {label} | {off} ms | {on} ms | {cost['ratios'][what]:.3f} | <= {TARGET} |")
    if soak is not None:
        print(f"\nsoak, {soak['seconds']:.0f} s, {args.clients} clients: defects {soak['defects'] or 'none'}; "
              f"RSS growth {soak['rss_growth_mb']} MB; /health p99 {soak['health_p99_ms']} ms; alive {soak['alive']}")
        for answer, count in soak["answers"].items():
            print(f"  {answer}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
