"""Test-only support code (services and agents used by tests)."""
