"""Tests of statek_bus.runtime."""
