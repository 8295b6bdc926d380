"""statek-bus: durable code-first LLM agent jobs and a task/agent States API, as a service mesh on NATS.

This module is the front door; every public name is listed in ``__all__``.
"""

from __future__ import annotations

from statek_bus.authoring.agents import Agent, HandlerAgent, SupervisedAgent
from statek_bus.authoring.tools import current_job, exit_job, tool
from statek_bus.client.core import AsyncStatekClient, StatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.wire.errors import (
    BadRequestError,
    ConflictError,
    InternalError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    StatekError,
)
from statek_bus.wire.messages import Job, JobStatus, State, Usage
from statek_bus.wire.subjects import SERVICE_VERSION as __version__  # noqa: F401 - one version source

__all__ = [
    "Agent",
    "AsyncStatekClient",
    "BadRequestError",
    "ConflictError",
    "HandlerAgent",
    "InternalError",
    "Job",
    "JobStatus",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "Settings",
    "State",
    "StatekClient",
    "StatekError",
    "SupervisedAgent",
    "Usage",
    "current_job",
    "exit_job",
    "tool",
]
