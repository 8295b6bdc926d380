"""The data tier's runtime side: a step whose model code provably touches only data runs in a thread
of the executor, with no worker process; every other step, and every step the tier gives up, runs
in a worker process exactly as before.

:mod:`statek_bus.sandbox.datatier` holds the proof (the AST subset, the plain-data check, the guard)
and the argument for it. Here:

* :class:`DataTier` takes a step from :class:`~statek_bus.runtime.procrunner.AppCodeRouter`. A step
  whose units are all plain ``code`` units (no formal tool call, no trusted warmup, nothing
  resumed, no shared-context binding) goes to a :class:`TierSession` in a
  :class:`~statek_bus.runtime.coderunner.ThreadCodeRunner` thread; anything else to the process
  runner.
* :class:`TierSession` is a :class:`~statek_bus.runtime.coderunner.SandboxSession` whose namespace
  holds no tool and no host object: only the job's variables the step names (decoded as a worker
  decodes them and checked to be plain data; the others stay as stored, never decoded; all are
  weighed in their stored form first), the guarded callables and the step's own ``print``/``exit``. It runs the tier's rewrite of each block through the very same
  ``run_code``/``Console``/``error_line``/echo/``Workspace.snapshot`` machinery a worker process
  uses, so a tier step's console, errors, exit value and workspace are those the worker gives.
* When the guard trips, a name is missing, or anything is not as expected, the session records
  why (:attr:`TierSession.aborted`) and the whole request runs in a worker process from the start.
  That is safe: the tier ran no tool and changed nothing outside its own namespace.

``statek_data_tier_steps{route}`` (:mod:`statek_bus.mesh.metrics`) counts the steps of each route,
and ``statek.executor.status`` → ``sandbox.data_tier`` says the tier is on, with the same counts.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from statek_bus.authoring.tools import JobContext
from statek_bus.mesh.metrics import DATA_TIER_STEPS
from statek_bus.runtime.coderunner import (
    CodeRunner,
    Console,
    ExecRequest,
    ExecResult,
    ExecUnit,
    SandboxSession,
    SessionInputs,
    ThreadCodeRunner,
    UnitResult,
    _console_print,
)
from statek_bus.runtime.workspace import (
    MAX_WORKSPACE_BYTES,
    DefinitionSource,
    Workspace,
    WorkspaceData,
    encode_workspace,
    stored_value,
)
from statek_bus.sandbox import datatier, tierguard
from statek_bus.sandbox.restricted import CompiledBlock, CompiledStatement, imports_only
from statek_bus.wire.messages import encode
from statek_bus.wire.values import TAG, TypeRegistry, from_json, to_json

__all__ = ["DataTier", "TierSession", "eligible_units"]

ROUTES = ("tier", "aborted", "process")
"""Labels of ``statek_data_tier_steps``: ran in the tier; given up, then run in a worker; a worker's
from the start (outside the subset)."""


def eligible_units(request: ExecRequest) -> bool:
    """Whether ``request``'s units and session are of the kind the tier may take (its code is
    checked later, in the tier's thread)."""
    return (
        bool(request.units)
        and all(u.kind == "code" and not u.trusted and not u.skip and u.start == 0 for u in request.units)
        and not getattr(request.session, "context_bound", False)
    )


class TierSession(SandboxSession):
    """One tier step's session: the job's data, the guarded callables, no tool and no host object.

    Args:
        inputs: the step's real session, read only (policy, stored workspace, initial variables,
            tool names, registry); nothing of it is put in the namespace.
        units: the step's units (all plain code units).
    """

    def __init__(self, inputs: SessionInputs, units: list[ExecUnit]) -> None:
        job = JobContext(job_id=inputs.job.job_id, agent="", params={}, namespace={}, extras={})
        super().__init__(
            policy=inputs.policy,
            trusted_policy=inputs.trusted_policy,
            tools={},
            job=job,
            workspace=None,
            shared_vars={},
            registry=inputs.registry,
        )
        self.inputs = inputs
        self.units = units
        self.guard = tierguard.Guard()
        self.aborted: str | None = None
        """Why the tier gave the step up (None: it did not)."""
        self._plans: dict[str, datatier.Plan] = {}
        self._kept_values: dict[str, Any] = {}
        """Variables the code never names, in their stored form (never decoded, never walked)."""
        self._decoded: dict[str, tuple[Any, Any]] = {}
        """Variables the code names: name -> (the value decoded, its stored form)."""
        self._stored_order: list[str] = []
        """The names of the job's variables, in the order the workspace holds them."""
        self._kept_definitions: list[DefinitionSource] = []
        """The workspace's imports, as stored: the code never names what they bind."""

    # --- lifecycle ---------------------------------------------------------------------------------
    def begin(self, deadline: float) -> None:
        """Check the step's code and values, then build the tier's namespace (in the tier's thread)."""
        self.deadline = deadline
        self._workspace = Workspace()
        ns = tierguard.namespace(self.guard, print_fn=_console_print, exit_fn=self._exit)
        self.base_names = set(ns)
        self.ns = ns
        self.job.namespace = ns
        try:
            touched = self._plan_units()
            values = self._values(touched)
            self._check(values)
        except datatier.TierAbort as exc:
            self.aborted = exc.reason
            return
        except Exception as exc:  # anything unexpected: the worker process decides
            self.aborted = f"inputs: {type(exc).__name__}"
            return
        ns.update(values)

    def _plan_units(self) -> set[str]:
        """Plan every unit (or give up: one is outside the subset); the names the step's code touches."""
        touched: set[str] = set()
        for unit in self.units:
            plan = self._plans.get(unit.code) or datatier.plan(unit.code, self.policy)
            if plan is None:
                raise datatier.TierAbort("outside the subset")
            self._plans[unit.code] = plan
            touched |= plan.needs | plan.assigned | plan.calls
        return touched

    def _values(self, touched: set[str]) -> dict[str, Any]:
        """The job's variables the code touches, decoded from their stored form as a worker decodes
        them; every other variable stays in its stored form (:attr:`_kept_values`), never decoded.

        Every stored value is weighed in its stored form first, by a walk that stops at the tier's
        limits: a workspace may hold values far over them, made by a worker step (30 MB of
        ``[0, 0, ...]``, 99,000 small lists), and decoding and checking those whole on every step
        cost the executor 5 s and 2.3 s."""
        inputs = self.inputs
        registry = inputs.registry or TypeRegistry()
        stored = inputs.workspace_data
        if stored is not None:
            if not all(imports_only(d.source) for d in stored.definitions):
                raise datatier.TierAbort("definitions in the workspace")
            self._kept_definitions = list(stored.definitions)
            encoded = stored.values
        else:  # the worker gets them as tagged JSON too
            encoded = {k: to_json(v, registry, k) for k, v in inputs.shared_vars.items()}
        self._stored_order = list(encoded)
        if sum(len(v) for v in encoded.values() if isinstance(v, msgspec.Raw)) > _MAX_STORED_BYTES:
            raise datatier.TierAbort("the variables in scope are too large")  # before decoding them
        values: dict[str, Any] = {}
        budget = datatier.MAX_SCOPE_WEIGHT  # for all of them, weighed in their stored form
        for name, stored in encoded.items():
            try:
                raw = stored_value(stored)
            except ValueError:
                raise datatier.TierAbort("a value the worker cannot restore") from None
            if name not in touched:
                budget -= _weigh_stored(raw, budget, registry, plain=False)
                self._kept_values[name] = stored  # stored again as it is
                continue
            budget -= _weigh_stored(raw, min(budget, datatier.MAX_WEIGHT), registry, plain=True)
            value = from_json(raw, registry)
            if not datatier.plain_value(value):  # a tag the walk lets by that decodes to no plain value
                raise datatier.TierAbort("a name bound to what is not plain data")
            values[name] = value
            self._decoded[name] = value, stored
        if sum(self.guard.weight(v) for v in values.values()) > datatier.MAX_SCOPE_WEIGHT:
            raise datatier.TierAbort("the variables in scope are too large")
        return values

    def _check(self, values: dict[str, Any]) -> None:
        reserved = {*self.inputs.tools, "print", "exit"}  # the worker's base names: never snapshotted
        kept = {*self._kept_values, *(n for d in self._kept_definitions for n in d.names)}
        names = values.keys() | kept
        if reserved & names or any(k.startswith("__") for k in names):
            raise datatier.TierAbort("a variable shadows a tool or a dunder")
        bound = set(values)
        for unit in self.units:
            plan = self._plans[unit.code]
            if not plan.needs <= bound:
                raise datatier.TierAbort("a name is not in scope")
            if plan.assigned & reserved or plan.calls & self.inputs.tools.keys():
                raise datatier.TierAbort("a tool's name")
            if (plan.needs | plan.assigned | plan.calls) & kept:
                raise datatier.TierAbort("a name bound to what is not plain data")
            bound |= plan.assigned

    def compile(self, unit: ExecUnit, policy: Any) -> CompiledBlock:
        """The tier's rewrite of ``unit``'s code (checked by :meth:`begin`)."""
        statements: list[CompiledStatement] = list(self._plans[unit.code].statements)
        return CompiledBlock(statements, unit.code)

    def run_code(self, unit: ExecUnit, console: Console) -> UnitResult:
        """Run ``unit`` as the worker would, unless the tier has given the step up."""
        if self.aborted is not None:
            return UnitResult(console=[])
        return super().run_code(unit, console)

    def _run_statement(self, stmt: Any) -> Any:
        try:
            return super()._run_statement(stmt)
        except datatier.TierAbort as exc:
            self.aborted = exc.reason
            raise
        except (NameError, MemoryError, RecursionError) as exc:  # the worker's namespace decides
            self.aborted = type(exc).__name__
            raise datatier.TierAbort(self.aborted) from None

    def snapshot(self) -> tuple[Any, list[str]]:
        """The workspace as storable data (nothing, once the tier has given up)."""
        if self.aborted is not None:
            return None, []
        if self._stored_weight() > datatier.MAX_SCOPE_WEIGHT:
            self.aborted = "the variables to store are too large"
            return None, []
        # a decoded value still bound to its name is unchanged (nothing in the tier changes a value):
        # stored again as it was, not encoded anew
        same = {n: raw for n, (value, raw) in self._decoded.items() if self.ns.get(n) is value}
        self.base_names |= same.keys()
        data, dropped = super().snapshot()
        if self._kept_values or self._kept_definitions or same:
            made, kept = data.values, {**self._kept_values, **same}
            values = {
                n: kept[n] if n in kept else made[n] for n in self._stored_order if n in kept or n in made
            }
            values.update(made)  # the step's new names after the stored ones, as the worker orders them
            data = WorkspaceData(values=values, definitions=[*self._kept_definitions, *data.definitions])
        return data, dropped

    def _stored_weight(self) -> int:
        """The weight of what the snapshot will encode: each name's value in full. Binding a name
        costs the tier nothing, but the workspace stores every name's value apart, so ``a0 = t``,
        ``a1 = t``, ... would have it encode ``t`` once per name (a thousand names of a 99,100-weight
        list took 30 s and 1.1 GiB)."""
        total = 0
        for name, value in self.ns.items():
            if name not in self.base_names and not name.startswith("__"):
                try:
                    total += self.guard.weight(value)  # memoised: a name costs one lookup
                except datatier.TierAbort:
                    return datatier.MAX_SCOPE_WEIGHT + 1
                if total > datatier.MAX_SCOPE_WEIGHT:
                    break
        return total

    def finish(self, result: ExecResult) -> ExecResult:
        """``result`` as the process runner reports it: the exit value through its tagged JSON (one
        that has none is the worker's to format), and a workspace over the worker's limit given to
        the worker instead."""
        if result.exited:
            try:
                result.exit_value = from_json(
                    to_json(result.exit_value, self.registry, "exit"), self.registry
                )
            except Exception:  # an iterator: its text holds an address (see tierguard._NO_TEXT)
                self.aborted = "an exit value that is not data"
                return result
        try:  # what the worker would have to send: text a frame cannot carry is the worker's to report
            encode(result.exit_value if result.exited else None)
            for unit in result.units:
                encode([unit.console, unit.error])
            size = len(encode_workspace(result.workspace)) if result.workspace is not None else 0
        except Exception:
            self.aborted = "unencodable text"
            return result
        if size > MAX_WORKSPACE_BYTES:
            self.aborted = "workspace size"
        if any(u.error == "RuntimeError: internal error" for u in result.units):
            self.aborted = self.aborted or "internal error"
        return result


_HASHED_TAGS = frozenset({"set", "frozenset", "dict"})
"""Tagged JSON (:mod:`statek_bus.wire.values`) whose decoding hashes computed keys: a set, a frozenset,
a dict with keys that are not text. Their keys may have been made to collide (in a worker, where
that costs only the worker), and building them again would be quadratic in the executor."""
_PLAIN_TAGS = frozenset({"tuple", "float", "int"})
"""Tagged JSON that decodes to plain data: a tuple, a non-finite float, an int over 64 bits."""
_LEAF_TAGS = frozenset({"datetime", "date", "time", "timedelta", "decimal", "uuid", "bytes", "bytearray"})
"""Tagged JSON a worker decodes with no class of the agent's (:mod:`statek_bus.wire.values`)."""
_CLASS_TAGS = frozenset({"obj", "enum"})
"""Tagged JSON a worker decodes into a registered class (by ``cls``)."""
_MAX_STORED_DEPTH = 2 * datatier.MAX_DEPTH + 2
"""A tuple is two levels of its stored form (the tagged object, its list)."""
_MAX_STORED_BYTES = 256 * 1024
"""Most bytes of stored values (a workspace loaded from the object store, or a worker's) the tier
decodes for one step; past them the step is a worker's, decoded by nobody in the executor. 256 KB
of ``[[], ...]`` take ~15 ms to decode; the walk then weighs what it holds."""
_NODE_WEIGHT = 32
"""What a list, a dict or a tagged value weighs in its stored form: decoding, checking, measuring
and encoding one again takes the tier ~3.5 us, against ~0.3 us for a number (measured), so a
workspace of ``[[], [], ...]`` is priced by the work it makes, not by its element count."""


def _weigh_stored(raw: Any, budget: int, registry: TypeRegistry, *, plain: bool, depth: int = 0) -> int:
    """The weight of the stored value ``raw``, walked in its stored form and never past ``budget``:
    about the tier's cost of decoding, checking and storing it again (an element, a text's
    bytes / 8, an int's bits / 64, :data:`_NODE_WEIGHT` a container), so a value this lets by
    costs the tier's limits at most.

    Gives the step up (:class:`~statek_bus.sandbox.datatier.TierAbort`) past ``budget``, and on a
    tag a worker would not decode as the tier expects: with ``plain`` (a value the code names),
    anything but a tuple or a non-finite float, in exactly the shape ``to_json`` makes them;
    otherwise (a value kept as stored) an unknown tag, a model-defined class's instance, or a
    class the registry no longer has, which a worker would drop with a warning.
    """
    kind = type(raw)
    if kind is str:
        weight = tierguard.text_weight(raw)
    elif kind is int:  # as the guard weighs it: its decimal form costs time quadratic in its length
        limbs = raw.bit_length() // 64
        weight = 1 + limbs + limbs * limbs // 16
    elif kind is list or kind is dict:
        if depth > _MAX_STORED_DEPTH:
            raise datatier.TierAbort("the variables in scope are too deep")
        if kind is dict and TAG in raw:
            _check_tag(raw, registry, plain)
        weight = _NODE_WEIGHT
        for item in raw if kind is list else raw.values():
            weight += _weigh_stored(item, budget - weight, registry, plain=plain, depth=depth + 1)
        if kind is dict:  # a key as the guard weighs a text: 1 + characters / 8
            weight += len(raw) + sum(len(k) for k in raw) // 8
    else:  # None, a bool, a float
        weight = 1
    if weight > budget:
        raise datatier.TierAbort("the variables in scope are too large")
    return weight


def _check_tag(raw: dict[str, Any], registry: TypeRegistry, plain: bool) -> None:
    tag, payload = raw[TAG], raw.get("v")
    if plain:
        if tag in _HASHED_TAGS:
            raise datatier.TierAbort("a set or a dict with non-text keys in scope")
        shaped = raw.keys() == {TAG, "v"} and (
            type(payload) is list
            if tag == "tuple"
            else type(payload) is str and (tag == "int" or payload in ("nan", "inf", "-inf"))
        )
        if tag not in _PLAIN_TAGS or not shaped:
            raise datatier.TierAbort("a name bound to what is not plain data")
    elif tag in _CLASS_TAGS:
        cls = raw.get("cls")
        try:
            registry.lookup(cls if type(cls) is str else "")
        except ValueError:
            raise datatier.TierAbort("a value the worker cannot restore") from None
    elif tag not in _LEAF_TAGS and tag not in _PLAIN_TAGS and tag not in _HASHED_TAGS:
        raise datatier.TierAbort("a value the worker cannot restore")  # mobj: its class is not defined


class DataTier:
    """Runs a step in the data tier when it can, else (or when the tier gives up) in a worker process.

    Args:
        process: the process runner (every step the tier does not take).
        threads: the threads tier steps run in (shared with the agents' warmups).
    """

    def __init__(self, process: CodeRunner, threads: ThreadCodeRunner) -> None:
        self.process = process
        self.threads = threads
        self.counts = dict.fromkeys(ROUTES, 0)
        """Steps by route, since start."""
        self._lock = threading.Lock()

    def describe(self) -> str:
        """What ``statek.executor.status`` says about the tier."""
        c = self.counts
        return (
            f"on: plain-data code runs in the executor ({c['tier']} steps; {c['aborted']} given up and "
            f"run in a worker; {c['process']} outside the subset)"
        )

    def _count(self, route: str) -> None:
        with self._lock:
            self.counts[route] += 1
        DATA_TIER_STEPS.labels(route=route).inc()

    async def run(self, request: ExecRequest) -> ExecResult:
        """Run ``request`` in the tier, or in a worker process from the start."""
        if not eligible_units(request):
            self._count("process")
            return await self.process.run(request)
        session = TierSession(request.session, request.units)
        tier = ExecRequest(session=session, units=request.units, deadline_seconds=request.deadline_seconds)
        result = await self.threads.run(tier)
        if session.aborted is None:
            result = session.finish(result)
        if session.aborted is None:
            self._count("tier")
            return result
        self._count("process" if session.aborted == "outside the subset" else "aborted")
        return await self.process.run(request)
