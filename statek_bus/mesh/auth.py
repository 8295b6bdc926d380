"""Authenticating to NATS: credentials read from files, TLS, and URLs that never show a secret.

Every process (services, the CLI, the Python clients) connects with the identity its settings
name, each secret read from a file (Kubernetes mounts Secrets as files; an environment variable
shows up in ``/proc/<pid>/environ`` and in crash reports):

==========================  ======================================================================
setting                     meaning
==========================  ======================================================================
``STATEK_CREDS_FILE``       a ``.creds`` file (user JWT + nkey seed), what ``nats context`` uses, or
                            an nkey seed alone (``statek-bus up --auth`` writes those); also
                            ``NATS_CREDS`` or ``--creds``
``STATEK_NKEY_SEED_FILE``   an nkey seed file (``SU...``), for servers that list nkey users
``STATEK_USER_FILE``        a file holding the user name (with ``STATEK_PASSWORD_FILE``)
``STATEK_PASSWORD_FILE``    a file holding the password
``STATEK_TLS_CA_FILE``      CA bundle that signs the server's certificate (turns TLS on)
``STATEK_TLS_CERT_FILE``    client certificate for mutual TLS (with ``STATEK_TLS_KEY_FILE``)
``STATEK_TLS_KEY_FILE``     its private key
==========================  ======================================================================

A ``nats://user:password@host`` URL still works, but every URL this package prints (logs, errors,
``status``) passes through :func:`redact_url` first.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

from statek_bus.mesh.settings import Settings, SettingsError

__all__ = ["AuthError", "connect_options", "redact_url"]

_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*)(?::[^@/]*)?@", re.IGNORECASE)


_JWT_MARK = "-----BEGIN NATS USER JWT-----"


class AuthError(SettingsError):
    """An authentication setting names a file that cannot be read or is inconsistent."""


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of them) with every password replaced by ``***``.

    A bare token in the user part (``nats://TOKEN@host``) is a secret too and is redacted whole.
    """

    def hide(m: re.Match[str]) -> str:
        user = m.group("user")
        has_password = ":" in m.group(0)[len(m.group("scheme")) :]
        return f"{m.group('scheme')}{user}:***@" if has_password else f"{m.group('scheme')}***@"

    return _USERINFO.sub(hide, url)


def _read(setting: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise AuthError(f"{setting}={path!r} cannot be read: {exc.strerror or exc}") from None


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise AuthError("STATEK_TLS_CERT_FILE and STATEK_TLS_KEY_FILE go together (mutual TLS needs both)")
    try:
        ctx = ssl.create_default_context(cafile=settings.tls_ca_file or None)
        if settings.tls_cert_file:
            ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise AuthError(f"TLS files cannot be used: {exc}") from None
    return ctx


def connect_options(settings: Settings) -> dict[str, Any]:
    """The ``nats.connect`` keyword arguments for the identity and TLS that ``settings`` name.

    Raises:
        AuthError: a file cannot be read, or settings that go together are not both given.
    """
    opts: dict[str, Any] = {}
    if settings.creds_file:
        text = _read("STATEK_CREDS_FILE", settings.creds_file)  # fail here, in one line, not in nats-py
        if _JWT_MARK in text:
            opts["user_credentials"] = settings.creds_file
        elif text.startswith("SU"):  # a user's nkey seed and nothing else
            opts["nkeys_seed"] = settings.creds_file
        else:
            raise AuthError(
                f"STATEK_CREDS_FILE={settings.creds_file!r} holds neither a user JWT nor an nkey seed"
            )
    if settings.nkey_seed_file:
        _read("STATEK_NKEY_SEED_FILE", settings.nkey_seed_file)
        opts["nkeys_seed"] = settings.nkey_seed_file
    if bool(settings.user_file) != bool(settings.password_file):
        raise AuthError("STATEK_USER_FILE and STATEK_PASSWORD_FILE go together")
    if settings.user_file:
        opts["user"] = _read("STATEK_USER_FILE", settings.user_file)
        opts["password"] = _read("STATEK_PASSWORD_FILE", settings.password_file)
    tls = _tls(settings)
    if tls is not None:
        opts["tls"] = tls
    return opts
