"""Shared contexts: variables several jobs read and write, kept in JetStream (STATEK's ``shared_context``).

A job binds itself with the hidden system tool ``init_shared_context(*specs, read_only=False)``
(usually from a hidden warmup block, with the user's or the tenant's id as the specifier). Writes go
to the context of exactly those specifiers; reads also see every context whose specifiers are a
*subset* of them (a user's context sees its tenant's), the newest ``created_at`` winning on a name
clash. In model code a name that is not in the workspace falls back to the shared variable's value,
and assigning to such a name is a ``PermissionError``: the model writes with
``shared_context_set_var(category, key, value, description)``.

Storage: one key per context in the ``statek_context`` bucket (``ctx.<token(spec)>...``, specifiers
sorted), a :class:`~statek_bus.wire.messages.SharedContextRecord`. Writes are compare-and-set loops,
so two jobs on two executors writing at once both land; every executor reads the same bucket, so
each sees the other's writes from its next read. The binding is part of the job's persistent
context (key :data:`BINDING_KEY`), committed with the step.

Values are model-written and untrusted: tagged JSON (nothing pickled), each at most
:data:`~statek_bus.wire.limits.MAX_CONTEXT_VALUE_BYTES`, a context at most
:data:`~statek_bus.wire.limits.MAX_CONTEXT_VARS` variables and
:data:`~statek_bus.wire.limits.MAX_CONTEXT_BYTES`. A step reads the contexts once, on its first
fallback (then its own writes update that view).

Categories: :data:`PREFERENCE`, :data:`ENTITY`, :data:`VOCABULARY`, and any the application declares
with :class:`ContextCategory` in its agents module (so every executor knows them).
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from statek_bus.authoring.futures import REGISTRY as FUTURES
from statek_bus.authoring.futures import current_env
from statek_bus.authoring.tools import JobContext, Tool, current_job, tool
from statek_bus.wire.limits import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_SPECS,
    MAX_CONTEXT_TEXT,
    MAX_CONTEXT_VALUE_BYTES,
    MAX_CONTEXT_VARS,
    MAX_NAME_LENGTH,
)
from statek_bus.wire.shared_context import ContextVariable, SharedContextRecord
from statek_bus.wire.subjects import CONTEXT_BUCKET, context_key
from statek_bus.wire.values import TypeRegistry, from_json, to_json

__all__ = [
    "BINDING_KEY",
    "CONTEXT_TOOLS",
    "ENTITY",
    "PREFERENCE",
    "VOCABULARY",
    "ContextCategory",
    "SharedContextView",
    "context_view",
    "init_shared_context",
    "is_bound",
    "lookup_shared",
    "print_locals",
    "shared_context_set_var",
]

BINDING_KEY = "shared_context"
"""Key of the binding (``{"specs": [...], "read_only": bool}``) in the job's persistent context."""
_VIEW_KEY = "shared_context_view"
_CAS_ATTEMPTS = 20


class ContextCategory(str):
    """A category of shared-context variables; creating one registers it (declare it at import time)."""

    _known: dict[str, ContextCategory] = {}

    def __new__(cls, name: str) -> ContextCategory:
        """Register ``name`` (an identifier, stored upper-cased)."""
        text = str(name).strip().upper()
        if not text.isidentifier() or len(text) > 64:
            raise ValueError(f"a context category is an identifier of at most 64 characters, not {name!r}")
        found = cls._known.get(text)
        if found is None:
            found = cls._known[text] = super().__new__(cls, text)
        return found

    @classmethod
    def names(cls) -> list[str]:
        """Every registered category."""
        return sorted(cls._known)

    @classmethod
    def get(cls, name: Any) -> ContextCategory:
        """The registered category ``name``; ``ValueError`` naming the known ones otherwise."""
        text = str(name).strip().upper()
        if text not in cls._known:
            raise ValueError(f"unknown context category {name!r} (known: {', '.join(cls.names())})")
        return cls._known[text]


PREFERENCE = ContextCategory("PREFERENCE")
"""How the user likes things done."""
ENTITY = ContextCategory("ENTITY")
"""Things the conversation is about (a customer, an order)."""
VOCABULARY = ContextCategory("VOCABULARY")
"""The user's words for things."""


def _subsets(specs: list[str]) -> list[list[str]]:
    return [list(c) for n in range(1, len(specs) + 1) for c in itertools.combinations(specs, n)]


def _check_specs(specs: tuple[Any, ...]) -> list[str]:
    if not specs:
        raise TypeError("init_shared_context needs at least one specifier")
    out: list[str] = []
    for s in specs:
        if not isinstance(s, str | int) or isinstance(s, bool):
            raise TypeError(f"a shared-context specifier is a string, not {type(s).__name__}")
        text = str(s)
        if not text or len(text) > MAX_NAME_LENGTH:
            raise ValueError(f"a shared-context specifier has 1 to {MAX_NAME_LENGTH} characters")
        out.append(text)
    out = sorted(set(out))
    if len(out) > MAX_CONTEXT_SPECS:
        raise ValueError(f"at most {MAX_CONTEXT_SPECS} shared-context specifiers, got {len(out)}")
    return out


class SharedContextView:
    """One step's view of the job's shared contexts (in the executor, where tools run).

    Args:
        specs: the specifiers the job is bound to.
        read_only: writes are refused.
        registry: classes values may hold (the agent's).
    """

    def __init__(self, specs: list[str], read_only: bool, registry: TypeRegistry | None = None) -> None:
        self.specs = specs
        self.read_only = read_only
        # the agent's data classes only: a future or job handle stored here would let every job of
        # the context read (or wait on) another job's children
        handles = set(FUTURES.classes())
        self.registry = TypeRegistry(
            [c for c in (registry.classes() if registry else []) if c not in handles]
        )
        self._vars: dict[str, ContextVariable] | None = None

    async def _kv(self) -> Any:
        js = await current_env().mesh().jetstream()
        return await js.key_value(CONTEXT_BUCKET)

    async def _read(self) -> dict[str, ContextVariable]:
        kv = await self._kv()

        async def one(subset: list[str]) -> SharedContextRecord | None:
            try:
                entry = await kv.get(context_key(subset))
            except KeyNotFoundError:
                return None
            return msgspec.json.decode(entry.value or b"{}", type=SharedContextRecord)

        merged: dict[str, ContextVariable] = {}
        for record in await asyncio.gather(*(one(s) for s in _subsets(self.specs))):
            for name, var in (record.vars if record else {}).items():
                if name not in merged or var.created_at > merged[name].created_at:
                    merged[name] = var
        return merged

    def variables(self) -> dict[str, ContextVariable]:
        """Every visible variable (read from JetStream once per step)."""
        if self._vars is None:
            self._vars = current_env().run(self._read())
        return self._vars

    def lookup(self, name: str) -> Any:
        """The value of shared variable ``name``; ``KeyError`` when there is none."""
        var = self.variables().get(name)
        if var is None:
            raise KeyError(name)
        return from_json(var.value, self.registry)

    def set_var(self, category: Any, key: str, value: Any, description: str) -> None:
        """Write ``key`` into the bound context (a compare-and-set loop); see :func:`shared_context_set_var`."""
        if self.read_only:
            raise PermissionError("this job's shared context is read-only")
        cat = ContextCategory.get(category)
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_") or len(key) > 64:
            raise ValueError(
                f"a shared variable's key is a public identifier of at most 64 characters, not {key!r}"
            )
        text = str(description)
        if len(text) > MAX_CONTEXT_TEXT:
            raise ValueError(f"the description has {len(text)} characters; the limit is {MAX_CONTEXT_TEXT}")
        try:
            encoded = to_json(value, self.registry, key)
        except TypeError as exc:  # a plain TypeError: model code sees (and may catch) the builtin type
            raise TypeError(f"a shared variable holds data only: {exc}") from None
        size = len(msgspec.json.encode(encoded))
        if size > MAX_CONTEXT_VALUE_BYTES:
            raise ValueError(f"the value of {key!r} is {size} bytes; the limit is {MAX_CONTEXT_VALUE_BYTES}")
        var = ContextVariable(
            category=str(cat),
            value=encoded,
            description=text,
            created_at=datetime.now(UTC),
            job_id=current_job().job_id,
        )
        current_env().run(self._write(key, var))
        if self._vars is not None:
            self._vars[key] = var

    async def _write(self, key: str, var: ContextVariable) -> None:
        kv = await self._kv()
        ckey = context_key(self.specs)
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await kv.get(ckey)
                record = msgspec.json.decode(entry.value or b"{}", type=SharedContextRecord)
                revision: int | None = entry.revision
            except KeyNotFoundError:
                record, revision = SharedContextRecord(specs=self.specs), None
            record.vars = {**record.vars, key: var}
            if len(record.vars) > MAX_CONTEXT_VARS:
                raise ValueError(f"the shared context holds {MAX_CONTEXT_VARS} variables already")
            data = msgspec.json.encode(record)
            if len(data) > MAX_CONTEXT_BYTES:
                raise ValueError(
                    f"the shared context would be {len(data)} bytes; the limit is {MAX_CONTEXT_BYTES}"
                )
            try:
                if revision is None:
                    await kv.create(ckey, data)
                else:
                    await kv.update(ckey, data, last=revision)
                return
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError("the shared context is being written too often: try again")


def context_view() -> SharedContextView | None:
    """The current step's view of its job's shared contexts (None: the job is not bound)."""
    from statek_bus.authoring.context import PERM_KEY

    ctx = current_job()
    view = ctx.extras.get(_VIEW_KEY)
    if isinstance(view, SharedContextView):
        return view
    binding = (ctx.extras.get(PERM_KEY) or {}).get(BINDING_KEY)
    if not isinstance(binding, dict):
        return None
    env = ctx.extras.get("env")
    view = SharedContextView(
        [str(s) for s in binding.get("specs", [])],
        bool(binding.get("read_only")),
        getattr(env, "registry", None),
    )
    ctx.extras[_VIEW_KEY] = view
    return view


def lookup_shared(name: str) -> Any:
    """The value of the current job's shared variable ``name`` (``KeyError``: none, or no binding).

    The namespace fallback of model code calls this, in the executor (a worker process asks for it).
    """
    view = context_view()
    if view is None:
        raise KeyError(name)
    return view.lookup(name)


def is_bound(ctx: JobContext) -> bool:
    """Whether ``ctx``'s job is bound to a shared context (its persistent context holds a binding)."""
    from statek_bus.authoring.context import PERM_KEY

    return isinstance((ctx.extras.get(PERM_KEY) or {}).get(BINDING_KEY), dict)


def _bound() -> SharedContextView:
    view = context_view()
    if view is None:
        raise RuntimeError("no shared context is bound to this job (init_shared_context)")
    return view


@tool(system=True, hidden=True)
def init_shared_context(*specs: str, read_only: bool = False) -> None:
    """Bind this job to the shared context of ``specs`` (writes go there; reads see its subsets too).

    Args:
        specs: the specifiers (strings, e.g. a tenant id and a user id).
        read_only: refuse writes from this job.
    """
    from statek_bus.authoring.context import perm_ctx_set

    names = _check_specs(specs)
    perm_ctx_set(**{BINDING_KEY: {"specs": names, "read_only": bool(read_only)}})
    ctx = current_job()
    ctx.extras.pop(_VIEW_KEY, None)
    hook = ctx.extras.get("bind_context")  # an in-process step's namespace (a worker's stub does its own)
    if callable(hook):
        hook()


@tool(system=True)
def shared_context_set_var(category: str, key: str, value: Any, description: str) -> None:
    """Write a variable into the job's shared context, for this and later jobs of the same context.

    Args:
        category: PREFERENCE, ENTITY, VOCABULARY or an application category.
        key: the variable's name (an identifier); code reads it like a local variable.
        value: its value (data: numbers, strings, lists, dicts...).
        description: what it holds, for whoever reads it later.
    """
    _bound().set_var(category, key, value, description)


@tool(system=True)
def print_locals(category: str, *types: Any) -> None:
    """Print the shared-context variables of a category (optionally only values of some types).

    Args:
        category: PREFERENCE, ENTITY, VOCABULARY or an application category.
        types: only values of these types (types, or their names such as "str").
    """
    from statek_bus.authoring.console import format_value

    cat = ContextCategory.get(category)
    wanted: list[type] = []
    names: set[str] = set()
    for t in types:
        if isinstance(t, type):
            wanted.append(t)
        elif isinstance(t, str):
            names.add(t)
        else:
            raise TypeError(f"print_locals filters by type, not by {type(t).__name__}")
    view = context_view()
    shown = 0
    lines: list[str] = []
    for name, var in sorted((view.variables() if view else {}).items()):
        if var.category != cat:
            continue
        value = from_json(var.value, view.registry if view else None)
        if (wanted or names) and not (isinstance(value, tuple(wanted)) or type(value).__name__ in names):
            continue
        shown += 1
        lines.append(
            f"{name} = {format_value(value)}" + (f"  # {var.description}" if var.description else "")
        )
    print("\n".join([f"# {cat} variables ({shown})", *lines]))


CONTEXT_TOOLS: tuple[Tool, ...] = (init_shared_context, shared_context_set_var, print_locals)
"""The shared-context system tools every job gets."""
