"""Operating-system layers around a sandbox worker process, applied in the worker before model code.

Each layer is best effort and reported by name (``on``, or why it is off), so the executor can say
at start-up and in ``statek.executor.status`` what protects model code on this platform:

``rlimits``
    address space (``RLIMIT_AS``: the worker's size at fork plus the per-step memory limit), CPU
    seconds (``RLIMIT_CPU``), open files, no file writes (``RLIMIT_FSIZE`` 0), no core dumps, and
    no new processes (``RLIMIT_NPROC``, which binds only a non-root uid). Works for any user.
``uid``
    run as ``nobody`` (65534) when the executor is root: the worker cannot read files or
    ``/proc/<pid>/environ`` of the executor's uid. Needs root (not in a normal Kubernetes pod).
``netns`` / ``userns``
    ``unshare(CLONE_NEWNET)`` once in the fork server (no interfaces at all, not even loopback;
    workers are born in it) and ``CLONE_NEWUSER`` per worker (it has no capability in the
    executor's namespaces, so ``/proc/<executor pid>`` is closed to it even as the same uid). Root can always make a network
    namespace; an unprivileged user can only where unprivileged user namespaces are allowed (most
    container runtimes' default seccomp profile refuses ``unshare`` without ``CAP_SYS_ADMIN``).
``no_new_privs`` / ``not_dumpable``
    ``prctl(PR_SET_NO_NEW_PRIVS)`` (no setuid gain through exec) and ``PR_SET_DUMPABLE`` 0 (no
    ptrace attach, ``/proc/<pid>`` owned by root). Always available on Linux.
``seccomp``
    a filter (compiled once by ``pyseccomp`` over libseccomp, loaded per worker with one
    ``prctl``) refusing with ``EPERM``: ``execve``, sockets,
    ``ptrace``, ``process_vm_*``, ``fork``/``vfork``/``clone`` of a process (threads stay allowed),
    namespace and mount calls, ``bpf``, ``perf_event_open``, ``io_uring``, key management. Needs
    the library (``libseccomp2`` on Debian); stacking a filter is allowed unprivileged once
    ``no_new_privs`` is set, so it holds in a Kubernetes pod too.

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

__all__ = ["LAYERS", "Limits", "Prepared", "lock_down", "prepare", "protect_executor"]

LAYERS = ("rlimits", "uid", "netns", "userns", "no_new_privs", "not_dumpable", "seccomp")
"""Every layer :func:`lock_down` tries, in order."""

_PR_SET_DUMPABLE = 4
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_THREAD = 0x00010000
_NOBODY = 65534

_DENIED_SYSCALLS = tuple(
    ["execve", "execveat", "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev", "fork", "vfork", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "bpf", "perf_event_open", "io_uring_setup", "keyctl", "add_key", "request_key", "personality", "userfaultfd", "kexec_load", "init_module", "finit_module"])


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


def _rlimits(limits: Limits) -> str:
    try:
        if limits.memory_bytes:
            cap = _vm_size() + limits.memory_bytes
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


def _compile_seccomp() -> bytes | str:
    """The filter as a raw BPF program (built once, in the fork server), or why there is none."""
    sc = _SECCOMP
    if isinstance(sc, str):
        return sc
    try:
        f = sc.SyscallFilter(defaction=sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in _DENIED_SYSCALLS:
            try:
                f.add_rule(deny, name)
            except (RuntimeError, ValueError, OSError):  # not a syscall on this architecture
                continue
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # a process, not a thread
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags are behind a pointer: make libc use clone
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            return out.read()
    except Exception as exc:  # libseccomp reports failures as assorted exceptions
        return f"off: {exc}"


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

    seccomp: bytes | str
    """The compiled filter, or why there is none."""
    netns: str
    """The fork server's own network namespace (every worker is born in it): ``on`` or why not."""


def prepare() -> Prepared:
    """Run once in the fork server: compile the filter and enter an empty network namespace.

    A namespace per worker would cost its creation and teardown on every step; one for the fork
    server (which needs no network either) covers every worker it forks.
    """
    netns = _unshare(_CLONE_NEWNET) if os.geteuid() == 0 else _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    return Prepared(seccomp=_compile_seccomp() if _LIBC is not None else "off: not Linux", netns=netns)


def lock_down(limits: Limits, prepared: Prepared) -> dict[str, str]:
    """Apply every layer to the calling process (a freshly forked worker); layer → ``on``/why not.

    Order matters: limits while still privileged, then drop the uid, then a user namespace of its
    own, then the prctl flags, then seccomp (last: it refuses ``unshare``).
    """
    out: dict[str, str] = {}
    if _LIBC is not None:
        _prctl(_PR_SET_PDEATHSIG, 9)  # the fork server's death kills its workers
    out["rlimits"] = _rlimits(limits)
    out["netns"] = prepared.netns
    out["uid"] = _drop_uid()
    out["userns"] = _unshare(_CLONE_NEWUSER)
    out["no_new_privs"] = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    out["not_dumpable"] = _prctl(_PR_SET_DUMPABLE, 0)
    if isinstance(prepared.seccomp, str):
        out["seccomp"] = prepared.seccomp
    elif out["no_new_privs"] != "on":
        out["seccomp"] = "off: needs no_new_privs"
    else:
        out["seccomp"] = _load_seccomp(prepared.seccomp)
    return out


def protect_executor() -> str:
    """Make the calling process (the executor) not dumpable: same-uid processes cannot read its
    ``/proc/<pid>/environ`` or ptrace it. Returns ``on`` or why not."""
    return _prctl(_PR_SET_DUMPABLE, 0)
