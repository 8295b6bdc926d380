"""``StatekClientAPI``: STATEK's job-submission API, from plain synchronous code.

::

    from statek_bus.client.statek_client_api import StatekClientAPI

    job = StatekClientAPI().submit_new_job(
        agent="triage_agent",  # or the agent object (its ``role``)
        shared_vars={"event": incoming_event},
        locale="EN-US",
        source="webhook",  # **kwargs travel as the job's params
    )

As in STATEK, ``StatekClientAPI()`` is cheap to call again and again: every instance made with the
same settings shares one connection (and one event-loop thread), opened on first use and closed
at interpreter exit or by :meth:`StatekClientAPI.close`. Inside an event loop use
``AsyncStatekClient().jobs``, which has the same methods as coroutines.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from statek_bus.client.core import StatekClient
from statek_bus.client.jobs import split_options
from statek_bus.mesh.settings import Settings
from statek_bus.wire.locale import StatekLocale
from statek_bus.wire.messages import Job

__all__ = ["StatekClientAPI"]

_shared: dict[Settings, StatekClient] = {}
_shared_lock = threading.Lock()


def _close_all() -> None:
    with _shared_lock:
        clients = list(_shared.values())
        _shared.clear()
    for c in clients:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            _close_client(c)


atexit.register(_close_all)


class StatekClientAPI:
    """Client API for creating STATEK jobs from synchronous code.

    Args:
        nats_url: the NATS server (default: ``NATS_URL`` or ``nats://127.0.0.1:4222``).
        settings: full settings (timeouts); ``nats_url`` overrides its URL.
    """

    def __init__(self, nats_url: str | None = None, *, settings: Settings | None = None) -> None:
        base = settings or Settings.from_env()
        self.settings = base.replace(nats_url=nats_url) if nats_url else base

    def __enter__(self) -> StatekClientAPI:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def client(self) -> StatekClient:
        """The shared synchronous client for these settings (``.jobs``, ``.states``...)."""
        with _shared_lock:
            found = _shared.get(self.settings)
            if found is None:
                found = _shared[self.settings] = StatekClient(settings=self.settings)
            return found

    def submit_new_job(
        self,
        agent: Any,
        shared_vars: Mapping[str, Any] | None = None,
        locale: StatekLocale | str | None = None,
        **kwargs: Any,
    ) -> Job:
        """Create one new job for ``agent``.

        Args:
            agent: the agent object (anything with a ``role``) or its role string.
            shared_vars: variables in scope when the job starts (datetimes, UUIDs, Decimals,
                bytes... survive); an unencodable value is a ``TypeError`` naming the variable.
            locale: a :class:`~statek_bus.wire.locale.StatekLocale` or ``"LANG-COUNTRY"`` (resolved by
                :func:`~statek_bus.wire.locale.resolve_locale`; an unknown one raises before sending).
            **kwargs: agent-specific job parameters (the job's ``params``), except STATEK's
                per-job options ``warmup_code`` (run sandboxed, before the agent's warmup),
                ``post_processing``, ``provider_config`` and ``extra_resources``: jobs with the same
                options share one stored definition.

        Returns:
            The new job (READY), durably stored and queued to run.
        """
        options, params = split_options(kwargs)
        job: Job = self.client.jobs.submit(agent, shared_vars, locale, params=params, options=options)
        return job

    def submit_new_jobs_batch(
        self,
        agent: Any,
        shared_vars_batch: Sequence[Mapping[str, Any] | None],
        locale: StatekLocale | str | None = None,
        **kwargs: Any,
    ) -> list[Job]:
        """Create one job per ``shared_vars_batch`` entry (entries may be ``None``).

        ``locale`` and ``**kwargs`` apply to every job (STATEK's per-job options among them, see
        :meth:`submit_new_job`). The batch is one request; if it has to be retried, the service
        completes it exactly once.
        """
        options, params = split_options(kwargs)
        jobs: list[Job] = self.client.jobs.submit_batch(
            agent, shared_vars_batch, locale, params=params, options=options
        )
        return jobs

    def close(self) -> None:
        """Close the shared connection of these settings (the next call opens a new one)."""
        with _shared_lock:
            found = _shared.pop(self.settings, None)
        if found is not None:
            _close_client(found)


def _close_client(client: StatekClient) -> None:
    client.close()
