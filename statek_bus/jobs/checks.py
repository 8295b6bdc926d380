"""Request checks of the submission service: ids, shared variables, conflicts, reply sizes.

Every ``field`` these errors carry is a JSON path into the request (``$.params.source``,
``$.shared_vars_batch[3].when``), as the request decoder reports its own errors.
"""

from __future__ import annotations

import binascii
import contextlib
import keyword
from collections.abc import Iterator
from typing import Any

import msgspec

from statek_bus.wire.errors import BadRequestError, ConflictError, PayloadTooLargeError, StatekError
from statek_bus.wire.messages import JobRecord, encode
from statek_bus.wire.values import TAG, from_json

__all__ = [
    "MAX_BATCH",
    "MAX_ID_BYTES",
    "check_id",
    "check_reply_size",
    "check_shared_vars",
    "conflict",
    "json_paths",
]

MAX_ID_BYTES = 200
"""Longest job, batch or parent id (UTF-8 bytes): escaped ids must fit NATS's 4 KiB control line."""
MAX_BATCH = 2_000
"""Most jobs in one ``submit_batch`` (413 above, before anything is written).

A reply lists every job (~350 bytes each without params), and must fit the server's 1 MiB
``max_payload``; a batch whose reply would not fit even below this cap (large ``params``) is 413
too, also before anything is written. :meth:`statek_bus.client.jobs.AsyncJobs.submit_batch` splits larger batches."""
_json_enc = msgspec.json.Encoder()


@contextlib.contextmanager
def json_paths() -> Iterator[None]:
    """Report the ``field`` of an error raised inside as a JSON path (``agent`` → ``$.agent``).

    Shared modules (the agent registry, locales, the job store) name fields bare; every error this
    service answers names them as the request decoder does.
    """
    try:
        yield
    except StatekError as exc:
        if exc.field is not None and not exc.field.startswith("$"):
            exc.field = f"$.{exc.field}"
        raise


def check_id(value: str, field: str, *, reserve: int = 0) -> None:
    """Refuse a blank id or one over :data:`MAX_ID_BYTES` (less ``reserve``) with a 400 on ``field``."""
    size = len(value.encode("utf-8"))
    if not value.strip() or size > MAX_ID_BYTES - reserve:
        raise BadRequestError(
            f"{field.removeprefix('$.')} must be a non-blank string of at most {MAX_ID_BYTES - reserve} UTF-8 bytes",
            field=field,
        )


def conflict(job_ids: list[str], single: bool) -> ConflictError:
    """409 naming the ids that belong to another agent's jobs."""
    shown = ", ".join(repr(j) for j in job_ids[:5]) + (", ..." if len(job_ids) > 5 else "")
    return ConflictError(
        f"{len(job_ids)} job id(s) already used by another agent's jobs: {shown}; nothing was written",
        field="$.job_id" if single else "$.batch_id",
        details={"job_ids": job_ids[:20], "count": len(job_ids)},
    )


_REV_ROOM = 20  # digits of the largest revision a new job's reply can carry


def check_reply_size(
    ids: list[str],
    existing: dict[str, tuple[JobRecord, int]],
    new: list[JobRecord],
    limit: int,
    field: str,
) -> None:
    """413 before anything is written when the batch's reply (a list of Jobs) would not fit."""
    size = 2 + len(ids)  # brackets and commas
    size += sum(len(encode(rec.public(rev))) for rec, rev in existing.values())
    if new:  # new jobs differ only in their id: size one and adjust per id
        template = msgspec.structs.replace(new[0], id="")
        base = len(encode(template.public(10**_REV_ROOM))) - 2
        size += sum(base + len(_json_enc.encode(r.id)) for r in new)
    if size > limit:
        fit = max(1, len(ids) * limit // size)
        raise PayloadTooLargeError(
            f"the reply to this batch would be about {size} bytes, over the {limit}-byte message limit; "
            f"send at most {fit} jobs per batch",
            field=field,
            details={"size": size, "limit": limit, "max_jobs": fit},
        )


def check_shared_vars(shared_vars: dict[str, Any] | None, field: str) -> None:
    """Refuse shared-variable names that are not identifiers, and values whose tags do not decode."""
    for name, value in (shared_vars or {}).items():
        if not name.isidentifier() or keyword.iskeyword(name):
            raise BadRequestError(
                f"shared variable name {name!r} is not a Python identifier", field=f"{field}.{name}"
            )
        check_tags(value, f"{field}.{name}")


def check_tags(value: Any, path: str) -> None:
    """Tagged values (``{"$t": ...}``) must decode; classes and enums are checked by the executor."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            check_tags(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        tag = value.get(TAG)
        if tag is None:
            for k, v in value.items():
                check_tags(v, f"{path}.{k}")
        elif tag in ("obj", "enum"):
            if not isinstance(value.get("cls"), str) or "v" not in value:
                raise BadRequestError(f"tagged {tag} needs 'cls' and 'v'", field=path)
        else:
            try:
                from_json(value)
            except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, binascii.Error) as exc:
                raise BadRequestError(f"invalid tagged value ({tag!r}): {exc}", field=path) from None
