"""``python -m statek_bus`` is the ``statek-bus`` command."""

from statek_bus.cli import main

raise SystemExit(main())
