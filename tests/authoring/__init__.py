"""Tests of statek_bus.authoring."""
