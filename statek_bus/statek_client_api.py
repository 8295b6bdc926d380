"""``StatekClientAPI`` at the import path STATEK's users know: ``statek_bus.statek_client_api``.

The implementation lives in :mod:`statek_bus.client.statek_client_api`; this module only keeps the
seed-compatible path working.
"""

from __future__ import annotations

from statek_bus.client.statek_client_api import StatekClientAPI

__all__ = ["StatekClientAPI"]
