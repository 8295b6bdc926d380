"""Agents of the executor-pool tests: three pools, each serving agents of its own.

Each job exits with the name of the pool whose executor ran its last step (the ``TEST_POOL``
variable the test gives that executor process), so a test sees where every job ran.
"""

from __future__ import annotations

import os
from typing import Any

from tests.agents_fixture import scripted


def pool() -> str:
    """The name of the executor pool running this step."""
    return os.environ.get("TEST_POOL", "?")


def _agent(role: str) -> Any:
    return scripted(role, [f'exit("{role} on " + pool())'], tools=[pool])


HEAVY = [_agent("p_heavy")]
"""The heavy pool's agents."""
LIGHT = [_agent("p_light"), _agent("p_light_too")]
"""The light pool's agents."""
LATE = [_agent("p_late")]
"""Agents whose pool comes and goes."""
