"""The static check: refuse restricted constructs in model code's AST before anything runs.

Layer 1 of restricted mode (:mod:`statek_bus.sandbox.restricted` explains the policy and why). Every refusal is a
:class:`~statek_bus.sandbox.policy.SandboxViolation` naming the construct and its line.
"""

from __future__ import annotations

import ast

from statek_bus.sandbox.policy import (
    DENIED_ATTRIBUTES,
    DENIED_NAMES,
    GUARDED_ATTRIBUTES,
    SAFE_DUNDER_METHODS,
    SandboxPolicy,
    SandboxViolation,
)

__all__ = ["check_size", "check_tree"]


def check_size(source: str, policy: SandboxPolicy) -> None:
    """Refuse ``source`` over ``policy.max_bytes`` (before it is parsed)."""
    size = len(source.encode("utf-8", errors="surrogatepass"))
    if size > policy.max_bytes:
        raise SandboxViolation(f"source is {size} bytes; limit is {policy.max_bytes}")


def check_tree(tree: ast.Module, policy: SandboxPolicy) -> None:
    """Refuse a parsed block over ``policy.max_nodes`` or using any construct ``policy`` forbids."""
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > policy.max_nodes:
        raise SandboxViolation(f"source has {nodes} AST nodes; limit is {policy.max_nodes}")
    _Checker(policy).visit(tree)


class _Checker(ast.NodeVisitor):
    def __init__(self, policy: SandboxPolicy) -> None:
        self.policy = policy
        self._methods: set[int] = set()

    def fail(self, node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", None)
        raise SandboxViolation(f"{message} (line {line})" if line else message)

    def name(self, node: ast.AST, name: str | None, *, call: bool = False) -> None:
        if name is None:
            return
        if name.startswith("__"):
            self.fail(node, f"dunder name '{name}' is not allowed")
        if name in self.policy.hidden_names:
            self.fail(node, f"tool '{name}' is not exposed to this job")
        if name in DENIED_NAMES:
            self.fail(node, f"call to '{name}' is not allowed" if call else f"name '{name}' is not allowed")

    def attribute(self, node: ast.AST, attr: str) -> None:
        if attr.startswith("__"):
            self.fail(node, f"dunder attribute '{attr}' is not allowed")
        if attr.startswith("_"):
            self.fail(node, f"private attribute '{attr}' is not allowed")
        if attr in DENIED_ATTRIBUTES or attr.startswith("co_"):
            self.fail(node, f"attribute '{attr}' is not allowed")

    def module(self, node: ast.AST, name: str) -> None:
        allowed = self.policy.allowed_imports
        if name in allowed:
            return
        if name.split(".")[0] in allowed:
            self.fail(node, f"import '{name}' is not available in the sandbox")
        self.fail(node, f"import '{name}' is not allowed")

    def visit_Name(self, node: ast.Name) -> None:
        self.name(node, node.id)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name):
            self.name(node, node.func.id, call=True)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        v = node.value
        is_super = (
            isinstance(v, ast.Call)
            and isinstance(v.func, ast.Name)
            and v.func.id == "super"
            and not v.args
            and not v.keywords
        )
        if not (is_super and node.attr in SAFE_DUNDER_METHODS):
            self.attribute(node, node.attr)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.module(node, alias.name)
            self.name(node, alias.asname)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.fail(node, "relative imports are not allowed")
        self.module(node, node.module or "")
        for alias in node.names:
            if alias.name == "*":
                self.fail(node, "star imports are not allowed; import the names you need")
            if alias.name.startswith("_"):
                self.fail(node, f"import '{alias.name}' is not allowed")
            self.name(node, alias.asname or alias.name)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if not (id(node) in self._methods and node.name in SAFE_DUNDER_METHODS):
            self.name(node, node.name)
        self.generic_visit(node)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.name(node, node.name)
        if node.keywords:
            self.fail(node, "class keyword arguments (metaclass=...) are not allowed")
        self._methods.update(
            id(s) for s in node.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
        )
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.name(node, node.arg)
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None and node.arg.startswith("__"):
            self.fail(node, f"dunder name '{node.arg}' is not allowed")
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self.name(node, node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        for n in node.names:
            self.name(node, n)

    visit_Nonlocal = visit_Global

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self.name(node, node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self.name(node, node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.name(node, node.rest)
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            self.attribute(node, attr)
            if attr in GUARDED_ATTRIBUTES:  # a bound str.format/ABC.register would bypass its guard
                raise SandboxViolation(f"matching attribute {attr!r} is not allowed (line {node.lineno})")
        self.generic_visit(node)
