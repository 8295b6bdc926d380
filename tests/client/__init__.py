"""Tests of statek_bus.client."""
