"""Tests of statek_bus.ops."""
