"""Instrumentation: rewrite checked model code so it honours step deadlines and resolves futures.

Layer 3 of restricted mode, applied in both modes (:mod:`statek_bus.sandbox.restricted` explains why). Loop,
function and ``except`` bodies start with ``__statek_tick__()``, lambdas call it, and comprehension
iterables go through ``__statek_iter__``; variable reads become ``__statek_read__(name)`` and calls
with bare-name arguments ``__statek_call__(f, a, ...)``. In restricted mode ``.format``/
``.format_map`` and ``.register`` reads go through ``__statek_fmt__`` and attribute stores and deletes through
``__statek_w__``. :func:`~statek_bus.sandbox.restricted.sandbox_globals` binds all of these names.
"""

from __future__ import annotations

import ast

from statek_bus.sandbox.policy import CALL, FMT, GUARDED_ATTRIBUTES, ITER, READ, TICK, WRITE

__all__ = ["instrument"]


def instrument(tree: ast.Module, *, restricted: bool) -> ast.Module:
    """Instrument ``tree`` in place (run the static check first) and fill in missing locations."""
    out: ast.Module = ast.fix_missing_locations(_Instrumenter(restricted).visit(tree))
    return out


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


class _Instrumenter(ast.NodeTransformer):
    def __init__(self, restricted: bool) -> None:
        self.restricted = restricted

    # Futures: every variable read goes through ``__statek_read__`` (a not-ready future suspends the
    # job there), except a bare name passed straight to a call: those calls become
    # ``__statek_call__(f, a, ...)``, which resolves the futures among the arguments unless ``f``
    # takes futures (``get_all``/``get_any``), so combinators receive them unresolved.
    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id != "super":
            return ast.copy_location(_call(READ, node), node)
        return node

    def visit_MatchClass(self, node: ast.MatchClass) -> ast.AST:
        # ``case int(x=1):`` names a class: it must stay a Name/Attribute for the compiler.
        node.patterns = [self.visit(p) for p in node.patterns]
        node.kwd_patterns = [self.visit(p) for p in node.kwd_patterns]
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        raw = any(isinstance(a, ast.Name) for a in node.args) or any(
            isinstance(k.value, ast.Name) for k in node.keywords
        )
        if not raw or (isinstance(node.func, ast.Name) and node.func.id == "super"):
            self.generic_visit(node)
            return node
        func = node.func if isinstance(node.func, ast.Name) else self.visit(node.func)
        node.args = [a if isinstance(a, ast.Name) else self.visit(a) for a in node.args]
        for k in node.keywords:
            if not isinstance(k.value, ast.Name):
                k.value = self.visit(k.value)
        node.args = [func, *node.args]
        node.func = ast.copy_location(ast.Name(id=CALL, ctx=ast.Load()), node.func)
        return node

    @staticmethod
    def _ticked(body: list[ast.stmt], at: int = 0) -> list[ast.stmt]:
        tick = ast.copy_location(ast.Expr(_call(TICK)), body[min(at, len(body) - 1)])
        return [*body[:at], tick, *body[at:]]

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While) -> ast.AST:
        self.generic_visit(node)
        node.body = self._ticked(node.body)
        return node

    visit_For = visit_AsyncFor = visit_While = _loop

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        first = node.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        node.body = self._ticked(node.body, 1 if has_doc and len(node.body) > 1 else 0)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        node.body = self._ticked(node.body)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.generic_visit(node)
        node.body = ast.copy_location(ast.BoolOp(op=ast.Or(), values=[_call(TICK), node.body]), node.body)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        if not node.is_async:
            node.iter = ast.copy_location(_call(ITER, node.iter), node.iter)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if not self.restricted:
            return node
        if isinstance(node.ctx, ast.Load) and node.attr in GUARDED_ATTRIBUTES:
            return ast.copy_location(_call(FMT, node.value, ast.Constant(node.attr)), node)
        if isinstance(node.ctx, ast.Store | ast.Del):
            node.value = ast.copy_location(_call(WRITE, node.value), node.value)
        return node
