"""The sandbox: where model-written code runs, and what stops it when the model is hostile.

The model reads untrusted input (a webhook event, an email, a document), so a prompt injection
makes it an attacker; the sandbox assumes exactly that. Layers, outermost first:

1. **A worker process per step** (:mod:`statek_bus.runtime.procrunner`, :mod:`statek_bus.runtime.worker`,
   the protocol in :mod:`~statek_bus.sandbox.protocol`). A fork server started with an empty
   environment forks one worker per step; it runs that step and exits, so no interpreter state
   (``Fraction.register(str)``, a patched shim) reaches another step or job. Tools stay in the
   executor and cross as calls; values cross as tagged JSON (application classes become stand-ins
   with the same name and fields; futures and job handles are resolved by the executor). A
   worker that passes its deadline is killed; one that dies is an error line in its own job.
2. **Operating-system layers** in each worker (:mod:`~statek_bus.sandbox.isolation`): rlimits,
   another uid, network and user namespaces, ``no_new_privs``, not dumpable, seccomp.
3. **Restricted mode** in the worker (:mod:`~statek_bus.sandbox.restricted`: static check, run-time
   guards, instrumentation, side-effect-free replay), kept as defence in depth.

Approaches tried, and why each was kept or dropped (measured on a 2-core Firecracker VM, root):

* *Threads in the executor, restricted mode only* (the first runner, now ``code_runner =
  "in-process"``). Failed against a red team: one C call holds the GIL past every deadline tick
  (``sum(range(10**12))``, ``re`` backtracking, ``10**(2*10**9)``), nothing bounds memory, deep
  ``map()`` nesting segfaults the executor, and language-level holes (a ``str`` subclass lying to
  ``attrgetter``, ``super()`` around ``str.format``, string annotations evaluated by
  ``typing.get_type_hints``) became code execution next to the provider keys. The holes are fixed
  (``tests/sandbox/test_sandbox_escapes.py``), but a language sandbox alone cannot hold.
* *A long-lived worker pool reset between jobs.* Rejected: there is no reliable reset of an
  interpreter (ABC registries, caches, module state), and the red team's cross-job attack was
  exactly such state.
* *A fresh interpreter per step* (``subprocess`` + imports): ~700 ms of start-up per step. Rejected.
* *A fork server, a fresh fork per step* (kept): a fork of the warm 40 MB server costs ~3 ms here
  and a lock-down ~1.3 ms; the per-step boundary is ~5 ms against ~0.2 ms in-process
  (``python -m bench sandbox``). Workers are forked ahead so the cost is mostly off the step's
  path; the fork server's rate (one core) bounds steps with code to a few hundred per second.
* *Two fork servers* (forks on both cores): no gain measured (a thousand parent/child jobs took
  33 s either way; 8 steps in flight 4.0 against 4.3 ms a step): the steps are bound by the CPU
  of the whole mesh on two cores, not by the fork rate. Dropped.
* *A smaller fork server*: started without the package front door (which imports the client and
  NATS), 26 MB instead of 40 MB, a fork ~2.7 ms instead of ~4 ms. Kept.
* *A network namespace per worker*: +2.7 ms per step (creation and teardown). Replaced by one
  namespace for the fork server, which every worker is born in.
* *seccomp through libseccomp per worker*: ~1-2 ms to build the filter each time. Replaced by
  compiling it once in the fork server and loading the BPF with one ``prctl`` per worker.

Which layers hold where (``statek.executor.status`` → ``sandbox``, and the executor's start-up
log, report them for the machine at hand):

==================  =============================  ==========================================
layer               measured here (root, 6.x)       expected in a Kubernetes pod (non-root, no
                                                    CAP_SYS_ADMIN, RuntimeDefault seccomp)
==================  =============================  ==========================================
process + rlimits   on                              on
uid ``nobody``      on                              off (cannot setuid): same uid as executor
netns               on                              off (``unshare`` refused by the runtime's
                                                    default profile): seccomp still refuses
                                                    ``socket``, so there is no network
userns              on                              usually off (same reason)
no_new_privs        on                              on
not dumpable        on (and the executor itself)    on: a same-uid worker cannot read
                                                    ``/proc/<executor>/environ`` or ptrace it
seccomp             on (pyseccomp + libseccomp2)    on (filters stack under no_new_privs)
==================  =============================  ==========================================

In a pod, files the executor's uid can read (mounted NATS credentials) stay readable to a worker
that escapes restricted mode: run executors under a gVisor ``RuntimeClass``, mount secrets to a
path only an init step reads, or use a separate uid with ``runAsUser`` per container.
"""
