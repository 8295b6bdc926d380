"""The Kubernetes manifests: rendered as kustomize would, validated against the API schemas, and
checked for what keeps a pod safe and observable (probes, security context, writable /tmp)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from statek_bus.mesh.permissions import helm_users, role
from statek_bus.wire.subjects import WORK_CONSUMER_PREFIX, WORK_STREAM

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
SERVICES = ("submission", "executor", "state", "provider")
_CLUSTER_SCOPED = {"Namespace"}


def render() -> list[dict[str, Any]]:
    """The kustomization's output: namespace, generated ConfigMap (hash-suffixed), images applied."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [d for r in kust["resources"] for d in yaml.safe_load_all((K8S / r).read_text()) if d]
    names: dict[str, str] = {}
    for gen in kust.get("configMapGenerator", []):
        data = dict(item.split("=", 1) for item in gen["literals"])
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        names[gen["name"]] = f"{gen['name']}-{digest}"
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": names[gen["name"]]}, "data": data}
        )
    for gen in kust.get("secretGenerator", []):
        if "files" in gen:  # generated, git-ignored files (nkey seeds): one key per file name
            keys = [Path(f).name for f in gen["files"]]
            digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:10]
        else:
            (env,) = gen["envs"]
            path = K8S / env if (K8S / env).exists() else K8S / f"{env}.example"
            lines = path.read_text().splitlines() if path.exists() else []
            keys = [ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")]
            digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:10]
        plain = gen.get("options", {}).get("disableNameSuffixHash")
        names[gen["name"]] = gen["name"] if plain else f"{gen['name']}-{digest}"
        meta = {"name": names[gen["name"]]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta,
                "type": "Opaque",
                "data": dict.fromkeys(keys, ""),
            }
        )
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in kust.get("images", [])}
    for doc in docs:
        if doc["kind"] not in _CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = kust["namespace"]
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            c["image"] = images.get(c["image"], c["image"])
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                if ref is not None:
                    ref["name"] = names.get(ref["name"], ref["name"])
        for vol in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "secret" in vol:
                vol["secret"]["secretName"] = names.get(
                    vol["secret"]["secretName"], vol["secret"]["secretName"]
                )
    return docs


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render() if d["kind"] == "Deployment"}


# KEDA's ScaledObject is a custom resource (no schema in kubernetes-validate): its fields are
# checked by test_executors_autoscale_on_the_work_backlog instead.
_CORE = [d for d in render() if not d["apiVersion"].startswith("keda.sh/")]


@pytest.mark.parametrize("doc", _CORE, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_resource_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("service", SERVICES)
def test_each_deployment_probes_health_and_runs_locked_down(service: str) -> None:
    pod = _deployments()[f"statek-{service}"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "health")
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "health"}, probe
    config = next(d for d in render() if d["kind"] == "ConfigMap")["data"]
    assert config["STATEK_HEALTH_PORT"] == str(port)
    sc = c["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert pod["automountServiceAccountToken"] is False
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert c["image"] == "statek-bus:0.1.0"


def test_only_the_provider_gets_the_llm_keys_as_files_and_its_grace_covers_a_paid_call() -> None:
    deps = _deployments()
    secret = next(d for d in render() if d["kind"] == "Secret")["metadata"]["name"]
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert not any("secretRef" in src for src in c.get("envFrom", [])), name  # never as env vars
        mounted = any(v.get("secret", {}).get("secretName") == secret for v in pod.get("volumes", []))
        assert mounted == (name == "statek-provider"), name
    provider = deps["statek-provider"]["spec"]["template"]["spec"]
    (c,) = provider["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    keys = next(m for m in c["volumeMounts"] if m["name"] == "llm-keys")
    assert keys["readOnly"] and env["STATEK_LLM_KEYS_DIR"] == keys["mountPath"]
    drain = float(env["STATEK_DRAIN_TIMEOUT"])
    assert drain > 120.0  # longer than the default llm_timeout
    assert provider["terminationGracePeriodSeconds"] > drain


def test_the_namespace_enforces_restricted_pods_and_traffic_is_denied_by_default() -> None:
    (ns,) = [d for d in render() if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policies = {d["metadata"]["name"]: d["spec"] for d in render() if d["kind"] == "NetworkPolicy"}
    deny = policies["statek-default-deny"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    leaving = [p for p in policies.values() if any("to" not in rule for rule in p.get("egress", []))]
    assert [p["podSelector"]["matchLabels"] for p in leaving] == [
        {"app.kubernetes.io/name": "statek-provider"}
    ]
    assert not (K8S / "secret-llm.yaml").exists()  # a committed empty Secret would blank real keys


def test_a_settings_change_renames_the_config_map_so_pods_roll() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [g["name"] for g in kust["configMapGenerator"]] == ["statek-config"]
    assert not (K8S / "configmap.yaml").exists()


def test_executors_autoscale_on_the_work_backlog() -> None:
    (so,) = [d for d in render() if d["kind"] == "ScaledObject"]
    assert so["spec"]["scaleTargetRef"]["name"] == "statek-executor"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == WORK_STREAM
    assert trigger["metadata"]["consumer"].startswith(WORK_CONSUMER_PREFIX)  # one consumer per agent
    assert trigger["metadata"]["account"] == "STATEK"
    config = next(d for d in render() if d["kind"] == "ConfigMap")["data"]
    assert int(trigger["metadata"]["lagThreshold"]) <= int(config["STATEK_MAX_CONCURRENCY"])


def test_the_nats_values_ship_the_permission_matrix() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "nats-values.yaml").read_text())
    account = values["config"]["merge"]["accounts"]["STATEK"]
    assert account == {"jetstream": "enabled", "users": helm_users()}
    env = values["container"]["env"]
    for user in helm_users():
        variable = str(user["nkey"]).removeprefix("<< $").removesuffix(" >>")
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "statek-nats-users", "key": variable}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_mounts_only_its_own_nats_identity(service: str) -> None:
    pod = _deployments()[f"statek-{service}"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    (creds,) = [v for v in pod["volumes"] if v["name"] == "nats-creds"]
    assert creds["secret"]["items"] == [{"key": f"{service}.nk", "path": f"{service}.nk"}]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "nats-creds")
    assert mount["readOnly"] and env["STATEK_CREDS_FILE"] == f"{mount['mountPath']}/{service}.nk"
    assert env["STATEK_INBOX_PREFIX"] == role(service).inbox_prefix
    config = next(d for d in render() if d["kind"] == "ConfigMap")["data"]
    assert config["STATEK_PROVISION"] == "verify"  # services only verify; the Job provisions


def test_a_job_provisions_storage_as_the_administrator() -> None:
    (job,) = [d for d in render() if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["provision"]
    env = {e["name"]: e["value"] for e in c["env"]}
    (creds,) = [v for v in pod["volumes"] if v["name"] == "nats-creds"]
    assert creds["secret"]["items"] == [{"key": "admin.nk", "path": "admin.nk"}]
    assert env["STATEK_CREDS_FILE"].endswith("/admin.nk")
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
