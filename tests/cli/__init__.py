"""Tests of statek_bus.cli."""
