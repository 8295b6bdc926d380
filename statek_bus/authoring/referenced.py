"""The names a piece of warmup code reads but never binds (STATEK's ``referenced_locals``).

An agent's :attr:`~statek_bus.authoring.agents.SupervisedAgent.referenced_locals` are the shared
variables its jobs must start with; a child job created with its own ``warmup_code`` gets the
creating job's variables of those names (:func:`~statek_bus.authoring.waiting.create_new_job`).
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable

__all__ = ["referenced_locals"]


def referenced_locals(source: str, exclude: Iterable[str] = ()) -> list[str]:
    """Names ``source`` reads and never binds, minus builtins, ``exit`` and ``exclude``."""
    try:
        tree = ast.parse(source)  # '#STATEK:' lines are comments, 'as tool' lines plain calls
    except SyntaxError:
        return []
    bound: set[str] = set()
    read: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                read.append(node.id)
            else:
                bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            if not isinstance(node, ast.ClassDef):
                a = node.args
                bound.update(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])
                bound.update(x.arg for x in (a.vararg, a.kwarg) if x is not None)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Lambda):
            bound.update(x.arg for x in node.args.args)
    skip = bound | set(exclude) | set(dir(builtins)) | {"exit"}
    return list(dict.fromkeys(n for n in read if n not in skip))
