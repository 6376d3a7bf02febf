"""Pod selectors of `sources[].pods`: the model and its parser (used by bpftap.config.validate).

Two forms: `{netns: GLOB}` picks network namespaces by name (fnmatch over
/run/netns, as `ip netns list` shows them; the lab's stand-in for pods), and
`{namespace: NS, labels: {KEY: VALUE}}` picks Kubernetes pods on the agent's
node (see bpftap.agent.k8s).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from bpftap.config.values import _describe, _did_you_mean, _Invalid, shown


@dataclass(frozen=True)
class PodSelector:
    """Pods to mirror from: by network namespace name (`netns`, an fnmatch glob over
    /run/netns) or by Kubernetes `namespace` and `labels` (all must match).

    Exactly one of the two forms is set in a validated Config.
    """

    netns: str | None = None
    namespace: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """A short human form for logs: `netns web-*` or `pods default/app=web`."""
        if self.netns is not None:
            return f"netns {self.netns}"
        labels = ",".join(f"{k}={v}" for k, v in self.labels) or "all"
        return f"pods {self.namespace or '*'}/{labels}"


_POD_KEYS = ("netns", "namespace", "labels")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _pod_selector(value: object) -> PodSelector:
    """`{netns: GLOB}` or `{namespace: NS, labels: {KEY: VALUE}}`; raises _Invalid naming the key."""
    if not isinstance(value, Mapping) or not value:
        raise _Invalid(f"expected a mapping with netns, or namespace and labels, got {_describe(value)}")
    for key in value:
        if key not in _POD_KEYS:
            raise _Invalid(f"unknown key {shown(key)}{_did_you_mean(key, _POD_KEYS)}")
    if "netns" in value:
        if len(value) > 1:
            raise _Invalid("netns selects namespaces by name; it cannot be combined with namespace or labels")
        glob = value["netns"]
        if not isinstance(glob, str) or not glob or "/" in glob:
            raise _Invalid(f"netns: expected a name or glob of /run/netns (no '/'), got {_describe(glob)}")
        return PodSelector(netns=glob)
    namespace = value.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _K8S_NAME.match(namespace)):
        raise _Invalid(f"namespace: {shown(namespace)} is not a Kubernetes namespace name (lowercase, digits, '-')")
    labels = value.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise _Invalid(f"labels: expected a mapping of label to value, got {_describe(labels)}")
    for key, val in labels.items():
        if not isinstance(key, str) or not key or not isinstance(val, str) or not _LABEL_VALUE.match(val):
            raise _Invalid(f"labels: {shown(key)}: {shown(val)} is not a label value (a string, 63 characters at most)")
    if namespace is None and not labels:
        raise _Invalid("give netns, or namespace and/or labels")
    return PodSelector(namespace=namespace, labels=tuple(sorted(labels.items())))
