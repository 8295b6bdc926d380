"""Tests of statek_bus.states."""
