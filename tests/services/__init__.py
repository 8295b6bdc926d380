"""Tests of the service processes as a whole (bad input, fuzzing)."""
