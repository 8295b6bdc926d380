"""Python's cyclic garbage collector, timed, in a process started with this folder on ``PYTHONPATH``.

``python -m bench.profile --waits --gc`` starts its executor so (nothing else loads it; the sandbox's
fork server starts with an empty environment and does not). Every 0.5 s the collections so far
and the thread CPU seconds they took, per generation, go to ``$STATEK_BENCH_GC_FILE`` as JSON.
``$STATEK_BENCH_GC_THRESHOLD`` (optional, for trying a setting): 4 s after the start,
``gc.collect(); gc.freeze(); gc.set_threshold(N, 10, 10)``.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from typing import Any

_FILE = os.environ.get("STATEK_BENCH_GC_FILE")
_started = [0.0]
_stats: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.thread_time()
    else:
        entry = _stats[info["generation"]]
        entry[0] += 1
        entry[1] += time.thread_time() - _started[0]


def _report() -> None:
    threshold = os.environ.get("STATEK_BENCH_GC_THRESHOLD")
    if threshold:
        time.sleep(4.0)
        gc.collect()
        gc.freeze()
        gc.set_threshold(int(threshold), 10, 10)
    while _FILE:
        time.sleep(0.5)
        with open(_FILE + ".tmp", "w") as f:
            json.dump(_stats, f)
        os.replace(_FILE + ".tmp", _FILE)


if _FILE:
    gc.callbacks.append(_timed)
    threading.Thread(target=_report, name="bench-gc-probe", daemon=True).start()
