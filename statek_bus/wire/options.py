"""A job's own options and the stored definition that carries them (STATEK's ``JobDef``).

What the options mean, how they are checked and where the definitions are stored is in
:mod:`statek_bus.jobs.jobdefs`.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["JobDef", "JobOptions"]


class JobOptions(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A job's own options (STATEK's ``create_job_def`` arguments), checked by submission; an unknown
    option is a 400 naming it, never silently ignored."""

    warmup_code: str | None = None
    """Warmup code run before the agent's own, as untrusted (sandboxed) code: it came from a client."""
    post_processing: str | None = None
    """Post-processors added to the agent's, in ``POST_PROCESSORS`` syntax (``FinalCheck(max_llm_actions=2)``)."""
    provider_config: dict[str, Any] | None = None
    """A provider config (reasoning-level payloads) merged over the provider's own."""
    extra_resources: str | None = None
    """Donor agents, in ``EXTRA_RESOURCES`` syntax (``(LM:assistant,researcher),(H:helpdesk)``)."""


class JobDef(msgspec.Struct, kw_only=True):
    """A job definition in ``statek_jobdefs``: stored once, under the sha-256 of its JSON, for every
    job of the agent with the same options."""

    agent: str
    """Agent role."""
    options: JobOptions
    """The options."""
