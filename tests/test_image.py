"""The container image: its Dockerfile (multi-stage, base pinned by digest, hash-locked installs,
non-root, HEALTHCHECK on /readyz, OCI labels) and a lock that covers pyproject's dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
LOCK = (ROOT / "deploy" / "requirements.lock").read_text()
IMAGE_EXTRAS = ("litellm", "otel")  # what the image installs beside the package's own dependencies


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.splitlines() if not ln.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pins() -> dict[str, tuple[str, int]]:
    """Each locked package: its pinned version and how many hashes it carries."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", LOCK):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            pins[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return pins


def test_the_image_is_multi_stage_on_a_base_pinned_by_digest() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    froms = [a.split()[0] for k, a in steps if k == "FROM"]
    assert len(froms) >= 2 and " AS " in next(a for k, a in steps if k == "FROM").upper()
    for ref in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", resolved), ref


def test_dependencies_install_only_from_the_hash_locked_file() -> None:
    runs = [a for k, a in _instructions() if k == "RUN" and "pip install" in a]
    locked = [r for r in runs if "-r " in r]
    assert locked and all("--require-hashes" in r for r in locked)
    assert all("--no-deps" in r for r in runs)  # nothing resolved at build time outside the lock


def test_the_lock_pins_every_dependency_of_the_image_within_its_range_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"]]
    for extra in IMAGE_EXTRAS:
        wanted += project["project"]["optional-dependencies"][extra]
    wanted += tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = _pins()
    linux = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux"}
    for spec in wanted:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(linux):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in deploy/requirements.lock"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req.specifier}"
        assert hashes > 0, f"{req.name} has no hash"
    assert all(h > 0 for _, h in pins.values())


def test_it_runs_as_a_non_root_user_with_a_readiness_healthcheck_and_oci_labels() -> None:
    steps = _instructions()
    runtime = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]  # the final stage
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    (check,) = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert "/readyz" in check and "CMD" in check
    labels = " ".join(a for k, a in runtime if k == "LABEL")
    for key in ("title", "description", "version", "licenses", "source", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key
