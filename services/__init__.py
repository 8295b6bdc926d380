"""The four services: one thin module each, wiring the statek_bus library into a micro service.

Each module exposes ``build(ctx) -> ServiceSpec`` (a :data:`statek_bus.service.ServiceFactory`).
They are imported only by the process that runs them, so litellm loads only in the provider.
"""

from __future__ import annotations

import importlib

from statek_bus.service import ServiceFactory

__all__ = ["load_factory"]


def load_factory(kind: str) -> ServiceFactory:
    """The factory of service ``kind`` (``submission``, ``executor``, ``state``, ``provider``)."""
    module = importlib.import_module(f"services.{kind}")
    factory: ServiceFactory = module.build
    return factory
