"""Tests of statek_bus.mesh."""
