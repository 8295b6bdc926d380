"""Restricted mode: the policy, the static check, instrumentation, run-time guards and definition replay."""
