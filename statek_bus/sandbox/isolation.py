"""Operating-system layers around the sandbox worker processes, applied before model code runs.

The layers are split by where they cost least. The fork server seals *itself* once
(:func:`seal_server`: every worker it forks inherits that), and each worker applies only what is
its own (:func:`lock_down`): forking a page of Python is expensive on a virtual machine (each first
write to a shared page is a copy fault), so every line a fresh worker does not run is time saved
on every step.

Each layer is best effort and reported by name (``on``, or why it is off), so the executor can say
at start-up and in ``statek.executor.status`` what protects model code on this platform:

``rlimits`` (per worker)
    address space (``RLIMIT_AS``: the worker's size at fork plus the per-step memory limit), CPU
    seconds (``RLIMIT_CPU``), open files, no file writes (``RLIMIT_FSIZE`` 0), no core dumps, and
    no new processes (``RLIMIT_NPROC``, which binds only a non-root uid). Works for any user.
``uid`` (fork server)
    run as ``nobody`` (65534) when the executor is root: the fork server and its workers cannot
    read files or ``/proc/<pid>/environ`` of the executor's uid. Needs root (not in a normal
    Kubernetes pod).
``netns`` / ``userns`` (fork server)
    ``unshare(CLONE_NEWNET)`` (no interfaces at all, not even loopback) and ``CLONE_NEWUSER`` (no
    capability in the executor's namespaces, so ``/proc/<executor pid>`` is closed even to the same
    uid); workers are born in both. Root can always make them; an unprivileged user only where
    unprivileged user namespaces are allowed (most container runtimes' default seccomp profile
    refuses ``unshare`` without ``CAP_SYS_ADMIN``).
``no_new_privs`` / ``not_dumpable`` (fork server, inherited)
    ``prctl(PR_SET_NO_NEW_PRIVS)`` (no setuid gain through exec) and ``PR_SET_DUMPABLE`` 0 (no
    ptrace attach, ``/proc/<pid>`` owned by root). Always available on Linux.
``seccomp`` (two stacked filters)
    the fork server's filter (compiled once by ``pyseccomp`` over libseccomp) refuses with
    ``EPERM``: ``execve``, sockets, ``ptrace``, ``process_vm_*``, ``pidfd_*``, namespace and mount
    calls, ``bpf``, ``perf_event_open``, ``io_uring``, key management. Each worker stacks a small
    filter of its own: no new process (``fork``/``vfork``/``clone`` without ``CLONE_THREAD``;
    threads stay allowed) and signals to itself only (``kill``, ``tgkill``, ``rt_*sigqueueinfo``
    naming another pid are refused; ``tkill`` always), so a worker can end its own step but never
    a sibling step, the fork server or the executor, even running as the same uid. The worker's
    filter is compiled once with a placeholder pid that each worker patches to its own. Stacking
    a filter is allowed unprivileged once ``no_new_privs`` is set, so it holds in a Kubernetes pod.

:func:`protect_executor` makes the *executor* itself not dumpable, so even a worker running as the
same uid (a Kubernetes pod) cannot read ``/proc/<executor pid>/environ`` or attach to it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LAYERS",
    "Limits",
    "Prepared",
    "address_space_cap",
    "fork_bare",
    "lock_down",
    "prepare",
    "protect_executor",
    "seal_server",
]

LAYERS = ("rlimits", "uid", "netns", "userns", "no_new_privs", "not_dumpable", "seccomp")
"""Every layer :func:`seal_server` and :func:`lock_down` try."""

_PR_SET_DUMPABLE = 4
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_THREAD = 0x00010000
_NOBODY = 65534

_SERVER_DENIED = (
    "execve", "execveat", "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "tkill", "unshare", "setns", "mount", "umount2",
    "pivot_root", "chroot", "bpf", "perf_event_open", "io_uring_setup", "keyctl", "add_key",
    "request_key", "personality", "userfaultfd", "kexec_load", "init_module", "finit_module",
)  # fmt: skip
"""Refused to the fork server and so to every worker (it needs none of them once sealed)."""

_WORKER_DENIED = ("fork", "vfork")
"""Refused to a worker on top of :data:`_SERVER_DENIED` (with ``clone`` of a process, ``clone3``)."""

_SELF_SIGNALS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
"""Signal calls whose first argument (a pid) must be the worker's own."""

_PID_PLACEHOLDER = 0x5EC0_77ED
"""The pid compiled into the worker filter; each worker writes its own pid over it."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one worker (one step)."""

    memory_bytes: int = 512 * 1024 * 1024
    """Address space the step may add to the worker's size at fork (0: no limit)."""
    cpu_seconds: int = 11
    """CPU seconds of the worker (0: no limit); past it the kernel kills it (``SIGXCPU``)."""
    open_files: int = 64
    """Highest file descriptor number + 1."""


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _prctl(option: int, value: int) -> str:
    if _LIBC is None:
        return "off: not Linux"
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        return f"off: {os.strerror(ctypes.get_errno())}"
    return "on"


def _unshare(flags: int) -> str:
    if _LIBC is None:
        return "off: not Linux"
    if _LIBC.unshare(flags) != 0:
        return f"off: {os.strerror(ctypes.get_errno())}"
    return "on"


def _vm_size() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _rlimits(limits: Limits, cap: int) -> str:
    try:
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        if limits.cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (OSError, ValueError) as exc:
        return f"off: {exc}"
    return "on"


def _drop_uid() -> str:
    if os.geteuid() != 0:
        return "off: not root (runs as the executor's uid)"
    try:
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
    except OSError as exc:
        return f"off: {exc}"
    return "on"


def _seccomp_module() -> Any:
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # OSError: libseccomp itself is missing
        return f"off: pyseccomp unavailable ({exc})"
    return pyseccomp


_SECCOMP = _seccomp_module() if _LIBC is not None else "off: not Linux"


def _compile(denied: tuple[str, ...], worker: bool) -> bytes | str:
    """A filter as a raw BPF program, or why there is none (libseccomp's own message)."""
    sc = _SECCOMP
    if isinstance(sc, str):
        return sc
    try:
        f = sc.SyscallFilter(defaction=sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in denied:
            try:
                f.add_rule(deny, name)
            except (RuntimeError, ValueError, OSError):  # not a syscall on this architecture
                continue
        if worker:
            f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # a process, not a thread
            f.add_rule(
                sc.ERRNO(errno.ENOSYS), "clone3"
            )  # its flags are behind a pointer: make libc use clone
            for name in _SELF_SIGNALS:
                f.add_rule(deny, name, sc.Arg(0, sc.NE, _PID_PLACEHOLDER))
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            program = out.read()
    except Exception as exc:  # libseccomp reports failures as assorted exceptions
        return f"off: {exc}"
    if worker and _PID_PLACEHOLDER.to_bytes(4, sys.byteorder) not in program:  # libseccomp shares
        return "off: the worker filter holds no pid comparison"  # one comparison among the calls
    return program


def _for_pid(program: bytes, pid: int) -> bytes:
    """The worker filter with its own pid in place of the placeholder."""
    return program.replace(_PID_PLACEHOLDER.to_bytes(4, sys.byteorder), pid.to_bytes(4, sys.byteorder))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_seccomp(program: bytes) -> str:
    """Install a compiled filter (``no_new_privs`` must be set): one ``prctl``, no library work."""
    if _LIBC is None:
        return "off: not Linux"
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _LIBC.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        return f"off: {os.strerror(ctypes.get_errno())}"
    return "on"


@dataclass(frozen=True)
class Prepared:
    """What the fork server sets up once for all its workers."""

    server_filter: bytes | str
    """The fork server's compiled filter, or why there is none."""
    worker_filter: bytes | str
    """Each worker's filter with the pid placeholder, or why there is none."""
    netns: str
    """The fork server's own network namespace (every worker is born in it): ``on`` or why not."""
    userns: str = ""
    """``on`` when the user namespace was made with the network one (an unprivileged fork server)."""


def prepare() -> Prepared:
    """Run once in the fork server: compile both filters and enter an empty network namespace.

    A namespace per worker would cost its creation and teardown on every step; one for the fork
    server (which needs no network either) covers every worker it forks.
    """
    root = os.geteuid() == 0
    netns = _unshare(_CLONE_NEWNET) if root else _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    userns = "on" if not root and netns == "on" else ""
    if _LIBC is None:
        return Prepared(server_filter="off: not Linux", worker_filter="off: not Linux", netns=netns)
    return Prepared(
        server_filter=_compile(_SERVER_DENIED, worker=False),
        worker_filter=_compile(_WORKER_DENIED, worker=True),
        netns=netns,
        userns=userns,
    )


def seal_server(prepared: Prepared) -> dict[str, str]:
    """Apply the fork server's layers to itself, once, after its imports; layer → ``on``/why not.

    Order matters: drop the uid while still privileged, then a user namespace of its own (unless
    :func:`prepare` made one with the network namespace), then the prctl flags, then the filter
    (last: it refuses ``unshare``).
    """
    out: dict[str, str] = {"netns": prepared.netns, "uid": _drop_uid()}
    out["userns"] = prepared.userns or _unshare(_CLONE_NEWUSER)
    out["no_new_privs"] = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    out["not_dumpable"] = _prctl(_PR_SET_DUMPABLE, 0)
    if isinstance(prepared.server_filter, str):
        out["seccomp"] = prepared.server_filter
    elif out["no_new_privs"] != "on":
        out["seccomp"] = "off: needs no_new_privs"
    else:
        out["seccomp"] = _load_seccomp(prepared.server_filter)
    return out


def address_space_cap(limits: Limits) -> int:
    """``RLIMIT_AS`` for a worker forked now (0: none): the fork server's size plus the step's allowance.

    Read in the fork server before each fork, so the worker opens no file to learn it.
    """
    return _vm_size() + limits.memory_bytes if limits.memory_bytes else 0


def lock_down(limits: Limits, prepared: Prepared, cap: int, sealed: dict[str, str]) -> dict[str, str]:
    """Apply a worker's own layers to the calling process (a freshly forked worker, whose fork server
    was sealed with ``sealed``); layer → ``on``/why not."""
    if _LIBC is not None:
        _prctl(_PR_SET_PDEATHSIG, 9)  # the fork server's death kills its workers
    out = dict(sealed)
    out["rlimits"] = _rlimits(limits, cap)
    if sealed.get("seccomp") == "on":  # else it says why the fork server has none
        if isinstance(prepared.worker_filter, str):
            out["seccomp"] = f"partial: no worker filter ({prepared.worker_filter})"
        else:
            out["seccomp"] = _load_seccomp(_for_pid(prepared.worker_filter, os.getpid()))
    return out


def fork_bare() -> int:
    """``fork(2)`` without the interpreter's at-fork handlers; 0 in the child, its pid in the parent.

    ``os.fork`` runs Python code in the child for every module that registered a handler
    (``threading`` re-creates its locks, ``logging`` each handler's, ``random`` reseeds): in a
    fork server with those modules loaded that is ~180 first writes to shared pages, each a page
    copy, on every fork. A single-threaded process holds no lock at the fork, so the child needs
    none of it; the one handler whose effect matters, the reseed (sibling workers must not draw
    the same random numbers), is done here. With another thread alive, or off Linux, this is
    ``os.fork``.
    """
    import threading

    if _LIBC is None or threading.active_count() != 1:
        return os.fork()
    pid = int(_LIBC.fork())
    if pid < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    if pid == 0 and (rnd := sys.modules.get("random")) is not None:
        rnd.seed()
    return pid


def protect_executor() -> str:
    """Make the calling process (the executor) not dumpable: same-uid processes cannot read its
    ``/proc/<pid>/environ`` or ptrace it. Returns ``on`` or why not."""
    return _prctl(_PR_SET_DUMPABLE, 0)
