"""statek-bus: durable code-first LLM agent jobs and a task/agent States API, as a service mesh on NATS.

This module is the front door; every public name is listed in ``__all__``.
"""

from __future__ import annotations

from statek_bus.authoring.agents import Agent, HandlerAgent, SupervisedAgent
from statek_bus.authoring.context import (
    find_locals,
    get_current_agent,
    get_current_agent_name,
    get_current_job,
    perm_ctx_get,
    perm_ctx_set,
    perm_ctx_set_unique,
    statek_context,
    statek_ctx_get,
    statek_ctx_set,
)
from statek_bus.authoring.dialog import DialogAgent, RecurringReminder, RecursiveReminder, Reminder
from statek_bus.authoring.futures import temporal
from statek_bus.authoring.postprocess import FinalCheck, LLMStep, PostProcessor, post_processor
from statek_bus.authoring.roles import MessageDispatcher, Researcher
from statek_bus.authoring.shared_context import (
    ENTITY,
    PREFERENCE,
    VOCABULARY,
    ContextCategory,
    init_shared_context,
    print_locals,
    shared_context_set_var,
)
from statek_bus.authoring.tools import current_job, exit_job, tool
from statek_bus.authoring.waiting import (
    SubTaskHandler,
    complete_sub_task,
    create_new_job,
    delegate_mute_dialog,
    delegate_mute_task,
    delegate_task,
    find_sub_task_handler,
    get_all,
    get_any,
    send_notification_to,
    start_dialog,
    subtask,
)
from statek_bus.client.core import AsyncStatekClient, StatekClient
from statek_bus.client.statek_client_api import StatekClientAPI
from statek_bus.client.statek_push_queue import StatekPushQueue
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
from statek_bus.wire.options import JobOptions
from statek_bus.wire.subjects import SERVICE_VERSION as _SERVICE_VERSION

__all__ = [
    "ENTITY",
    "PREFERENCE",
    "VOCABULARY",
    "Agent",
    "AsyncStatekClient",
    "BadRequestError",
    "ConflictError",
    "ContextCategory",
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
    "StatekPushQueue",
    "SubTaskHandler",
    "SupervisedAgent",
    "Usage",
    "complete_sub_task",
    "create_new_job",
    "current_job",
    "delegate_mute_dialog",
    "delegate_mute_task",
    "delegate_task",
    "exit_job",
    "find_locals",
    "find_sub_task_handler",
    "get_all",
    "get_any",
    "get_current_agent",
    "get_current_agent_name",
    "get_current_job",
    "init_shared_context",
    "perm_ctx_get",
    "perm_ctx_set",
    "perm_ctx_set_unique",
    "post_processor",
    "print_locals",
    "send_notification_to",
    "shared_context_set_var",
    "start_dialog",
    "statek_context",
    "statek_ctx_get",
    "statek_ctx_set",
    "subtask",
    "temporal",
    "tool",
]

__version__ = _SERVICE_VERSION
"""The package version (one source: :data:`statek_bus.wire.subjects.SERVICE_VERSION`)."""
