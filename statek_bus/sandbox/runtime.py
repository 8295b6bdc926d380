"""Run-time guards for what the static check cannot see, and the pieces of a sandbox namespace.

Layer 2 of restricted mode (:mod:`statek_bus.sandbox.restricted` explains the policy and why): the per-namespace
deadline :class:`Clock` behind every tick, the ``str.format`` template guard, the guard on attribute
writes to host classes, modules and functions, read-only shim modules behind a guarded ``__import__``
(with checked ``operator``/``functools`` helpers), and future resolution on every variable read and
call. :func:`~statek_bus.sandbox.restricted.sandbox_globals` assembles them into a namespace.
"""

from __future__ import annotations

import abc
import copy
import enum
import functools
import importlib
import itertools
import string
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from statek_bus.sandbox.policy import (
    DENIED_ATTRIBUTES,
    FORMAT_METHODS,
    GUARDED_ATTRIBUTES,
    MODEL_MODULE,
    SandboxPolicy,
    SandboxViolation,
    StepTimeout,
)

__all__ = [
    "Clock",
    "Importer",
    "call_with",
    "format_guard",
    "module_name",
    "read_value",
    "register_future_type",
    "write_guard",
]

_MODULE_DENY: dict[str, frozenset[str]] = {
    "calendar": frozenset({"main", "setfirstweekday"}),
    "collections": frozenset({"UserString"}),  # its .format forwards to str.format from host code
    "time": frozenset({"tzset"}),
}
"""Public attributes a shim leaves out: they change process-wide state or reach around a guard."""


def _no_deadline() -> float:
    return float("inf")


class Clock:
    """The deadline shared by every tick of one namespace; :func:`set_deadline` swaps it."""

    __slots__ = ("_box", "tick")

    def __init__(self, deadline: Callable[[], float] | None) -> None:
        # ``tick`` closes over the box, not the clock: no reference cycle, so a step's clock is
        # freed with its namespace rather than by the cyclic collector
        box = self._box = [deadline or _no_deadline]
        monotonic = time.monotonic

        def tick() -> None:
            if monotonic() > box[0]():
                raise StepTimeout("the step ran past its wall-clock limit")

        self.tick = tick

    @property
    def deadline(self) -> Callable[[], float]:
        """Returns the deadline as a :func:`time.monotonic` value."""
        return self._box[0]

    def set_deadline(self, deadline: Callable[[], float] | None) -> None:
        """Swap the deadline every tick of this namespace checks (None = no limit)."""
        self._box[0] = deadline or _no_deadline

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Iterate ``iterable``, ticking the deadline on every item."""
        tick = self.tick
        for item in iterable:
            tick()
            yield item

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` that raises StepTimeout instead of sleeping past the deadline."""
        remaining = self.deadline() - time.monotonic()
        if seconds > remaining:
            time.sleep(max(0.0, remaining))
            raise StepTimeout("the step ran past its wall-clock limit")
        time.sleep(seconds)

    def count(self, start: Any = 0, step: Any = 1) -> Iterator[Any]:
        """``itertools.count`` bounded by the deadline."""
        return self.iterate(itertools.count(start, step))

    def cycle(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """``itertools.cycle`` bounded by the deadline."""
        return self.iterate(itertools.cycle(iterable))

    def repeat(self, obj: Any, times: int | None = None) -> Iterator[Any]:
        """``itertools.repeat``, bounded by the deadline (a counted one too: ``repeat(1, 10**10)``
        drained by a C consumer such as ``deque(..., maxlen=0)`` would never reach a tick)."""
        return self.iterate(itertools.repeat(obj) if times is None else itertools.repeat(obj, times))

    def iter(self, obj: Any, *sentinel: Any) -> Iterator[Any]:
        """``iter``; the two-argument (callable, sentinel) form is bounded by the deadline."""
        return self.iterate(iter(obj, *sentinel)) if sentinel else iter(obj)


_FORMATTER = string.Formatter()


def _exact(text: str) -> str:
    """``text`` as a plain ``str``: a model subclass may lie in ``split``/``__hash__``/``__eq__``."""
    return text if type(text) is str else str.__str__(text)


def _check_template(template: str) -> None:
    template = _exact(template)  # a subclass with a constant hash/eq would hit a cached safe template
    if len(template) <= 256:  # literal templates repeat: parse each once
        _check_short_template(template)
    else:
        _parse_template(template)


@functools.lru_cache(maxsize=1024)
def _check_short_template(template: str) -> None:
    _parse_template(template)


def _parse_template(template: str) -> None:
    try:
        fields = list(_FORMATTER.parse(template))
    except ValueError:
        return  # malformed: the real call raises the same error
    for _, name, spec, _ in fields:
        if name and ("." in name or "[" in name):
            raise SandboxViolation(f"format field '{{{name}}}' is not allowed: no attribute or index lookups")
        if spec:
            _parse_template(spec)


def _host_abc(cls: Any) -> bool:
    """Whether ``cls`` is, or derives from, an abstract base class the model did not define."""
    return isinstance(cls, abc.ABCMeta) and any(
        isinstance(c, abc.ABCMeta) and c.__module__ != MODEL_MODULE for c in cls.__mro__
    )


def format_guard(obj: Any, name: str) -> Any:
    """``obj.<name>`` for a guarded attribute (:data:`~statek_bus.sandbox.policy.GUARDED_ATTRIBUTES`).

    ``format``/``format_map`` refuse templates that walk attributes, whatever holds the string (a
    ``str``, a subclass, a ``super()`` proxy around one: the bound method's ``__self__`` is
    checked). ``register`` of an abstract base class the model did not define is refused: it
    would change ``isinstance`` for the whole process (``Fraction.register(str)``).
    """
    name = _exact(name)
    if name == "register":
        if _host_abc(obj):
            raise SandboxViolation(f"cannot register classes with '{obj.__qualname__}': it is not yours")
        method = getattr(obj, name)
        bound = getattr(method, "__self__", None)
        if _host_abc(bound):
            raise SandboxViolation("cannot register classes with an abstract base class that is not yours")
        return method
    method = getattr(obj, name)
    if name not in FORMAT_METHODS:
        return method
    bound = getattr(method, "__self__", None)
    if isinstance(bound, str):  # ``super(S, s).format`` is bound to ``s``
        _check_template(bound)
    if isinstance(obj, str):
        _check_template(obj)
    elif isinstance(obj, type) and issubclass(obj, str):

        def checked(template: Any, /, *args: Any, **kwargs: Any) -> Any:
            if isinstance(template, str):
                _check_template(template)
            return method(template, *args, **kwargs)

        return checked
    return method


_PROTECTED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    functools.partial,
)


def write_guard(obj: Any) -> Any:
    """``obj`` itself, unless it is a class, module or function the model did not make, or a
    ``typing`` object (an alias passes an attribute write on to the class behind it)."""
    if isinstance(obj, _ShimModule):
        raise SandboxViolation(f"module '{vars(obj)[_REAL_NAME]}' is read-only")
    if type(obj).__module__ == "typing":
        raise SandboxViolation(f"cannot set or delete attributes of '{obj!r}'")
    if isinstance(obj, _PROTECTED) and getattr(obj, "__module__", None) != MODEL_MODULE:
        kind = "class" if isinstance(obj, type) else type(obj).__name__
        name = getattr(obj, "__qualname__", None) or repr(obj)
        raise SandboxViolation(f"cannot set or delete attributes of {kind} '{name}'")
    return obj


def _checked_attr(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError("attribute name must be a string")
    name = _exact(name)  # checked and used as the same plain string: a subclass cannot lie twice
    for part in name.split("."):
        if part.startswith("_") or part in DENIED_ATTRIBUTES or part.startswith("co_"):
            raise SandboxViolation(f"attribute '{part}' is not allowed")
    return name


def _attrgetter(*names: str) -> Callable[[Any], Any]:
    names = tuple(_checked_attr(n) for n in names)

    def one(obj: Any, name: str) -> Any:
        for part in name.split("."):
            obj = format_guard(obj, part) if part in GUARDED_ATTRIBUTES else getattr(obj, part)
        return obj

    if len(names) == 1:
        return lambda obj: one(obj, names[0])
    return lambda obj: tuple(one(obj, n) for n in names)


def _methodcaller(name: str, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    name = _checked_attr(name)
    get = _attrgetter(name)
    return lambda obj: get(obj)(*args, **kwargs)


def _update_wrapper(
    wrapper: Any,
    wrapped: Any,
    assigned: Iterable[str] = functools.WRAPPER_ASSIGNMENTS,
    updated: Iterable[str] = functools.WRAPPER_UPDATES,
) -> Any:
    # ``updated=("__globals__",)`` would merge a host function's globals into the model's namespace;
    # ``assigned`` could copy any attribute: only the standard names (a subset of them) are allowed.
    assigned = tuple(_exact(a) for a in assigned)
    updated = tuple(_exact(u) for u in updated)
    if not set(assigned) <= set(functools.WRAPPER_ASSIGNMENTS) or not set(updated) <= set(
        functools.WRAPPER_UPDATES
    ):
        raise SandboxViolation("update_wrapper/wraps accept only the standard assigned/updated names")
    return functools.update_wrapper(write_guard(wrapper), wrapped, assigned, updated)


def _wraps(
    wrapped: Any,
    assigned: Iterable[str] = functools.WRAPPER_ASSIGNMENTS,
    updated: Iterable[str] = functools.WRAPPER_UPDATES,
) -> Callable[[Any], Any]:
    return lambda wrapper: _update_wrapper(wrapper, wrapped, assigned, updated)


def _total_ordering(cls: Any) -> Any:
    return functools.total_ordering(write_guard(cls))


_GUARDED: dict[tuple[str, str], Any] = {
    ("operator", "attrgetter"): _attrgetter,
    ("operator", "methodcaller"): _methodcaller,
    ("functools", "update_wrapper"): _update_wrapper,
    ("functools", "wraps"): _wraps,
    ("functools", "total_ordering"): _total_ordering,
}
_CLOCKED = {("time", "sleep"), ("itertools", "count"), ("itertools", "cycle"), ("itertools", "repeat")}
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, tuple, enum.Enum)


_REAL_NAME = "__statek_module__"


class _ShimModule(types.ModuleType):
    """A read-only stand-in for an allowed module, holding only its public, non-module attributes.

    Its ``__name__`` is not the real one: ``from json import decoder`` falls back to
    ``sys.modules["<__name__>.decoder"]`` when the attribute is missing, which would hand out the
    real submodule.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        write_guard(self)

    def __delattr__(self, name: str) -> None:
        write_guard(self)


@functools.lru_cache(maxsize=64)
def _module_plan(name: str) -> tuple[tuple[str, Any, bool], ...]:
    """(attribute, value, copy per namespace?) for the public attributes a shim of ``name`` exposes."""
    module = importlib.import_module(name)
    deny = _MODULE_DENY.get(name, frozenset())
    plan: list[tuple[str, Any, bool]] = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or attr in deny or isinstance(value, types.ModuleType):
            continue
        mutable = not (callable(value) or isinstance(value, _IMMUTABLE))
        if mutable:
            try:
                copy.deepcopy(value)
            except Exception:
                continue
        plan.append((attr, _GUARDED.get((name, attr), value), mutable))
    return tuple(plan)


class Importer:
    """The guarded ``__import__`` of one namespace, with its own shim modules."""

    def __init__(self, policy: SandboxPolicy, clock: Clock) -> None:
        self.allowed = policy.allowed_imports
        self.clock = clock
        self.shims: dict[str, _ShimModule] = {}

    def shim(self, name: str) -> _ShimModule:
        """The read-only copy of allowed module ``name`` (built once per importer)."""
        found = self.shims.get(name)
        if found is not None:
            return found
        attrs = {a: copy.deepcopy(v) if c else v for a, v, c in _module_plan(name)}
        for module, attr in _CLOCKED:
            if module == name:
                attrs[attr] = getattr(self.clock, "sleep" if attr == "sleep" else attr)
        for sub in self.allowed:
            head, _, tail = sub.rpartition(".")
            if head == name:
                attrs[tail] = self.shim(sub)
        shim = _ShimModule(f"<sandboxed {name}>", getattr(importlib.import_module(name), "__doc__", None))
        vars(shim).update(attrs, **{_REAL_NAME: name})
        self.shims[name] = shim
        return shim

    def __call__(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level:
            raise SandboxViolation("relative imports are not allowed")
        if name not in self.allowed:
            root_ok = name.split(".")[0] in self.allowed
            raise SandboxViolation(
                f"import '{name}' is " + ("not available in the sandbox" if root_ok else "not allowed")
            )
        if fromlist or "." not in name:
            return self.shim(name)
        root, _, _ = name.partition(".")
        if root in self.allowed:
            return self.shim(root)
        # Only a submodule is allowed (``"os.path"``): ``import os.path`` binds a bare ``os`` holding it.
        bare = _ShimModule(f"<sandboxed {root}>")
        vars(bare).update({name.split(".")[1]: self.shim(".".join(name.split(".")[:2])), _REAL_NAME: root})
        return bare


_FUTURE_TYPES: set[type] = set()


def register_future_type(cls: type) -> type:
    """Make instances of ``cls`` futures: reading one calls its ``__statek_resolve__()`` (usable as a decorator)."""
    _FUTURE_TYPES.add(cls)
    return cls


def read_value(value: Any, _types: set[type] = _FUTURE_TYPES) -> Any:
    """``__statek_read__``: resolve ``value`` if it is a future (or suspend the job); other values pass
    through."""
    if type(value) in _types:
        return value.__statek_resolve__()
    return value


def call_with(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``__statek_call__``: ``fn(*args, **kwargs)``, futures among the arguments resolved unless ``fn``
    declares ``takes_futures``."""
    # Runs around every call with a bare-name argument in model code: plain loops, no generators.
    types_ = _FUTURE_TYPES
    if type(fn) in types_:
        fn = fn.__statek_resolve__()
    for a in args:
        if type(a) in types_:
            break
    else:
        if not kwargs:
            return fn(*args)
        for v in kwargs.values():
            if type(v) in types_:
                break
        else:
            return fn(*args, **kwargs)
    if getattr(fn, "takes_futures", False):
        return fn(*args, **kwargs)
    return fn(*(read_value(a) for a in args), **{k: read_value(v) for k, v in kwargs.items()})


def module_name(module: types.ModuleType) -> str:
    """The importable name of ``module``, a shim from the sandbox's ``import`` or a real module."""
    return str(vars(module).get(_REAL_NAME, module.__name__))
