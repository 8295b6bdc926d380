"""Tests of statek_bus.jobs."""
