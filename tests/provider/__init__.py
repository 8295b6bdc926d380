"""Tests of statek_bus.provider."""
