"""The durable workspace: a job's Python namespace as data, without pickle.

STATEK persists locals through dbzero and loses every function the model defines (its §2 item 2);
here a workspace is two lists that survive restarts and move between replicas:

* **definitions**: the *source* of each top-level ``def``, ``class``, ``import`` and
  ``name = lambda ...`` that ran, in order; a later definition of the same names replaces the entry.
  Restoring replays them through :func:`~statek_bus.sandbox.restricted.compile_block`, so restored code passes
  the same policy as new code (a tampered record cannot smuggle ``import os`` in). The session
  replays them with tools, ``exit`` and future reads refusing (:mod:`statek_bus.sandbox.replay`), and any
  failure of one definition (a stray ``BaseException`` too) is a restore error, never a crash.
* **values**: every other name, in the tagged JSON of :mod:`statek_bus.wire.values`, plus instances of
  classes the model defined, as ``{"$t": "mobj", "cls": <class name>, "v": <encoded __dict__>}``
  (revived without running ``__init__``). A value with no encoding is dropped and named, so the
  engine can tell the model.

Restore order: values first (so definitions whose defaults or class bodies read them replay), then
definitions (a definition failing with ``NameError`` is retried after the others, so ``class B(A)``
recorded before a redefined ``A`` still replays), then the values again (a name rebound from a
function to data keeps its data) with model-class instances revived. Known drift: a definition
replays against the *current* values (``f = lambda k=k: k`` picks up the latest ``k``) and two
names sharing one mutable value get a copy each.

Large workspaces go to the object store: :func:`save_workspace` returns a :class:`WorkspaceRef`
holding the data inline or the name of a blob ``ws/<token(job_id)>/<step>``.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from statek_bus.sandbox.protocol import is_null
from statek_bus.sandbox.restricted import (
    MODEL_MODULE,
    CompiledStatement,
    SandboxPolicy,
    compile_block,
    module_name,
)
from statek_bus.wire.subjects import OBJECT_STORE_BUCKET, token
from statek_bus.wire.values import TAG, TypeRegistry, from_json, to_json

if TYPE_CHECKING:  # the sandbox worker imports this module: it needs no NATS client
    from nats.js import JetStreamContext

__all__ = [
    "CHECKED_WORKSPACE_BYTES",
    "MAX_DEFINITIONS_BYTES",
    "MAX_WORKSPACE_BYTES",
    "Definition",
    "DefinitionSource",
    "Workspace",
    "WorkspaceData",
    "WorkspaceRef",
    "decode_reported_workspace",
    "decode_stored_workspace",
    "decode_workspace",
    "definitions_too_large",
    "delete_workspace",
    "encode_workspace",
    "load_workspace",
    "save_workspace",
    "stored_value",
    "workspace_blob_name",
]

MAX_WORKSPACE_BYTES = 32 * 1024 * 1024
"""Largest workspace a step may save (encoded); past it the step's variables are not saved."""
MAX_DEFINITIONS_BYTES = 1024 * 1024
"""Largest encoded list of definitions a workspace may hold (the source of every ``def``, ``class``
and ``import`` it replays; about 25,000 lines of code); past it the step's variables are not saved.
Definitions decode into one object each: 30 MB of empty ones, under the workspace limit, cost the
executor 0.9 s a step to decode, so a stored workspace's are measured in their bytes first."""
MOBJ = "mobj"
"""Tag of an instance of a model-defined class."""


class DefinitionSource(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One persisted definition."""

    names: list[str]
    """Names it binds."""
    source: str
    """Its source text, replayed through the sandbox on restore."""
    trusted: bool = False
    """Made by a hidden warmup block: replayed under the trusted policy (hidden tools allowed);
    everything else replays under the job's own policy, as it ran."""


class WorkspaceData(msgspec.Struct, kw_only=True):
    """A job's persisted namespace."""

    values: dict[str, Any] = {}
    """Name → tagged JSON value (:mod:`statek_bus.wire.values`, plus ``mobj``)."""
    definitions: list[DefinitionSource] = []
    """Definitions in replay order."""


class WorkspaceRef(msgspec.Struct, kw_only=True, frozen=True):
    """Where a saved workspace is: inline in the job record, or a blob in the object store."""

    inline: WorkspaceData | None = None
    """The workspace itself, when it was small enough."""
    blob: str | None = None
    """Object name in ``OBJECT_STORE_BUCKET``, when it was not."""
    size: int = 0
    """Encoded size in bytes."""


@dataclass(frozen=True)
class Definition:
    """A definition statement that ran: the names it binds and its source."""

    names: tuple[str, ...]
    """Names it binds."""
    source: str
    """Its source text."""
    trusted: bool = False
    """Made by trusted (hidden warmup) code."""


_CODE_KINDS = (type, types.ModuleType, staticmethod, classmethod, property)


def _is_code(value: Any) -> bool:
    """Whether a value bound by a definition is what the definition made (not data assigned later)."""
    return callable(value) or isinstance(value, _CODE_KINDS)


def _plain_model_class(value: Any) -> bool:
    """A class the model defined whose instances are plain objects with a ``__dict__``."""
    return (
        isinstance(value, type)
        and value.__module__ == MODEL_MODULE
        and all(base is object or base.__module__ == MODEL_MODULE for base in value.__mro__)
    )


class _Codec:
    """The tagged codec extended with ``mobj``: walks containers, delegates leaves to ``to_json``.

    Only used when the namespace holds model-defined classes; otherwise values go straight through
    :func:`to_json`/:func:`from_json` (identical output for data without ``mobj``).
    """

    def __init__(self, registry: TypeRegistry, classes: Mapping[str, type]) -> None:
        self.registry = registry
        self.classes = dict(classes)
        self.names = {cls: name for name, cls in classes.items()}

    def encode(self, value: Any, path: str) -> Any:
        kind = type(value)
        name = self.names.get(kind)
        if name is not None:
            fields = vars(value)
            return {
                TAG: MOBJ,
                "cls": name,
                "v": {k: self.encode(v, f"{path}.{k}") for k, v in fields.items()},
            }
        if kind is list:
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind is tuple or kind is set or kind is frozenset:
            return {TAG: kind.__name__, "v": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if kind is dict:
            if all(isinstance(k, str) for k in value) and TAG not in value:
                return {k: self.encode(v, f"{path}[{k!r}]") for k, v in value.items()}
            pairs = [
                [self.encode(k, f"{path}.key"), self.encode(v, f"{path}[{k!r}]")] for k, v in value.items()
            ]
            return {TAG: "dict", "v": pairs}
        return to_json(value, self.registry, path)

    def decode(self, data: Any) -> Any:
        """:func:`from_json`, with ``mobj`` instances of the namespace's classes at any depth."""
        return from_json(data, self.registry, revive=self._revive)

    def _revive(self, data: dict[str, Any], decode: Callable[[Any], Any]) -> Any:
        v = data.get("v")
        if data.get(TAG) != MOBJ or type(v) is not dict:
            raise ValueError(f"unknown value tag {data.get(TAG)!r}")
        name = data.get("cls")
        cls = self.classes.get(name) if type(name) is str else None
        if cls is None:
            raise ValueError(f"class {name!r} is no longer defined")
        obj: Any = object.__new__(cls)
        vars(obj).update({k: decode(x) for k, x in v.items()})
        return obj


class _Restore(Protocol):
    def __call__(
        self,
        data: WorkspaceData,
        namespace: dict[str, Any],
        *,
        policy: SandboxPolicy,
        registry: TypeRegistry,
        trusted_policy: SandboxPolicy | None = None,
    ) -> Workspace: ...


class _RestoreDescriptor:
    """``restore`` on the class makes a new workspace; on an instance it fills that one."""

    def __get__(self, instance: Workspace | None, owner: type[Workspace]) -> _Restore:
        return (instance if instance is not None else owner())._restore


class Workspace:
    """The definitions a job's code has made, in replay order; values live in the namespace."""

    def __init__(self, definitions: list[Definition] | None = None) -> None:
        self.definitions: list[Definition] = list(definitions or [])
        """Definitions in replay order."""
        self.restore_errors: list[str] = []
        """``"<names>: <Type>: <message>"`` for each definition or value :meth:`restore` could not bring back."""

    def record(self, statement: CompiledStatement, *, trusted: bool = False) -> None:
        """Remember a definition statement that ran (``trusted``: in a hidden warmup block)."""
        if statement.is_definition:
            self._add(Definition(statement.binds, statement.source, trusted))

    def _add(self, definition: Definition) -> None:
        names = set(definition.names)
        kept = [d for d in self.definitions if not (d.names and set(d.names) <= names)]
        self.definitions = [*kept, definition]

    def _model_classes(self, namespace: Mapping[str, Any]) -> dict[str, type]:
        return {
            n: namespace[n]
            for d in self.definitions
            for n in d.names
            if n in namespace and _plain_model_class(namespace[n])
        }

    def snapshot(
        self, namespace: Mapping[str, Any], *, base_names: set[str], registry: TypeRegistry
    ) -> tuple[WorkspaceData, list[str]]:
        """Encode ``namespace`` (minus ``base_names`` and dunders) for persisting.

        Args:
            namespace: the sandbox globals after a step.
            base_names: names the engine put there (tools, context, ``print``, ``exit``).
            registry: the agent module's dataclasses, Structs and Enums.

        Returns:
            The data, and the names dropped because their values cannot be encoded (sorted).
        """
        defined = {n for d in self.definitions for n in d.names}
        classes = self._model_classes(namespace)
        codec = _Codec(registry, classes) if classes else None
        values: dict[str, Any] = {}
        modules: list[DefinitionSource] = []
        dropped: list[str] = []
        for name, value in namespace.items():
            if name in base_names or name.startswith("__"):
                continue
            if name in defined and _is_code(value):
                continue
            if isinstance(value, types.ModuleType):  # imported inside a compound statement
                modules.append(
                    DefinitionSource(names=[name], source=f"import {module_name(value)} as {name}")
                )
                continue
            # Model-defined types may raise anything while being encoded (a dict subclass whose
            # __iter__ raises StopIteration...): any failure means "cannot persist", never a crash.
            try:
                values[name] = to_json(value, registry, name)
            except Exception:
                try:  # holds an instance of a model class? (the slower walk, only then)
                    if codec is None:
                        raise
                    values[name] = codec.encode(value, name)
                except Exception:
                    dropped.append(name)
        definitions = [
            DefinitionSource(names=list(d.names), source=d.source, trusted=d.trusted)
            for d in self.definitions
            if not d.names or any(n in namespace for n in d.names)
        ]
        return WorkspaceData(values=values, definitions=[*definitions, *modules]), sorted(dropped)

    def _restore(
        self,
        data: WorkspaceData,
        namespace: dict[str, Any],
        *,
        policy: SandboxPolicy,
        registry: TypeRegistry,
        trusted_policy: SandboxPolicy | None = None,
    ) -> Workspace:
        """Bring ``data`` back into ``namespace`` (normally fresh sandbox globals plus the tools).

        Each definition replays under the policy it first ran under: ``trusted_policy`` for those
        a hidden warmup block made, ``policy`` (the job's) for everything else.

        ``Workspace.restore(...)`` returns a new workspace; ``workspace.restore(...)`` on an instance
        fills (replaces the definitions of) that instance and returns it.

        Every definition is compiled before anything runs, so a refused one leaves ``namespace``
        untouched. Runtime failures (a definition or value that cannot come back) are collected in
        :attr:`restore_errors` and the rest is restored.

        Raises:
            SandboxViolation: a stored definition breaks ``policy``.
        """
        blocks = [
            compile_block(d.source, trusted_policy if d.trusted and trusted_policy else policy).statements
            for d in data.definitions
        ]
        workspace = self
        workspace.definitions = [Definition(tuple(d.names), d.source, d.trusted) for d in data.definitions]
        workspace.restore_errors = []
        early: dict[str, Any] = {}
        late: dict[str, Any] = {}
        for name, stored in data.values.items():
            try:
                raw = stored_value(stored)
            except ValueError as exc:
                workspace.restore_errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            try:
                early[name] = from_json(raw, registry)
            except Exception:  # ``mobj``, a class no longer registered, or bad data: after definitions
                late[name] = raw
        namespace.update(early)
        pending = list(zip(data.definitions, blocks, strict=True))
        while pending:
            retry: list[tuple[DefinitionSource, list[CompiledStatement]]] = []
            failed: list[str] = []
            for definition, statements in pending:
                try:
                    for statement in statements:
                        exec(statement.code, namespace)
                except NameError as exc:
                    retry.append((definition, statements))
                    failed.append(f"{', '.join(definition.names)}: NameError: {exc}")
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # exit()'s or a suspension's signal is a failure here too
                    workspace.restore_errors.append(
                        f"{', '.join(definition.names)}: {type(exc).__name__}: {exc}"
                    )
            if len(retry) == len(pending):
                workspace.restore_errors.extend(failed)
                break
            pending = retry
        namespace.update(early)
        codec = _Codec(registry, workspace._model_classes(namespace))
        for name, raw in late.items():
            try:
                namespace[name] = codec.decode(raw)
            except Exception as exc:
                workspace.restore_errors.append(f"{name}: {type(exc).__name__}: {exc}")
        return workspace

    restore = _RestoreDescriptor()
    """``restore(data, namespace, *, policy, registry, trusted_policy=None) -> Workspace``: see
    :meth:`_restore`."""


# --------------------------------------------------------------------------------------------------
# Size and storage
# --------------------------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(WorkspaceData)


def encode_workspace(data: WorkspaceData) -> bytes:
    """``data`` as JSON bytes."""
    return _ENCODER.encode(data)


def decode_workspace(raw: bytes) -> WorkspaceData:
    """Invert :func:`encode_workspace`; ``msgspec.ValidationError`` names a malformed field."""
    return _DECODER.decode(raw)


class _StoredWorkspace(msgspec.Struct, kw_only=True):
    values: dict[str, msgspec.Raw] = {}
    definitions: msgspec.Raw = msgspec.Raw(b"[]")


_STORED_DECODER = msgspec.json.Decoder(_StoredWorkspace)
_DEFINITIONS_DECODER = msgspec.json.Decoder(list[DefinitionSource])


def decode_stored_workspace(raw: bytes) -> WorkspaceData:
    """:func:`decode_workspace`, each value left in its stored bytes (:class:`msgspec.Raw`, which
    encodes again as it is): the executor decodes only what a step in it names
    (:func:`stored_value`). A worker's workspace or a blob of 32 MB of ``[[], ...]`` or of ints of
    4,299 digits cost the executor 1.9-2.3 s a step to decode and encode again, on its event loop.
    Definitions over :data:`MAX_DEFINITIONS_BYTES` are refused (``ValueError``) before they are
    decoded: no step saves them (:func:`definitions_too_large`)."""
    stored = _STORED_DECODER.decode(raw)
    if (size := len(stored.definitions)) > MAX_DEFINITIONS_BYTES:
        raise ValueError(
            f"the workspace's definitions are {size:,} bytes; the limit is {MAX_DEFINITIONS_BYTES:,}"
        )
    return WorkspaceData(
        values=dict(stored.values), definitions=_DEFINITIONS_DECODER.decode(stored.definitions)
    )


def definitions_too_large(data: WorkspaceData, size: int) -> int | None:
    """The encoded size of ``data``'s definitions when over :data:`MAX_DEFINITIONS_BYTES` (``size``:
    the whole workspace's, encoded; a smaller one is not measured again), else ``None``."""
    if size <= MAX_DEFINITIONS_BYTES:
        return None
    defs = len(_ENCODER.encode(data.definitions))
    return defs if defs > MAX_DEFINITIONS_BYTES else None


CHECKED_WORKSPACE_BYTES = 256 * 1024
"""A worker's new workspace of at most this many bytes (the default ``workspace_inline_max``) is
decoded whole when it comes: a value msgspec keeps in bytes but cannot decode (an int of 5,000
digits, ``1e400``) is then the worker's fault, and a workspace the record may hold inline is all
decoded JSON (60 ints of 4,299 digits fit: ~25 ms). A larger one stays in its bytes and goes to
the object store."""


def decode_reported_workspace(raw: msgspec.Raw) -> WorkspaceData | None:
    """The workspace a worker's step report holds (None for ``null``): decoded whole up to
    :data:`CHECKED_WORKSPACE_BYTES`, else :func:`decode_stored_workspace`; ``ValueError`` on what
    does not decode."""
    if is_null(raw):
        return None
    return decode_workspace(raw) if len(raw) <= CHECKED_WORKSPACE_BYTES else decode_stored_workspace(raw)


def stored_value(value: Any) -> Any:
    """A workspace value as tagged JSON: a value :func:`decode_stored_workspace` left in its bytes
    is decoded here (``ValueError`` when they are not JSON)."""
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def workspace_blob_name(job_id: str, step: int) -> str:
    """Object name of step ``step``'s workspace of ``job_id`` in ``OBJECT_STORE_BUCKET``."""
    return f"ws/{token(job_id)}/{step}"


async def save_workspace(
    js: JetStreamContext, job_id: str, step: int, data: WorkspaceData, inline_max: int
) -> WorkspaceRef:
    """Keep ``data`` inline when it encodes to at most ``inline_max`` bytes, else store it as a blob.

    Saving the same step again (a redelivered step) overwrites the same blob.
    """
    raw = encode_workspace(data)
    if len(raw) <= inline_max and not any(isinstance(v, msgspec.Raw) for v in data.values.values()):
        return WorkspaceRef(inline=data, size=len(raw))  # values kept in their bytes: a blob
    name = workspace_blob_name(job_id, step)
    store = await js.object_store(OBJECT_STORE_BUCKET)
    await store.put(name, raw)
    return WorkspaceRef(blob=name, size=len(raw))


async def load_workspace(js: JetStreamContext, ref: WorkspaceRef) -> WorkspaceData:
    """The workspace ``ref`` points at (an empty one for an empty ref)."""
    if ref.inline is not None:
        return ref.inline
    if ref.blob is None:
        return WorkspaceData()
    store = await js.object_store(OBJECT_STORE_BUCKET)
    result = await store.get(ref.blob)
    return decode_stored_workspace(result.data or b"")


async def delete_workspace(js: JetStreamContext, ref: WorkspaceRef) -> None:
    """Delete ``ref``'s blob, if it has one (superseded workspaces); a missing blob is not an error."""
    if ref.blob is None:
        return
    from nats.js.errors import NotFoundError, ObjectDeletedError, ObjectNotFoundError

    store = await js.object_store(OBJECT_STORE_BUCKET)
    with contextlib.suppress(NotFoundError, ObjectNotFoundError, ObjectDeletedError):
        await store.delete(ref.blob)
