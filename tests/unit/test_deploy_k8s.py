"""deploy/kustomize and deploy/manifests: rendered, schema-valid for two Kubernetes versions, wired together.

(deploy/Dockerfile's steps are tried in tests/integration/test_deploy_image.py: they need root, clang and PyPI.)
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpftap.config import parse_config

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the dev extra is not installed")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# rendered file -> kustomization it comes from
VARIANTS = {
    "bpftap.yaml": "base",
    "bpftap-capabilities.yaml": "overlays/capabilities",
    "bpftap-with-collector.yaml": "overlays/with-collector",
}
K8S_VERSIONS = ("1.29.0", "1.37.0")


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "manifests" / name).read_text()) if d]


def by_kind(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs(name) if d["kind"] == kind and not d["metadata"]["name"].endswith("-collector")]
    return found


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (its built-in kustomize renders the base)")
@pytest.mark.parametrize("rendered", VARIANTS)
def test_manifests_are_the_rendered_kustomizations(rendered: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "kustomize" / VARIANTS[rendered])],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert out == (DEPLOY / "manifests" / rendered).read_text(), (
        f"deploy/manifests/{rendered} is stale: kubectl kustomize deploy/kustomize/{VARIANTS[rendered]} > it"
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("rendered", VARIANTS)
def test_manifests_validate_against_kubernetes_schemas(rendered: str, version: str) -> None:
    checked = set()
    for doc in docs(rendered):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by test_wiring
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"DaemonSet", "ConfigMap", "Service", "ClusterRole", "Namespace"} <= checked


def test_the_validator_rejects_a_broken_daemonset() -> None:
    ds = copy.deepcopy(by_kind("bpftap.yaml", "DaemonSet"))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[0], strict=True)


def test_wiring() -> None:
    ds = by_kind("bpftap.yaml", "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert pod["hostNetwork"] is True and {"operator": "Exists"} in pod["tolerations"]
    assert agent["securityContext"] == {"privileged": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert volumes[mounts["/sys/fs/bpf"]]["hostPath"]["path"] == "/sys/fs/bpf"
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent["resources"]["requests"] and agent["resources"]["limits"]
    # probes and --metrics use the container's metrics port
    (port,) = [p for p in agent["ports"] if p["name"] == "metrics"]
    assert f"--metrics=$(HOST_IP):{port['containerPort']}" in agent["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    # the config the ConfigMap mounts is a valid bpftap.yaml at the path the agent reads
    cm = by_kind("bpftap.yaml", "ConfigMap")
    assert volumes[mounts["/etc/bpftap"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert "--config=/etc/bpftap/bpftap.yaml" in agent["args"]
    assert parse_config(yaml.safe_load(cm["data"]["bpftap.yaml"]), "configmap").sources[0].pods is not None
    # Service -> agent pods; ServiceMonitor -> Service's port
    svc, sm = by_kind("bpftap.yaml", "Service"), by_kind("bpftap.yaml", "ServiceMonitor")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    # RBAC: the agent's account may watch pods
    role = by_kind("bpftap.yaml", "ClusterRole")
    assert pod["serviceAccountName"] == "bpftap" and "watch" in role["rules"][0]["verbs"]


def test_capabilities_overlay_and_collector() -> None:
    spec = by_kind("bpftap-capabilities.yaml", "DaemonSet")["spec"]["template"]["spec"]
    ctx = spec["containers"][0]["securityContext"]
    assert ctx["privileged"] is False and {"BPF", "NET_ADMIN", "PERFMON"} <= set(ctx["capabilities"]["add"])
    deployments = [d for d in docs("bpftap-with-collector.yaml") if d["kind"] == "Deployment"]
    assert [d["spec"]["template"]["spec"]["containers"][0]["args"][0] for d in deployments] == ["collect"]
    assert not [d for d in docs("bpftap.yaml") if d["kind"] == "Deployment"]
