"""What the CLI prints and the exit codes it returns: the part of the CLI that scripts rely on.

Reads print human-readable text by default and JSON with ``--json``; progress and diagnostics go
to stderr, so stdout stays what a script parses. Exit codes (also in the README):

====  ================================================================================
code  meaning
====  ================================================================================
0     success; for ``submit --wait`` and ``jobs watch``: the job ended DONE with no error
1     the command failed: an error reply, NATS unreachable, a service or server that would
      not start (one ``statek-bus: ...`` line on stderr)
2     bad usage: an unknown option, a malformed ``--var``/``--param`` (nothing was sent)
3     the job ended DONE with an error (a harness limit, the sandbox, the provider)
4     the job was cancelled
5     ``--timeout`` expired before the job was DONE (it keeps running)
130   interrupted (Ctrl-C or SIGTERM); a submitted job keeps running
====  ================================================================================
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from statek_bus.wire.messages import Job, JobStatus

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "UsageError",
    "explain",
    "job_exit_code",
    "print_json",
    "progress",
    "table",
]

EXIT_OK = 0
"""Success (a waited-for job ended DONE with no error)."""
EXIT_ERROR = 1
"""The command failed (error reply, NATS unreachable, launch failure)."""
EXIT_USAGE = 2
"""Bad usage; nothing was sent (argparse uses the same code)."""
EXIT_JOB_FAILED = 3
"""The job ended DONE with an error."""
EXIT_CANCELLED = 4
"""The job was cancelled."""
EXIT_TIMEOUT = 5
"""``--timeout`` expired before the job was DONE."""
EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C or SIGTERM."""

CANCELLED_PREFIX = "Cancelled: "
"""STATEK's exit status of a cancelled job starts with this."""


class UsageError(ValueError):
    """A command-line value that cannot be used; the CLI prints it and exits :data:`EXIT_USAGE`."""


def job_exit_code(job: Job) -> int:
    """The exit code a finished (or not yet finished) job means for ``--wait`` and ``jobs watch``."""
    if job.status is not JobStatus.DONE:
        return EXIT_TIMEOUT
    if isinstance(job.exit_status, str) and job.exit_status.startswith(CANCELLED_PREFIX):
        return EXIT_CANCELLED
    if job.error:
        return EXIT_JOB_FAILED
    return EXIT_OK


# STATEK's harness messages stay as they are in the job record; the console adds what they mean.
_HARNESS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"Maximum consecutive exceptions exceeded: (\d+)/(\d+)"),
        "the model's code raised an exception {0} times in a row; the limit is {1} "
        "(STATEK_MAX_CONSECUTIVE_EXCEPTIONS)",
    ),
    (
        re.compile(r"Maximum number of exceptions exceeded: (\d+)/(\d+)"),
        "the model's code raised {0} exceptions in this job; the limit is {1} (STATEK_MAX_EXCEPTIONS)",
    ),
    (
        re.compile(r"Maximum number of turns exceeded: (\d+)/(\d+)"),
        "the job needed LLM turn {0}; the limit is {1} turns (STATEK_MAX_TURNS)",
    ),
    (
        re.compile(r"Maximum token usage exceeded: (\d+)/(\d+)"),
        "the job used {0} tokens; its budget is {1} (STATEK_MAX_TOKEN_USAGE)",
    ),
]


def explain(error: str) -> str:
    """``error`` followed by what a STATEK harness message in it means, when it holds one."""
    for pattern, meaning in _HARNESS:
        found = pattern.search(error)
        if found:
            return f"{error} ({meaning.format(*found.groups())})"
    return error


def print_json(value: Any) -> None:
    """Print ``value`` (msgspec Structs included) as indented JSON on stdout."""
    print(json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False), flush=True)


def progress(text: str) -> None:
    """One progress line on stderr (stdout stays what scripts parse)."""
    print(text, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print ``rows`` as columns under ``headers``; the last column is never padded."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        line = "  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r))
        print(line.rstrip())
