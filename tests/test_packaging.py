"""Packaging a user can live with (issue 19, point 2): litellm is the ``[litellm]`` extra, the
provider serves the scripted model without it and names the extra for any other model, and the
version has one source."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from statek_bus import __version__
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.launcher import NatsServer
from statek_bus.wire.errors import BadRequestError
from statek_bus.wire.messages import CompleteReply
from statek_bus.wire.subjects import LLM_COMPLETE, SERVICE_VERSION
from tests.support.extras import without_litellm

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_litellm_is_an_extra_that_dev_and_the_image_include() -> None:
    project = PYPROJECT["project"]
    assert not any(d.startswith("litellm") for d in project["dependencies"])
    assert [d for d in project["optional-dependencies"]["litellm"] if d.startswith("litellm")]
    dev_extras = {
        extra.strip()
        for d in project["optional-dependencies"]["dev"]
        if d.startswith("statek-bus[")
        for extra in d.removeprefix("statek-bus[").rstrip("]").split(",")
    }
    assert {"litellm", "otel"} <= dev_extras
    # the image installs exactly deploy/requirements.lock (tests/test_image.py), which pins litellm
    assert "\nlitellm==" in (ROOT / "deploy" / "requirements.lock").read_text()


def test_the_version_has_one_source() -> None:
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert __version__ == SERVICE_VERSION == metadata.version("statek-bus")


async def test_provider_without_litellm_serves_scripted_and_names_the_extra(nats_server: NatsServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "statek_bus", "serve", "provider", "--nats-url", nats_server.url],
        cwd=ROOT,
        env=without_litellm(),
        stderr=subprocess.PIPE,
        text=True,
    )
    settings = Settings.from_env({}, nats_url=nats_server.url, request_timeout=10.0)
    try:
        async with AsyncStatekClient(settings=settings) as client:
            scripted = {
                "model": "scripted/x",
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"SCRIPT": ["hello"]},
            }
            deadline = time.monotonic() + 60
            while True:  # until the provider answers (other tests' providers may share the server)
                try:
                    reply = await client.request(LLM_COMPLETE, scripted, CompleteReply)
                    break
                except Exception:
                    assert proc.poll() is None and time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            assert reply.text == "hello"
            real = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(20):  # until this provider (not one with litellm) answers
                try:
                    await client.request(LLM_COMPLETE, real, CompleteReply)
                except BadRequestError as exc:
                    if "statek-bus[litellm]" in str(exc):
                        assert exc.field == "$.model"
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("no provider answered with the missing-extra error")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    assert "statek-bus[litellm]" in err  # one log line at startup says what is missing
