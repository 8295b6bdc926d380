"""The ``statek-state`` service: the States API endpoints, wired to :class:`statek_bus.states.store.StateStore`.

Wiring only: each endpoint passes its decoded request to the store; validation, keys, CAS and
errors live in :mod:`statek_bus.states.store`. Watching needs no endpoint: clients read the bucket with
an ordered consumer (:class:`statek_bus.client.states.StateWatch`).
"""

from __future__ import annotations

from statek_bus.mesh.service import Endpoint, ServiceContext, ServiceSpec
from statek_bus.states.store import StateStore
from statek_bus.wire import subjects as s
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.messages import (
    State,
    StateCreateRequest,
    StateDeleteRequest,
    StateGetOrCreateRequest,
    StateHistoryRequest,
    StateListRequest,
    StateRetrieveRequest,
    StateUpdateRequest,
)

__all__ = ["build"]


async def build(ctx: ServiceContext) -> ServiceSpec:
    """The state service's endpoint table over one :class:`StateStore`."""
    store = StateStore(ctx.js, ctx.settings)

    async def create(req: StateCreateRequest) -> State:
        return await store.create(req.task_id, req.agent_id, req.state, ttl_seconds=req.ttl_seconds)

    async def retrieve(req: StateRetrieveRequest) -> State | None:
        if req.state_id is not None:
            if req.task_id is not None or req.agent_id is not None:
                raise BadRequestError("give state_id, or task_id and agent_id, not both", field="$.state_id")
            return await store.retrieve(req.state_id)
        if req.task_id is None or req.agent_id is None:
            missing = "$.task_id" if req.task_id is None else "$.agent_id"
            raise BadRequestError("give state_id, or both task_id and agent_id", field=missing)
        return await store.find(req.task_id, req.agent_id)

    async def update(req: StateUpdateRequest) -> State:
        return await store.update(req.state_id, req.state, req.expected_revision)

    async def list_(req: StateListRequest) -> list[State]:
        return await store.list(req.task_id, req.agent_id, req.limit, req.page_number)

    async def delete(req: StateDeleteRequest) -> State:
        return await store.delete(req.state_id)

    async def get_or_create(req: StateGetOrCreateRequest) -> State:
        return await store.get_or_create(req.task_id, req.agent_id, req.default)

    async def history(req: StateHistoryRequest) -> list[State]:
        return await store.history(req.state_id, req.limit)

    return ServiceSpec(
        name=s.SERVICE_STATE,
        description="States API: one JSON object per (task, agent), with revisions, CAS, history and TTL",
        endpoints=[
            Endpoint(
                "create", s.STATES_CREATE, StateCreateRequest, create, "create the pair's state (409 if any)"
            ),
            Endpoint("retrieve", s.STATES_RETRIEVE, StateRetrieveRequest, retrieve, "by id, or null by pair"),
            Endpoint(
                "update", s.STATES_UPDATE, StateUpdateRequest, update, "replace; CAS on expected_revision"
            ),
            Endpoint("list", s.STATES_LIST, StateListRequest, list_, "filter by task/agent, page from 1"),
            Endpoint("delete", s.STATES_DELETE, StateDeleteRequest, delete, "delete; returns it as it was"),
            Endpoint(
                "get_or_create", s.STATES_GET_OR_CREATE, StateGetOrCreateRequest, get_or_create, "atomic"
            ),
            Endpoint(
                "history", s.STATES_HISTORY, StateHistoryRequest, history, "kept revisions, newest first"
            ),
        ],
    )
