"""The red team's escapes, each closed at its root in the restricted policy (defence in depth:
these run in-process, with no worker process around them). One test per escape; each one
succeeded on the code before the fix."""

from __future__ import annotations

import collections.abc
import fractions
import typing
from typing import Any

import pytest

from statek_bus.authoring.futures import REGISTRY, StepRuntime
from statek_bus.authoring.tools import SYSTEM_TOOLS, JobContext, tool
from statek_bus.runtime.coderunner import ExecRequest, ExecUnit, SandboxSession, execute
from statek_bus.sandbox.restricted import SandboxPolicy
from statek_bus.sandbox.runtime import SandboxViolation, write_guard


@tool(hidden=True)
def secret_tool() -> str:
    """A hidden tool: trusted warmup code only."""
    return "classified"


def _run(code: str, ws: Any = None, *, deadline: float = 5.0) -> Any:
    env = StepRuntime("job1", None, None, None)
    ctx = JobContext(job_id="job1", agent="a", params={}, namespace={}, extras={"env": env})
    tools = {t.name: t for t in (*SYSTEM_TOOLS, secret_tool)}
    session = SandboxSession(
        policy=SandboxPolicy(hidden_names=frozenset({"secret_tool"})),
        trusted_policy=SandboxPolicy(),
        tools=tools,
        job=ctx,
        workspace=ws,
        shared_vars={},
        registry=REGISTRY,
    )
    unit = ExecUnit(kind="code", code=code, site="0.0")
    return execute(ExecRequest(session=session, units=[unit], deadline_seconds=deadline))


def _console(result: Any) -> list[str]:
    return [line for u in result.units for line in u.console]


# A str subclass whose split() answers "real" to the checks and the truth afterwards.
_LYING_STR = """
class S(str):
    calls = [0]
    def split(self, sep=None, maxsplit=-1):
        self.calls[0] += 1
        return ['real'] if self.calls[0] <= LIES else str.split(str(self), sep)
"""


def test_attrgetter_checks_and_uses_the_same_plain_string() -> None:
    code = _LYING_STR.replace("LIES", "1") + "import operator\nprint(operator.attrgetter(S('real.__class__'))(1))"
    out = _console(_run(code))
    assert out[-1].startswith("SandboxViolation: attribute '__class__'"), out


def test_methodcaller_checks_and_uses_the_same_plain_string() -> None:
    code = _LYING_STR.replace("LIES", "2") + "import operator\nprint(operator.methodcaller(S('real.__reduce__'))(1))"
    out = _console(_run(code))
    assert out[-1].startswith("SandboxViolation: attribute '__reduce__'"), out


def test_update_wrapper_cannot_merge_a_host_functions_globals() -> None:
    code = (
        "import functools, json\ndef w():\n    pass\n"
        "functools.update_wrapper(w, json.dumps, assigned=(), updated=('__globals__',))\nprint(codecs)"
    )
    out = _console(_run(code))
    assert out[-1].startswith("SandboxViolation: update_wrapper"), out


def test_wraps_cannot_assign_arbitrary_attributes() -> None:
    code = "import functools, json\n@functools.wraps(json.dumps, assigned=('__globals__',))\ndef w():\n    pass"
    out = _console(_run(code))
    assert out[-1].startswith("SandboxViolation: update_wrapper"), out


def test_docstr_does_not_evaluate_string_annotations() -> None:
    code = "def f(x: \"print('EVALUATED') or 1\") -> 'int':\n    '''Doc.'''\n    return x\ndocstr(f)"
    out = _console(_run(code))
    assert "EVALUATED" not in out, out
    assert out[-1].startswith("def f(x: \"print('EVALUATED') or 1\") -> 'int':"), out  # as written


def test_brief_of_a_class_does_not_evaluate_method_annotations() -> None:
    code = "class C:\n    def m(self, x: \"print('EVALUATED')\"):\n        pass\nbrief(C)\ndocstr(C)"
    out = _console(_run(code))
    assert "EVALUATED" not in out and out[0].startswith("class C:"), out


def test_super_around_a_str_does_not_bypass_the_format_guard() -> None:
    code = "class S(str):\n    pass\nt = S('{0.__class__}')\nprint(super(S, t).format(1))"
    out = _console(_run(code))
    assert out[-1].startswith("SandboxViolation: format field"), out


def test_a_str_subclass_cannot_hit_a_cached_safe_template() -> None:
    code = (
        "class S(str):\n    def __hash__(self):\n        return hash('{}')\n"
        "    def __eq__(self, other):\n        return True\n"
        "S('{}').format(1)\nprint(S('{0.__class__}').format(1))"
    )
    out = _console(_run(code))
    assert out[-1].startswith("SandboxViolation: format field"), out


# The comment's form feeds shift str.splitlines() four lines against the AST: the old code stored
# the def hidden in the string literal as the definition of ``ok``, and replayed it under the
# trusted policy, where it could call the hidden tool.
_SHIFTED = (
    "# \x0c\x0c\x0c\x0c\n"
    "s = '''\n@(lambda f: f)\ndef ok():\n    return secret_tool()\n'''\n"
    "@(lambda f: f)\ndef ok():\n    return 100000000000000000000\n"
)


def test_form_feeds_cannot_make_a_string_literal_a_stored_definition() -> None:
    first = _run(_SHIFTED)
    assert first.units[0].error is None, _console(first)
    stored = [d.source for d in first.workspace.definitions]
    assert stored == ["@(lambda f: f)\ndef ok():\n    return 100000000000000000000"], stored
    second = _run("print(ok())", first.workspace)
    assert _console(second) == ["100000000000000000000"]


def test_unicode_line_separators_keep_definitions_aligned() -> None:
    first = _run("# a\u2028b\u2029c\x1c\n@(lambda f: f)\ndef g():\n    return 7\n")
    assert [d.source for d in first.workspace.definitions] == ["@(lambda f: f)\ndef g():\n    return 7"]


def test_an_untrusted_definition_replays_under_the_untrusted_policy() -> None:
    first = _run("def f():\n    return 1\n")
    data = first.workspace
    data.definitions[0] = type(data.definitions[0])(names=["f"], source="def f():\n    return secret_tool()")
    second = _run("print(f())", data)
    assert any("secret_tool" in n for n in second.notes), second.notes
    assert "classified" not in _console(second)


def test_registering_with_a_host_abc_is_refused() -> None:
    for code in (
        "import fractions\nfractions.Fraction.register(str)",
        "import fractions\nclass R(fractions.Fraction):\n    pass\nR.register(str)",
        "import fractions, operator\noperator.methodcaller('register', str)(fractions.Fraction)",
        "import fractions, operator\noperator.attrgetter('register')(fractions.Fraction)(str)",
    ):
        out = _console(_run(code))
        assert out[-1].startswith("SandboxViolation: cannot register"), (code, out)
    assert not issubclass(str, fractions.Fraction)


def test_a_model_abc_may_register_its_own_classes() -> None:
    out = _console(_run("class A:\n    def register(self, x):\n        return x\nprint(A().register(3))"))
    assert out == ["3"]


def test_a_counted_repeat_is_clocked() -> None:
    code = "import collections, itertools\ncollections.deque(itertools.repeat(1, 10**9), maxlen=0)"
    result = _run(code, deadline=0.3)
    assert result.units[0].timeout, _console(result)


def test_tools_in_an_in_process_namespace_expose_no_function() -> None:
    out = _console(_run("print(docstr.name)\ndocstr.fn"))
    assert out[0] == "docstr"
    assert out[-1].startswith("AttributeError"), out


def test_console_output_is_cut_with_a_note_and_the_error_still_shows() -> None:
    out = _console(_run("for i in range(30000):\n    print('line', i)\n1 / 0"))
    assert sum(len(line) for line in out) < 110_000
    assert "Warning: console output cut at 100000 characters" in out
    assert out[-2].startswith("ZeroDivisionError"), out[-3:]


def test_an_oversized_exit_status_is_the_steps_error() -> None:
    result = _run("exit('x' * 100_000)")
    assert not result.exited
    assert result.units[0].error == "ValueError: the exit status is 100002 bytes; the limit is 65536"


def test_a_tool_handle_shared_by_every_job_cannot_be_changed_by_one() -> None:
    """One handle per tool serves every job of the process: no job may rebind or drop its parts."""
    attempts = [
        "brief.x = 1",
        "brief._tool = None",
        "del brief._tool",
        "setattr(brief, '_tool', None)",
        "object.__setattr__(brief, '_tool', None)",
        "brief.__class__.__call__ = lambda *a: 'hijacked'",
        "vars(brief)['_tool'] = None",
    ]
    for code in attempts:
        out = _console(_run(code))
        refused = out[-1].split(":")[0] if out else ""
        assert refused in ("AttributeError", "SandboxViolation", "TypeError"), (code, out)
    out = _console(_run("print(brief, brief.name)\nbrief(panic)"))
    assert out[0] == "<tool brief> brief" and "panic" in out[1], out


def lookup(table: typing.Mapping[str, int], key: str) -> int:
    """Look ``key`` up in ``table``.

    Args:
        table: the table.
        key: the key.
    """
    return table[key]


def test_a_tools_type_hints_reach_model_code_as_text_only() -> None:
    """A ``typing.Mapping`` hint passes attribute writes on to ``collections.abc.Mapping``: reached
    through the handle, one job's model code rebound ``Mapping.get`` for the whole process."""
    before = collections.abc.Mapping.get
    env = StepRuntime("job1", None, None, None)
    ctx = JobContext(job_id="job1", agent="a", params={}, namespace={}, extras={"env": env})
    session = SandboxSession(
        policy=SandboxPolicy(),
        trusted_policy=SandboxPolicy(),
        tools={"lookup": tool(lookup)},
        job=ctx,
        workspace=None,
        shared_vars={},
        registry=REGISTRY,
    )
    code = "print(dict(lookup.hints))\nlookup.hints['table'].get = lambda self, k, d=None: 'pwned'"
    unit = ExecUnit(kind="code", code=code, site="0.0")
    out = _console(execute(ExecRequest(session=session, units=[unit], deadline_seconds=5.0)))
    assert out[0] == '{"table":"Mapping[str, int]","key":"str","return":"int"}', out
    assert out[-1].startswith(("AttributeError", "SandboxViolation")), out
    assert collections.abc.Mapping.get is before


def test_no_typing_object_takes_an_attribute_write() -> None:
    with pytest.raises(SandboxViolation, match="cannot set or delete attributes"):
        write_guard(typing.Mapping[str, int])
