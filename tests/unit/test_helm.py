"""deploy/helm/bpftap: rendered offline by Helm itself, schema-valid, and the same objects as deploy/kustomize.

The renderer is helm-python-sdk (dev extra): Helm v4's Go SDK built into a shared library
(libhelm_c) that the wheel carries, so no helm binary and no network. Its Chart.render is the
engine of `helm template` (values merged, values.schema.json checked, templates rendered); it
runs in a child process (helm_render.py) so the Go runtime stays out of the pytest process.

Rendered: the defaults and each documented values file, deploy/helm/bpftap/ci/*-values.yaml
(the directory chart-testing reads; README "Kubernetes" says what each is for).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpftap.config import parse_config

pytest.importorskip("helm_python", reason="the dev extra (helm-python-sdk) is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the dev extra is not installed")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "bpftap"
RELEASE = NAMESPACE = "bpftap"  # as the README's install command: the kustomize base's names
K8S_VERSIONS = ("1.29.0", "1.37.0")  # as test_deploy_k8s

EXAMPLES = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
COMBINATIONS: dict[str, dict[str, Any] | None] = {
    "default": None,
    **{name: yaml.safe_load(path.read_text()) for name, path in EXAMPLES.items()},
}

# Each kustomize variant (deploy/manifests/, kept equal to `kubectl kustomize` by test_deploy_k8s)
# and the values that give the same objects. The chart leaves out two of the base's objects by
# default, so these turn them on: the ServiceMonitor (the base has one; the chart's is off by
# default, as clusters without the Prometheus Operator refuse it) and the Namespace (Helm's way is
# `helm install -n NS --create-namespace`).
SAME_AS_BASE = {"serviceMonitor": {"enabled": True}, "namespace": {"create": True}}
KUSTOMIZE_EQUIVALENTS = {
    "bpftap.yaml": SAME_AS_BASE,
    "bpftap-capabilities.yaml": {**SAME_AS_BASE, "privileged": False},
    "bpftap-with-collector.yaml": {**SAME_AS_BASE, "collector": {"enabled": True}},
}

# Intentional differences from the kustomize manifests; everything else must be equal.
# 1. Helm's recommended labels on every object; `component` tells the agent's pods from the
#    collector's, so the selectors carry instance and component as well as name.
HELM_LABELS = {
    "helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by", "app.kubernetes.io/component",
}
# 2. kustomize puts part-of on the base's objects only (not on their pod templates, nor on the
#    component's collector); the chart puts it on every object and pod.
PART_OF = "app.kubernetes.io/part-of"
# 3. kustomize names the collector's pods bpftap-collector; the chart names them bpftap, with
#    component=collector (Helm's convention: one name per chart).
KUSTOMIZE_COLLECTOR_NAME = "bpftap-collector"
# 4. The chart spells out two defaults: imagePullPolicy: IfNotPresent (what kustomize's images
#    get) and the collector Service's type: ClusterIP.
# 5. kustomize's with-collector overlay sets no namespace, so the collector's Deployment and
#    Service land in the kubectl context's namespace; the chart puts them in the release's.
#    (Object metadata is compared below only by name, labels and namespace for the rest.)

BAD_VALUES = {
    "misspelt key": {"privilegd": False},
    "misspelt nested key": {"collector": {"enabeld": True}},
    "port as text": {"metrics": {"port": "9477/tcp"}},
    "port out of range": {"collector": {"vxlanPort": 70000}},
    "tolerations as a map": {"tolerations": {"operator": "Exists"}},
    "GRE needs a raw socket": {"collector": {"tunnels": ["gre"]}},
    "CAP_ prefix": {"capabilities": ["CAP_BPF"]},
    "config as a map": {"config": {"sources": []}},
    "bad pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "node selector value not text": {"nodeSelector": {"pool": 1}},
    "memory not a quantity": {"resources": {"limits": {"memory": "640 MB"}}},
}


@pytest.fixture(scope="module")
def helm_out() -> dict[str, Any]:
    """Everything rendered and linted, by one child process."""
    job = {
        "chart": str(CHART), "release": RELEASE, "namespace": NAMESPACE, "kube_version": f"v{K8S_VERSIONS[0]}",
        "render": {
            **{f"combination:{k}": v for k, v in COMBINATIONS.items()},
            **{f"kustomize:{k}": v for k, v in KUSTOMIZE_EQUIVALENTS.items()},
            **{f"bad:{k}": v for k, v in BAD_VALUES.items()},
            "no account name": {"serviceAccount": {"create": False}},
        },
        "lint": COMBINATIONS,
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("helm_render.py"))],
        input=json.dumps(job), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def manifests(helm_out: dict[str, Any], key: str) -> dict[str, str]:
    result = helm_out["render"][key]
    assert "manifests" in result, f"{key}: {result.get('error')}"
    return result["manifests"]


def objects(helm_out: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The rendered objects, as `helm template` prints them (NOTES.txt is not a manifest)."""
    docs = []
    for path, text in sorted(manifests(helm_out, key).items()):
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return copy.deepcopy(docs)


def index(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(found) == len(docs), "two objects of one kind and name"
    return found


def kustomize_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "manifests" / name).read_text()) if d]


def test_the_documented_combinations_are_rendered() -> None:
    assert set(EXAMPLES) == {"capabilities", "with-collector", "servicemonitor", "node-pool"}
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Kubernetes\n"):]
    for name in EXAMPLES:
        assert f"ci/{name}-values.yaml" in section, f"README Kubernetes does not document ci/{name}-values.yaml"


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_helm_lint_strict(helm_out: dict[str, Any], combination: str) -> None:
    report = helm_out["lint"][combination]
    assert report["errors"] == []
    # severity 1 is information ("icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


EXPECTED = {
    ("v1", "ServiceAccount", "bpftap"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "bpftap"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "bpftap"),
    ("v1", "ConfigMap", "bpftap-config"),
    ("apps/v1", "DaemonSet", "bpftap"),
    ("v1", "Service", "bpftap-metrics"),
}
EXTRA = {
    "default": (set(), set()),
    "capabilities": (set(), set()),
    "with-collector": ({("apps/v1", "Deployment", "bpftap-collector"), ("v1", "Service", "bpftap-collector")}, set()),
    "servicemonitor": ({("monitoring.coreos.com/v1", "ServiceMonitor", "bpftap")}, set()),
    # node-pool: the namespace made by the chart; the config from a ConfigMap of the user's
    "node-pool": ({("v1", "Namespace", "bpftap")}, {("v1", "ConfigMap", "bpftap-config")}),
}


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_objects_rendered(helm_out: dict[str, Any], combination: str) -> None:
    added, removed = EXTRA[combination]
    docs = objects(helm_out, f"combination:{combination}")
    assert {(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs} == (EXPECTED | added) - removed
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_validates_against_kubernetes_schemas(helm_out: dict[str, Any], combination: str, version: str) -> None:
    for doc in objects(helm_out, f"combination:{combination}"):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: its wiring is checked in test_wiring
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_wiring(helm_out: dict[str, Any], combination: str) -> None:
    values = COMBINATIONS[combination] or {}
    found = index(objects(helm_out, f"combination:{combination}"))
    ds = found["DaemonSet", "bpftap"]
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    # the node's network namespace and bpffs, as the kustomize base (which has no hostPID either)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet" and "hostPID" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/run/bpftap"):
        assert volumes[mounts[path]]["hostPath"] == {"path": path, "type": "DirectoryOrCreate"}
    ctx = agent["securityContext"]
    if values.get("privileged", True):
        assert ctx == {"privileged": True}
    else:
        assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert {"BPF", "NET_ADMIN", "PERFMON"} <= set(ctx["capabilities"]["add"])
    assert agent["image"].startswith(values.get("image", {}).get("repository", "ghcr.io/bpftap/bpftap") + ":")
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    (port,) = [p for p in agent["ports"] if p["name"] == "metrics"]
    assert f"--metrics=$(HOST_IP):{port['containerPort']}" in agent["args"]
    assert "--config=/etc/bpftap/bpftap.yaml" in agent["args"] and "--keep-attached" in agent["args"]
    extra = values.get("extraArgs", [])
    assert agent["args"][len(agent["args"]) - len(extra):] == extra
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert pod.get("nodeSelector") == values.get("nodeSelector")
    assert pod["tolerations"] == values.get("tolerations", [{"operator": "Exists"}])
    # config: the chart's ConfigMap, a valid bpftap.yaml, or the user's
    config_map = volumes[mounts["/etc/bpftap"]]["configMap"]["name"]
    if "existingConfigMap" in values:
        assert config_map == values["existingConfigMap"]
    else:
        data = found["ConfigMap", config_map]["data"]["bpftap.yaml"]
        assert parse_config(yaml.safe_load(data), "configmap").sources[0].pods is not None
    # the account may watch pods
    account = pod["serviceAccountName"]
    assert ("ServiceAccount", account) in found
    binding = found["ClusterRoleBinding", "bpftap"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert "watch" in found["ClusterRole", binding["roleRef"]["name"]]["rules"][0]["verbs"]
    # the metrics Service selects the agents, not the collector; the ServiceMonitor scrapes it
    svc = found["Service", "bpftap-metrics"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if ("ServiceMonitor", "bpftap") in found:
        sm = found["ServiceMonitor", "bpftap"]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
        assert values["serviceMonitor"]["labels"].items() <= sm["metadata"]["labels"].items()
    if ("Deployment", "bpftap-collector") in found:
        collector = found["Deployment", "bpftap-collector"]
        collector_labels = collector["spec"]["template"]["metadata"]["labels"]
        assert not svc["spec"]["selector"].items() <= collector_labels.items()
        csvc = found["Service", "bpftap-collector"]
        assert csvc["spec"]["selector"].items() <= collector_labels.items()
        (box,) = collector["spec"]["template"]["spec"]["containers"]
        assert box["args"][0] == "collect"
        assert {p["targetPort"] for p in csvc["spec"]["ports"]} == {p["name"] for p in box["ports"]}
    if ("Namespace", NAMESPACE) in found:
        assert found["Namespace", NAMESPACE]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def _labels(labels: dict[str, str], collector_name: bool) -> dict[str, str]:
    out = {k: v for k, v in labels.items() if k not in HELM_LABELS and k != PART_OF}
    if collector_name and out.get("app.kubernetes.io/name") == KUSTOMIZE_COLLECTOR_NAME:
        out["app.kubernetes.io/name"] = "bpftap"
    return out


def normalise(doc: dict[str, Any], from_kustomize: bool) -> dict[str, Any]:
    """The object less the intentional differences listed above; metadata is compared apart."""
    doc = copy.deepcopy(doc)
    meta = doc.pop("metadata")
    spec = doc.get("spec", {})
    if doc["kind"] == "Service":
        spec["selector"] = _labels(spec["selector"], from_kustomize)
        if not from_kustomize and spec.get("type") == "ClusterIP":
            del spec["type"]
    for holder in (spec.get("selector"), spec.get("template", {}).get("metadata")):
        if holder:
            for key in ("matchLabels", "labels"):
                if key in holder:
                    holder[key] = _labels(holder[key], from_kustomize)
    for container in spec.get("template", {}).get("spec", {}).get("containers", []):
        if not from_kustomize and container.get("imagePullPolicy") == "IfNotPresent":
            del container["imagePullPolicy"]
    return {"name": meta["name"], **doc}


@pytest.mark.parametrize("rendered", KUSTOMIZE_EQUIVALENTS)
def test_same_objects_as_kustomize(helm_out: dict[str, Any], rendered: str) -> None:
    ours = index(objects(helm_out, f"kustomize:{rendered}"))
    theirs = index(kustomize_docs(rendered))
    assert set(ours) == set(theirs)
    for key, kdoc in theirs.items():
        hdoc = ours[key]
        assert normalise(hdoc, False) == normalise(kdoc, True), key
        # metadata: the chart's labels include kustomize's (modulo the differences above)
        assert _labels(kdoc["metadata"].get("labels", {}), True).items() <= hdoc["metadata"]["labels"].items(), key
        if "namespace" in kdoc["metadata"]:
            assert hdoc["metadata"]["namespace"] == kdoc["metadata"]["namespace"], key
        elif key[0] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert rendered == "bpftap-with-collector.yaml" and key[1] == "bpftap-collector", key  # difference 5


def test_default_daemonset_is_the_kustomize_base(helm_out: dict[str, Any]) -> None:
    """The chart's defaults, not SAME_AS_BASE: the DaemonSet does not depend on those two switches."""
    ours = index(objects(helm_out, "combination:default"))["DaemonSet", "bpftap"]
    (theirs,) = [d for d in kustomize_docs("bpftap.yaml") if d["kind"] == "DaemonSet"]
    assert normalise(ours, False) == normalise(theirs, True)
    assert ours["metadata"]["namespace"] == theirs["metadata"]["namespace"]


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_before_rendering(helm_out: dict[str, Any], case: str) -> None:
    kind, message = helm_out["render"][f"bad:{case}"]["error"]
    assert kind == "HelmValuesError" and "schema" in message


def test_a_missing_account_name_is_refused(helm_out: dict[str, Any]) -> None:
    kind, message = helm_out["render"]["no account name"]["error"]
    assert kind == "HelmRenderError" and "serviceAccount.name" in message


def test_notes(helm_out: dict[str, Any]) -> None:
    default = manifests(helm_out, "combination:default")["bpftap/templates/NOTES.txt"]
    assert "kubectl logs -n bpftap ds/bpftap" in default and "Collector" not in default
    assert "pod-security.kubernetes.io/enforce=privileged" in default
    collector = manifests(helm_out, "combination:with-collector")["bpftap/templates/NOTES.txt"]
    assert "svc -n bpftap bpftap-collector" in collector
    capabilities = manifests(helm_out, "combination:capabilities")["bpftap/templates/NOTES.txt"]
    assert "not privileged, with CAP_BPF, CAP_NET_ADMIN" in capabilities


def test_values_file_documents_every_key() -> None:
    """values.yaml and values.schema.json name the same keys (the schema refuses any other)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(tree: dict[str, Any], props: dict[str, Any], prefix: str = "") -> None:
        assert set(tree) == set(props) - {"global"}, prefix or "top level"
        for k, v in tree.items():
            sub = props[k]
            if isinstance(v, dict) and sub.get("additionalProperties") is False:
                keys(v, sub["properties"], f"{prefix}{k}.")

    keys(values, schema["properties"])
