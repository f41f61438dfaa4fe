"""TLS for both services (tls.certfile, tls.keyfile): the files are checked before anything listens, uvicorn
gets them, and our own clients of the services (the supervisor's health checks, the TTS service's calls to
the STT service) verify the services against the configured certificate itself.

Wyoming stays plain TCP: Home Assistant's Wyoming integration has no TLS.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from core.config import ConfigError, Settings

HOW_TO_MAKE_ONE = (
    "make a certificate and key with mkcert (`mkcert -install`, then `mkcert -cert-file cert.pem -key-file key.pem "
    "HOSTNAME localhost 127.0.0.1`) or, self-signed, with openssl (`openssl req -x509 -newkey rsa:2048 -nodes "
    "-days 365 -keyout key.pem -out cert.pem -subj /CN=HOSTNAME -addext subjectAltName=DNS:HOSTNAME,IP:127.0.0.1`), "
    "or set tls.certfile and tls.keyfile to null for plain HTTP"
)
_CERTIFICATE_BEGIN = "-----BEGIN CERTIFICATE-----"
_CERTIFICATE_END = "-----END CERTIFICATE-----"


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for HTTPS and WSS when TLS is configured (the files checked first); none otherwise."""
    if not settings.tls.enabled:
        return {}
    certfile, keyfile = check_files(settings)
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def check_files(settings: Settings) -> tuple[Path, Path]:
    """The resolved certfile and keyfile once both are readable PEM files that belong together; otherwise a
    ConfigError that names the file and says what to do."""
    tls = settings.tls
    assert tls.certfile is not None and tls.keyfile is not None, "check_files needs TLS configured"
    certfile, keyfile = settings.resolve_path(tls.certfile), settings.resolve_path(tls.keyfile)
    if _CERTIFICATE_BEGIN not in _read(certfile, "tls.certfile", "certificate"):
        raise ConfigError(f"tls.certfile: {certfile} holds no PEM certificate ({_CERTIFICATE_BEGIN}); {HOW_TO_MAKE_ONE}")
    key = _read(keyfile, "tls.keyfile", "private key")
    if "ENCRYPTED" in key:
        raise ConfigError(
            f"tls.keyfile: {keyfile} is protected by a passphrase, which a service cannot ask for at start; "
            f"write a copy without it (`openssl pkey -in {keyfile} -out key.pem`) and point tls.keyfile there"
        )
    if "PRIVATE KEY-----" not in key:
        raise ConfigError(f"tls.keyfile: {keyfile} holds no PEM private key (-----BEGIN PRIVATE KEY-----); {HOW_TO_MAKE_ONE}")
    try:
        # The password callback keeps OpenSSL from prompting on the terminal for a key we did not recognise.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile, password=lambda: b"")
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.certfile {certfile} and tls.keyfile {keyfile} cannot be used together ({exc.reason or exc}): "
            f"the key must be the one the certificate was made for; {HOW_TO_MAKE_ONE}"
        ) from None
    return certfile, keyfile


def _read(path: Path, key: str, what: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{key}: the {what} file {path} does not exist; {HOW_TO_MAKE_ONE}") from None
    except OSError as exc:
        raise ConfigError(
            f"{key}: the {what} file {path} cannot be read ({exc.strerror}); let the user that runs the services read "
            "it (the key only that user: chmod 600)"
        ) from None


def client_verify(settings: Settings) -> ssl.SSLContext | bool:
    """httpx's `verify` for our own clients of the services: client_context with TLS; False without (plain
    http: nothing to verify, and no certificate bundle to load)."""
    return client_context(settings) or False


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """With TLS, the context our own clients verify the services with: it trusts the configured certificate
    and nothing else. None without TLS."""
    if settings.tls.certfile is None:
        return None
    text = settings.resolve_path(settings.tls.certfile).read_text(encoding="ascii", errors="replace")
    # Only the first certificate (the server's own): its issuers, were they trusted too, would vouch for any
    # certificate they ever issued.
    leaf = text[text.index(_CERTIFICATE_BEGIN) : text.index(_CERTIFICATE_END) + len(_CERTIFICATE_END)]
    context = ssl.create_default_context(cadata=leaf)
    # The server's certificate as the trust anchor, whoever issued it (self-signed, mkcert, a public CA).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # The certificate names the address browsers use (assistant.lan, say), which need not be the loopback
    # address these clients call; a server that proves it holds the key of this very certificate is ours.
    context.check_hostname = False
    return context
