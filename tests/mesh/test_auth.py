"""Connecting to a NATS server that demands an identity: user/password and nkey seeds read from
files, TLS with a client certificate, and URLs that never show a password."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
import trustme

from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.auth import AuthError, connect_options, redact_url
from statek_bus.mesh.connection import connect
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import find_server_binary, free_port
from statek_bus.wire.errors import ServiceUnavailableError


def _server(tmp: Path, config: str) -> Iterator[int]:
    port = free_port()
    conf = tmp / "server.conf"
    conf.write_text(f"listen: 127.0.0.1:{port}\n{config}\n")
    proc = subprocess.Popen([find_server_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with __import__("socket").socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _secret(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value + "\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[int]:
    yield from _server(tmp_path, 'authorization { user: "svc", password: "s3cret-pw" }')


async def test_user_and_password_are_read_from_files(password_server: int, tmp_path: Path) -> None:
    settings = Settings.from_env(
        {},
        nats_url=f"nats://127.0.0.1:{password_server}",
        user_file=_secret(tmp_path, "user", "svc"),
        password_file=_secret(tmp_path, "password", "s3cret-pw"),
    )
    nc = await connect(settings, name="auth-test")
    assert nc.is_connected
    await nc.close()


async def test_a_wrong_password_fails_in_one_line_that_shows_no_secret(password_server: int) -> None:
    settings = Settings.from_env({}, nats_url=f"nats://svc:WRONGSECRET@127.0.0.1:{password_server}")
    with pytest.raises(ServiceUnavailableError) as err:
        await connect(settings, name="auth-test")
    assert "WRONGSECRET" not in str(err.value) and "svc:***@" in str(err.value)


async def test_an_nkey_seed_file_authenticates(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    for port in _server(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}'):
        url = f"nats://127.0.0.1:{port}"
        with pytest.raises(ServiceUnavailableError):
            await connect(Settings.from_env({}, nats_url=url), name="no-identity")
        settings = Settings.from_env(
            {}, nats_url=url, nkey_seed_file=_secret(tmp_path, "seed", seed.decode())
        )
        async with AsyncStatekClient(settings=settings) as client:
            assert (await client.connection()).is_connected


async def test_mutual_tls_with_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("statek-executor@example.test")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    tls = (
        f'tls {{ cert_file: "{tmp_path}/server.pem", key_file: "{tmp_path}/server.key", '
        f'ca_file: "{tmp_path}/ca.pem", verify: true }}'
    )
    for port in _server(tmp_path, tls):
        url = f"tls://127.0.0.1:{port}"
        with pytest.raises(ServiceUnavailableError):  # no client certificate: refused
            await connect(Settings.from_env({}, nats_url=url, tls_ca_file=str(tmp_path / "ca.pem")), name="x")
        settings = Settings.from_env(
            {},
            nats_url=url,
            tls_ca_file=str(tmp_path / "ca.pem"),
            tls_cert_file=str(tmp_path / "client.pem"),
            tls_key_file=str(tmp_path / "client.key"),
        )
        nc = await connect(settings, name="mtls-test")
        assert nc.is_connected
        await nc.close()


def test_a_missing_or_half_given_secret_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    user = _secret(tmp_path, "u", "svc")
    with pytest.raises(AuthError, match=r"STATEK_PASSWORD_FILE=.* cannot be read"):
        connect_options(Settings.from_env({}, user_file=user, password_file=str(tmp_path / "missing")))
    with pytest.raises(AuthError, match="go together"):
        connect_options(Settings.from_env({}, user_file=user))
    with pytest.raises(AuthError, match="STATEK_TLS_KEY_FILE"):
        connect_options(Settings.from_env({}, tls_cert_file=str(tmp_path / "c.pem")))


def test_urls_are_redacted_wherever_they_are_printed() -> None:
    assert redact_url("nats://admin:pw@10.0.0.1:4222") == "nats://admin:***@10.0.0.1:4222"
    assert redact_url("nats://a:1@h1:4222,nats://b:2@h2:4222") == "nats://a:***@h1:4222,nats://b:***@h2:4222"
    assert redact_url("nats://TOKEN123@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
