"""Bounds every request is held to at the edge, before any handler runs.

These are contract constants, not tunables: they appear in the JSON Schemas (``maxLength``) and in
the 400s that name the field, and every service enforces the same numbers. Why each exists:

- A user id or name ends up escaped (up to 12 characters per character, see
  :func:`~statek_bus.wire.subjects.token`) inside a subject or a KV key, and nats-server closes a
  connection whose protocol line exceeds 4 KiB (``maximum control line exceeded``), after which
  nats-py never reconnects. :data:`MAX_NAME_LENGTH` keeps any one id far below that; the services
  add tighter byte bounds where two ids share a subject.
- msgspec decodes nested JSON recursively, so a 2 KB body of 999 nested lists raises
  ``RecursionError`` out of ``decode()``; and the executor loads workspaces recursively too.
  :data:`MAX_JSON_DEPTH` is checked before decoding, so such a request is a 400 and anything a
  service accepts can be loaded everywhere.
- Error replies never echo unbounded input: the ``Nats-Service-Error`` header is cut to
  :data:`MAX_ERROR_TEXT` characters, the body's message to :data:`MAX_ERROR_MESSAGE` and its
  field path to :data:`MAX_ERROR_FIELD`.
- An id or name is logged (``%s``) and shown in terminals: :data:`NAME_PATTERN` keeps control
  characters out of every one, so none can forge a log line or reorder what a reader sees.
"""

from __future__ import annotations

__all__ = [
    "HANDLER_LOG_BYTES",
    "INBOX_DRAIN_MAX",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_SPECS",
    "MAX_CONTEXT_TEXT",
    "MAX_CONTEXT_VALUE_BYTES",
    "MAX_CONTEXT_VARS",
    "MAX_ERROR_FIELD",
    "MAX_ERROR_MESSAGE",
    "MAX_ERROR_TEXT",
    "MAX_EVENT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_KNOWLEDGE_BYTES",
    "MAX_KNOWLEDGE_FILES",
    "MAX_KNOWLEDGE_FILE_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_OPTION_TEXT",
    "MAX_PERM_CONTEXT_BYTES",
    "MAX_WARMUP_CODE",
    "MULTI_LAST_MAX",
    "NAME_FORBIDDEN",
    "NAME_PATTERN",
    "RECORD_HEADROOM",
]

MAX_NAME_LENGTH = 256
"""Most characters in any id or name of a request (job, batch, parent, state, task, agent, model)."""
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*(?![\s\S])"
r"""What every id or name of a request matches (Python and ECMA-262 alike; ``(?![\s\S])`` is the end:
Python's ``$`` would also pass a trailing newline): no character of :data:`NAME_FORBIDDEN`."""
NAME_FORBIDDEN = (
    "control characters (U+0000-U+001F, U+007F-U+009F), line or paragraph separators "
    "(U+2028, U+2029) or bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069)"
)
"""The characters :data:`NAME_PATTERN` refuses, as the 400 names them."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in a request body, the body's own object counting as 1."""
MAX_ERROR_TEXT = 512
"""Most characters of the ``Nats-Service-Error`` header (one line: control characters become spaces)."""
MAX_ERROR_MESSAGE = 4096
"""Most characters of the ``message`` of an error's JSON body (it may list, say, the known agents)."""
MAX_ERROR_FIELD = 200
"""Most characters of the JSON path an error's ``field`` names."""
MAX_WARMUP_CODE = 64 * 1024
"""Most characters of a job's own ``warmup_code`` (it is stored once, in the job's definition)."""
MAX_OPTION_TEXT = 1024
"""Most characters of a job's ``post_processing`` or ``extra_resources`` text."""

# Shared contexts hold model-written values that every job bound to them reads: each bound is on
# what one write may add, so no job can make a context unreadable or too large for its KV key.
MAX_CONTEXT_SPECS = 6
"""Most specifiers of one ``init_shared_context`` call (reads visit every subset: 63 keys at most)."""
MAX_CONTEXT_VALUE_BYTES = 16 * 1024
"""Largest encoded value of one shared-context variable."""
MAX_CONTEXT_TEXT = 1000
"""Most characters of a shared-context variable's description."""
MAX_CONTEXT_VARS = 256
"""Most variables in one shared context."""
MAX_CONTEXT_BYTES = 512 * 1024
"""Largest encoded shared context (one KV value)."""
MAX_PERM_CONTEXT_BYTES = 64 * 1024
"""Largest encoded persistent per-job context (``perm_ctx_set``), kept in the job record."""
MAX_EVENT_BYTES = 256 * 1024
"""Largest agent-queue event; a bigger one is acknowledged and dropped with a warning naming it."""
MAX_KNOWLEDGE_FILE_BYTES = 256 * 1024
"""Largest prompt file, warmup def, example or document published to ``statek_knowledge`` (one KV value,
well under the server's 1 MB ``max_payload``)."""
MAX_KNOWLEDGE_FILES = 2000
"""Most files in one published knowledge version (its manifest is one KV value too)."""
MAX_KNOWLEDGE_BYTES = 64 * 1024 * 1024
"""Most bytes of all the files of one knowledge version (every executor holds them in memory)."""
RECORD_HEADROOM = 4096
"""Bytes a job record keeps below the server's ``max_payload`` (headers, escaping): its size limit."""
HANDLER_LOG_BYTES = 256 * 1024
"""Most bytes of a handler job's chat log kept in its record: older turns leave it (each went out as
an event, and stays in the job log stream), so a handler that lives long never outgrows a record."""
INBOX_DRAIN_MAX = 1000
"""Most inbox items one step consumes; the rest wait for the job's next step."""
MULTI_LAST_MAX = 256
"""Subjects per ``multi_last`` direct get (the server refuses more than 1,024 results)."""
