"""The identities of an embedded mesh with authentication (``statek-bus up --auth``).

One nkey user per role of the permission matrix (:mod:`statek_bus.mesh.permissions`): the
administrator (``statek-bus provision``), each service, and the client. Seeds are written under
``<data dir>/auth/`` as ``<role>.nk`` with mode 0600 (the directory 0700), with the server's
config beside them (``nats-server.conf``: one account with JetStream, the users' public keys and
their permissions). A data dir that has them keeps them, so a restarted mesh accepts the
credentials its users already hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from statek_bus.mesh.permissions import ADMIN, ROLES, nkey_variable, server_config

__all__ = ["AUTH_DIR", "Identities", "identities"]

AUTH_DIR = "auth"
"""The data dir's subdirectory holding the seeds and the server config."""


@dataclass(frozen=True)
class Identities:
    """Where an auth mesh's credentials and server config are."""

    directory: Path
    """``<data dir>/auth``."""

    def seed_file(self, role: str) -> Path:
        """The nkey seed file of ``role`` (what ``NATS_CREDS`` / ``STATEK_CREDS_FILE`` name)."""
        return self.directory / f"{role}.nk"

    @property
    def server_config(self) -> Path:
        """The nats-server config with the account and its users."""
        return self.directory / "nats-server.conf"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def identities(data_dir: str | Path, *, directory: str | Path | None = None) -> Identities:
    """Create (or reuse) the seeds of every role under ``data_dir`` and write the server config.

    ``directory``: write them there instead of ``<data_dir>/auth`` (``statek-bus credentials``,
    for Kubernetes Secrets). Beside them, ``users.env`` maps each role to its public key
    (``STATEK_NKEY_<ROLE>=U...``), what the NATS pods read (deploy/helm/nats-values.yaml).
    """
    ids = Identities(Path(directory) if directory is not None else Path(data_dir) / AUTH_DIR)
    ids.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(ids.directory, 0o700)
    users: dict[str, str] = {}
    for name in (ADMIN, *(r.name for r in ROLES)):
        path = ids.seed_file(name)
        if path.exists():
            seed = path.read_bytes().strip()
        else:
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            _write_private(path, seed.decode() + "\n")
        users[name] = nkeys.from_seed(bytearray(seed)).public_key.decode()
    _write_private(ids.server_config, server_config(users))
    _write_private(
        ids.directory / "users.env", "".join(f"{nkey_variable(n)}={k}\n" for n, k in users.items())
    )
    return ids
