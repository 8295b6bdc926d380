"""statek-bus test suite (a package so subprocesses can import tests.support)."""
