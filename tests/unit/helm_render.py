"""Render and lint deploy/helm/bpftap with Helm's Go code (helm-python-sdk), in a process of its own.

test_helm.py runs this as a child: loading libhelm_c starts the Go runtime, whose threads and
signal handlers would otherwise stay in the pytest process for the rest of the suite.

stdin: {"chart": DIR, "release": NAME, "namespace": NS,
        "render": {key: values or null}, "lint": {key: values or null}, "kube_version": "v1.29.0"}
stdout: {"versions": [helm_c, helm_sdk],
         "render": {key: {"manifests": {template path: text}} or {"error": [exception class, message]}},
         "lint": {key: lint report}}
"""

from __future__ import annotations

import json
import sys

import helm_python as helm


def main() -> None:
    job = json.load(sys.stdin)
    out = {"versions": [helm.helm_c_version(), helm.helm_sdk_version()], "render": {}, "lint": {}}
    with helm.Chart.load(job["chart"]) as chart:
        for key, values in job["render"].items():
            try:
                manifests = chart.render(values, name=job["release"], namespace=job["namespace"], is_install=True)
                out["render"][key] = {"manifests": manifests}
            except helm.HelmError as e:
                out["render"][key] = {"error": [type(e).__name__, str(e)]}
    for key, values in job["lint"].items():
        out["lint"][key] = helm.lint(job["chart"], values, strict=True, namespace=job["namespace"],
                                     kube_version=job["kube_version"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
