"""Name fallback for model code: a name missing from the workspace is looked up elsewhere (shared contexts).

STATEK's ``ContextFallbackProxy``: in a job bound to a shared context, model code reads a shared
variable as if it were a local one. CPython looks a missing global up in the namespace's
``__builtins__`` mapping, and calls ``__missing__`` when that mapping is a dict subclass (for
``LOAD_NAME`` and ``LOAD_GLOBAL`` alike), so :class:`FallbackBuiltins` is the whole mechanism: no
rewrite of the code, and the lookup runs only for names that would otherwise be a ``NameError``.

The lookup is a callable given by the runner: in a worker process it asks the executor over the
step's socket, so the shared values stay data and no host object is reachable from model code.
:func:`assigned_names` finds the names a statement assigns at the top level, so the engine can
refuse an assignment to a shared variable before the statement runs.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from statek_bus.sandbox.replay import REPLAYING

__all__ = ["FallbackBuiltins", "assigned_names"]


class FallbackBuiltins(dict[str, Any]):
    """Builtins whose missing names are asked of ``lookup`` (``KeyError`` there: a ``NameError``).

    Args:
        base: the builtins model code gets.
        lookup: ``name -> value``; raises ``KeyError`` when there is no such name.
    """

    __slots__ = ("_lookup",)

    def __init__(self, base: dict[str, Any], lookup: Callable[[str], Any]) -> None:
        super().__init__(base)
        self._lookup = lookup

    def __missing__(self, name: str) -> Any:
        if name.startswith("__") or REPLAYING.get():  # dunders are the interpreter's; replays have no job
            raise KeyError(name)
        return self._lookup(name)


class _Stores(ast.NodeVisitor):
    def __init__(self) -> None:
        self.names: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.names.append(node.id)

    def _scope(self, node: Any) -> None:  # a new scope: its assignments are its own
        return None

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _scope
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope


def assigned_names(source: str) -> list[str]:
    """Names ``source`` assigns (or deletes) in its own scope, in order; [] if it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    visitor = _Stores()
    visitor.visit(tree)
    return visitor.names
