"""What the supervisor starts (run_services.py): a service's module, address and other listeners, and
whether each of its ports can be bound before it is started."""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

from core.http import local_url


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    host: str
    port: int
    other_ports: tuple[tuple[str, int], ...] = ()
    """(config key, port) of the service's other listeners (Wyoming), checked before it starts too."""
    tls: ssl.SSLContext | None = None
    """How the service's certificate is verified when it serves https (tls.certfile); None: plain http."""

    @property
    def port_key(self) -> str:
        return f"{self.name}.port"

    @property
    def host_key(self) -> str:
        return f"{self.name}.host"

    @property
    def url(self) -> str:
        """Where this machine reaches the service (a wildcard listen address is reached on loopback)."""
        return local_url(self.host, self.port, secure=self.tls is not None)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for this service: its certificate, or nothing to verify over plain http."""
        return self.tls or False

    @property
    def ports(self) -> list[tuple[str, int]]:
        return [(self.port_key, self.port), *self.other_ports]


def port_problem(spec: ServiceSpec) -> tuple[str, str, str, int] | None:
    """Try to bind each of the service's addresses as it will; (event, message, key, port) of the first
    that fails."""
    for key, port in spec.ports:
        problem = _bind_problem(spec, key, port)
        if problem is not None:
            return (*problem, key, port)
    return None


def _bind_problem(spec: ServiceSpec, key: str, port: int) -> tuple[str, str] | None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            spec.host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
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
                    f"port {port} on {spec.host} is already in use, so the {spec.name} service cannot "
                    f"start; stop the program using it or set {key} "
                    f"(environment {key.upper().replace('.', '__')}) to a free port"
                )
            if exc.errno == errno.EACCES:
                return "port_forbidden", (
                    f"port {port} ({key}) needs privileges this user does not have; use a port above 1023"
                )
            return (
                "host_invalid",
                f"cannot listen on {spec.host}:{port} ({spec.host_key}, {key}): {exc.strerror}",
            )
    return None
