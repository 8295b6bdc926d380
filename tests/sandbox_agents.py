"""Agents for the process-sandbox tests (``--agents tests.sandbox_agents:AGENTS``): hostile model code
on the scripted model, each script a hostile step followed by ``exit("after")``."""

from __future__ import annotations

from statek_bus.authoring.agents import Agent, SupervisedAgent
from statek_bus.authoring.tools import tool

AGENTS_SPEC = "tests.sandbox_agents:AGENTS"


@tool(hidden=True)
def secret_tool() -> str:
    """A hidden tool: trusted warmup code only."""
    return "classified"


@tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    print("add called", a, b)
    return a + b


def hostile(role: str, code: str, then: str = 'exit("after")') -> SupervisedAgent:
    """A scripted agent whose first reply is ``code``."""
    return SupervisedAgent(
        role, "You write Python.", [add, secret_tool], {"MODEL": f"scripted/{role}", "SCRIPT": [code, then]}
    )


DOS = {
    "c_loop": "sum(range(10**12))",
    "memory": "s = 'x' * (4 * 2**30)",
    "regex": "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')",
    "c_stack": "x = iter([1])\nfor i in range(200000):\n    x = map(abs, x)\nnext(x)",
    "big_pow": "10 ** (2 * 10**9)",
}
"""Denials of service: each ends its own job with an error line."""

# Restricted mode off (the OS layers are all that is left): what a full escape would then see.
PROBE = """
import os, socket, subprocess
out = []
out.append('env ' + ','.join(sorted(os.environ)))
for pid in (epid, os.getppid()):
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            out.append('read %d bytes' % len(f.read()))
    except OSError as e:
        out.append('environ refused: ' + type(e).__name__)
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    out.append('socket opened')
except OSError as e:
    out.append('socket refused: ' + type(e).__name__)
try:
    subprocess.run(['true'])
    out.append('process started')
except OSError as e:
    out.append('process refused: ' + type(e).__name__)
try:
    os.fork()
    out.append('forked')
except OSError as e:
    out.append('fork refused: ' + type(e).__name__)
try:
    open('written.txt', 'w').write('x')
    out.append('file written')
except OSError as e:
    out.append('write refused: ' + type(e).__name__)
print('\\n'.join(out))
"""

UNRESTRICTED = [
    hostile("sb_probe", PROBE),
    hostile("sb_register", "import fractions\nfractions.Fraction.register(str)\nprint(isinstance('a', fractions.Fraction))"),
    hostile("sb_isinstance", "import fractions\nprint(isinstance('a', fractions.Fraction))"),
    SupervisedAgent(
        "sb_where",
        "You write Python.",
        metadata={"MODEL": "scripted/sb_where", "SCRIPT": ["import os\nprint('model', os.getpid())\nexit('ok')"]},
        warmup="import os\nprint('warmup', os.getpid())\nw = 1",
    ),
]
"""Run by an executor with ``restricted_mode`` off."""

ESCAPES = {
    "attrgetter": (
        "class S(str):\n    calls = [0]\n    def split(self, sep=None, maxsplit=-1):\n"
        "        self.calls[0] += 1\n        return ['name'] if self.calls[0] <= 1 else str.split(str(self), sep)\n"
        "import operator\nprint(operator.attrgetter(S('name.__class__'))(docstr))"
    ),
    "update_wrapper": (
        "import functools, json\ndef w():\n    pass\n"
        "functools.update_wrapper(w, json.dumps, assigned=(), updated=('__globals__',))\nprint(codecs)"
    ),
    "annotations": "def f(x: \"print('EVALUATED') or 1\"):\n    pass\ndocstr(f)\nbrief(f)",
    "super_format": "class S(str):\n    pass\nprint(super(S, S('{0.__class__}')).format(docstr))",
    "template_cache": (
        "class S(str):\n    def __hash__(self):\n        return hash('{}')\n"
        "    def __eq__(self, other):\n        return True\n"
        "S('{}').format(1)\nprint(S('{0.__class__}').format(1))"
    ),
    "register": "import fractions\nfractions.Fraction.register(str)",
    "repeat": "import collections, itertools\ncollections.deque(itertools.repeat(1, 10**10), maxlen=0)",
    "tool_object": "print(add.name)\nadd.fn",
}
"""The red team's escapes, through the mesh with the process runner (and restricted mode on)."""

REPLAY = SupervisedAgent(
    "sb_replay",
    "You write Python.",
    [add, secret_tool],
    {
        "MODEL": "scripted/sb_replay",
        "SCRIPT": [
            "# \x0c\x0c\x0c\x0c\ns = '''\n@(lambda f: f)\ndef ok():\n    return secret_tool()\n'''\n"
            "@(lambda f: f)\ndef ok():\n    return 100000000000000000000\n",
            "print(ok())",
            'exit("after")',
        ],
    },
)
TOOLS = hostile(
    "sb_tools",
    "n = 5\nprint(add(n, 1))\nprint(add('n', 2))\ndocstr(add)\ns = sleep(0)\nprint(s)",
)
QUICK = hostile("sb_quick", 'exit("quick")', 'exit("never")')

AGENTS: list[Agent] = [
    *(hostile(f"sb_dos_{k}", v) for k, v in DOS.items()),
    *(hostile(f"sb_esc_{k}", v) for k, v in ESCAPES.items()),
    *UNRESTRICTED,
    REPLAY,
    TOOLS,
    QUICK,
]
