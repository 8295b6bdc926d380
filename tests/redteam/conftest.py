"""The data-tier tests' runners fixture, for the red-team proofs of concept."""

from tests.runtime.test_data_tier import runners

__all__ = ["runners"]
