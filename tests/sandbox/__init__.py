"""Tests of statek_bus.sandbox."""
