"""statek-bus: durable code-first LLM agent jobs and a task/agent States API, as a service mesh on NATS.

This module is the front door; every public name is listed in ``__all__``.
"""

from __future__ import annotations

from statek_bus.authoring.agents import Agent, HandlerAgent, SupervisedAgent
from statek_bus.authoring.dialog import DialogAgent, RecurringReminder, RecursiveReminder, Reminder
from statek_bus.authoring.futures import temporal
from statek_bus.authoring.postprocess import FinalCheck, LLMStep, PostProcessor, post_processor
from statek_bus.authoring.roles import MessageDispatcher, Researcher
from statek_bus.authoring.tools import current_job, exit_job, tool
from statek_bus.authoring.waiting import subtask
from statek_bus.client.core import AsyncStatekClient, StatekClient
from statek_bus.client.statek_client_api import StatekClientAPI
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
from statek_bus.wire.messages import Job, JobOptions, JobStatus, State, Usage
from statek_bus.wire.subjects import SERVICE_VERSION as _SERVICE_VERSION

__all__ = [
    "Agent",
    "AsyncStatekClient",
    "BadRequestError",
    "ConflictError",
    "DialogAgent",
    "FinalCheck",
    "HandlerAgent",
    "InternalError",
    "Job",
    "JobOptions",
    "JobStatus",
    "LLMStep",
    "MessageDispatcher",
    "NotFoundError",
    "PayloadTooLargeError",
    "PostProcessor",
    "RecurringReminder",
    "RecursiveReminder",
    "Reminder",
    "Researcher",
    "ServiceUnavailableError",
    "Settings",
    "State",
    "StatekClient",
    "StatekClientAPI",
    "StatekError",
    "SupervisedAgent",
    "Usage",
    "current_job",
    "exit_job",
    "post_processor",
    "subtask",
    "temporal",
    "tool",
]

__version__ = _SERVICE_VERSION
"""The package version (one source: :data:`statek_bus.wire.subjects.SERVICE_VERSION`)."""
