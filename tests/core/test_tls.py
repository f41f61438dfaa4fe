"""tls.certfile and tls.keyfile: the files are checked before a server listens, with messages that name the
file and say how to make one; our own clients trust the configured certificate and nothing else."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from core.config import PROJECT_ROOT, ConfigError, Settings
from core.tls import check_files, client_context, client_verify, server_options
from tests.fixtures.server import run_server
from tests.fixtures.tls import TlsFiles, tls_files, write_tls_files  # noqa: F401  (a fixture)


def settings_with(certfile: Path | str, keyfile: Path | str) -> Settings:
    return Settings(tls={"certfile": str(certfile), "keyfile": str(keyfile)})


def refusal(settings: Settings) -> str:
    with pytest.raises(ConfigError) as caught:
        check_files(settings)
    return str(caught.value)


def test_without_tls_there_is_nothing_to_serve_with_and_nothing_to_verify() -> None:
    settings = Settings()
    assert (server_options(settings), client_context(settings), client_verify(settings)) == ({}, None, False)


def test_good_files_become_uvicorns_options(tls_files: TlsFiles) -> None:  # noqa: F811
    settings = settings_with(tls_files.certfile, tls_files.keyfile)
    assert server_options(settings) == {"ssl_certfile": str(tls_files.certfile), "ssl_keyfile": str(tls_files.keyfile)}


def test_a_missing_certificate_is_named_resolved_from_the_project_directory_with_how_to_make_one() -> None:
    message = refusal(settings_with("certs/nowhere.pem", "certs/nowhere-key.pem"))
    assert message.startswith(f"tls.certfile: the certificate file {PROJECT_ROOT / 'certs/nowhere.pem'} does not exist; ")
    assert "mkcert -cert-file cert.pem -key-file key.pem HOSTNAME localhost 127.0.0.1" in message
    assert "openssl req -x509" in message and "set tls.certfile and tls.keyfile to null for plain HTTP" in message


def test_a_missing_key_is_named(tls_files: TlsFiles, tmp_path: Path) -> None:  # noqa: F811
    message = refusal(settings_with(tls_files.certfile, tmp_path / "key.pem"))
    assert message.startswith(f"tls.keyfile: the private key file {tmp_path / 'key.pem'} does not exist; ")


def test_an_unreadable_file_is_named_with_why(tls_files: TlsFiles, tmp_path: Path) -> None:  # noqa: F811
    # A directory where the key should be: unreadable for every user, root included.
    message = refusal(settings_with(tls_files.certfile, tmp_path))
    assert message.startswith(f"tls.keyfile: the private key file {tmp_path} cannot be read (Is a directory); ")


def test_files_that_are_not_pem_or_swapped_are_refused(tls_files: TlsFiles, tmp_path: Path) -> None:  # noqa: F811
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n", encoding="ascii")
    assert refusal(settings_with(junk, tls_files.keyfile)).startswith(f"tls.certfile: {junk} holds no PEM certificate")
    swapped = refusal(settings_with(tls_files.certfile, tls_files.certfile))
    assert swapped.startswith(f"tls.keyfile: {tls_files.certfile} holds no PEM private key")


def test_a_key_of_another_certificate_is_refused(tls_files: TlsFiles, tmp_path: Path) -> None:  # noqa: F811
    other = write_tls_files(tmp_path / "other")
    message = refusal(settings_with(tls_files.certfile, other.keyfile))
    assert message.startswith(
        f"tls.certfile {tls_files.certfile} and tls.keyfile {other.keyfile} cannot be used together "
        "(KEY_VALUES_MISMATCH): the key must be the one the certificate was made for"
    )


def test_a_key_with_a_passphrase_is_refused_without_asking_for_it(tls_files: TlsFiles, tmp_path: Path) -> None:  # noqa: F811
    key = serialization.load_pem_private_key(tls_files.keyfile.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret passphrase"),
        )
    )
    message = refusal(settings_with(tls_files.certfile, encrypted))
    assert message.startswith(f"tls.keyfile: {encrypted} is protected by a passphrase")
    assert f"`openssl pkey -in {encrypted} -out key.pem`" in message


def ok_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def test_our_clients_trust_the_configured_certificate_and_no_other_from_the_same_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    ours, theirs = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    for name, leaf in (("ours", ours), ("theirs", theirs)):
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / f"{name}-key.pem"))
    settings = settings_with(tmp_path / "ours.pem", tmp_path / "ours-key.pem")
    verify = client_verify(settings)
    with run_server(ok_app(), **server_options(settings)) as server:
        assert httpx.get(f"{server.http_url}/health", verify=verify).json() == {"status": "ok"}
    impostor = settings_with(tmp_path / "theirs.pem", tmp_path / "theirs-key.pem")
    with run_server(ok_app(), **server_options(impostor)) as server:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.http_url}/health", verify=verify)
