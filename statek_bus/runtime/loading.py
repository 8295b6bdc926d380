"""Loading the agents an executor serves (``--agents module:attr``) and their workspace types."""

from __future__ import annotations

import importlib
import types
from typing import Any

from statek_bus.authoring.agents import Agent, AnyAgent, HandlerAgent
from statek_bus.authoring.postprocess import agent_post_processors
from statek_bus.provider.routing import parse_model_spec
from statek_bus.wire.errors import StatekError
from statek_bus.wire.values import TypeRegistry

__all__ = ["check_model", "load_agents"]


_WAIT_CLASSES: list[type] = []


def load_agents(spec: str) -> tuple[list[AnyAgent], dict[str, TypeRegistry]]:
    """Import ``module:attr`` (a list of agents, or an attribute holding one) or the built-in demo.

    Returns the agents and, per role, the registry of classes their workspaces may hold (every
    dataclass/Struct/Enum of the agent's module plus the agent's declared ``types``).
    """
    if not spec:
        from statek_bus.authoring import demo

        module: types.ModuleType = demo
        found: Any = demo.AGENTS
    else:
        mod_name, _, attr = spec.partition(":")
        module = importlib.import_module(mod_name)
        found = getattr(module, attr or "AGENTS")
    if not _WAIT_CLASSES:
        _WAIT_CLASSES.extend(_wait_classes())
    agents = [found] if isinstance(found, Agent | HandlerAgent) else list(found)
    for a in agents:
        if not isinstance(a, Agent | HandlerAgent):
            raise TypeError(f"{spec}: {a!r} is not an Agent")
        agent_post_processors(a)  # a bad POST_PROCESSORS value stops the executor here, naming it
        if isinstance(a, Agent):
            check_model(a)
    registries: dict[str, TypeRegistry] = {}
    for a in agents:
        reg = TypeRegistry.from_module(importlib.import_module(type(a).__module__))
        reg_mod = TypeRegistry.from_module(module)
        for cls in [*_classes(reg_mod), *a.types, *_WAIT_CLASSES]:
            reg.register(cls)
        registries[a.role] = reg
    return agents, registries


def check_model(agent: Agent) -> None:
    """``ValueError`` naming the agent if its ``MODEL`` metadata is missing or malformed (STATEK found
    out at the job's first LLM call; an executor finds out when it loads the agent)."""
    if not agent.model or not agent.model.strip():
        raise ValueError(f"Agent '{agent.role}' is missing required metadata field 'MODEL'")
    try:
        parse_model_spec(agent.model, "MODEL")
    except StatekError as exc:
        raise ValueError(f"Agent '{agent.role}': metadata MODEL: {exc.message}") from None


def _wait_classes() -> list[type]:
    from statek_bus.authoring.futures import REGISTRY
    from statek_bus.authoring.waiting import SubTaskHandler

    return [*_classes(REGISTRY), SubTaskHandler]


def _classes(reg: TypeRegistry) -> list[type]:
    return list(reg._by_name.values())
