"""The four services: one thin module each, wiring the statek_bus library into a micro service.

Installed as ``statek_bus.services`` (the repository keeps them in a top-level ``services/``
folder). Each module exposes ``build(ctx) -> ServiceSpec`` (a
:data:`statek_bus.mesh.service.ServiceFactory`), loaded by name with
:func:`statek_bus.mesh.service.load_service_factory` only in the process that runs it, so litellm
loads only in the provider.
"""
