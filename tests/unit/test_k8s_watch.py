"""The Kubernetes pod watch against a recorded stream of API events, built from the client's own models.

The stream goes through the real `kubernetes.watch.Watch` (JSON lines in, V1Pod
objects out, a 410 ERROR turned into a re-list), so only the HTTP transport
and the route lookup are faked.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest

kubernetes = pytest.importorskip("kubernetes", reason="the k8s extra is not installed")
from kubernetes.client import ApiClient, V1ListMeta, V1ObjectMeta, V1Pod, V1PodList, V1PodSpec, V1PodStatus  # noqa: E402
from kubernetes.watch import Watch  # noqa: E402

from bpftap.agent.k8s import PodIndex, PodWatch  # noqa: E402
from bpftap.config import PodSelector  # noqa: E402

NODE = "node-a"
WEB = PodSelector(namespace="shop", labels=(("app", "web"),))
# the fake node's routes: pod IP -> host-side veth
ROUTES = {"198.18.20.1": ("cali1", 11), "198.18.20.2": ("cali2", 12), "198.18.20.3": ("cali3", 13),
          "198.18.20.9": ("cali9", 19), "2001:db8:20::4": ("cali4", 14)}


def pod(name: str, ip: str | None, app: str = "web", ns: str = "shop", version: str = "1", **kw: Any) -> V1Pod:
    status = V1PodStatus(phase=kw.pop("phase", "Running" if ip else "Pending"), pod_ip=ip)
    meta = V1ObjectMeta(name=name, namespace=ns, uid=f"uid-{ns}-{name}", labels={"app": app},
                        resource_version=version, deletion_timestamp=kw.pop("deleting", None))
    return V1Pod(metadata=meta, spec=V1PodSpec(containers=[], node_name=NODE, **kw), status=status)


def lookup(ip: str, ipr: Any) -> tuple[str, int] | None:
    return ROUTES.get(ip)


def names(watch_or_index: Any) -> list[str]:
    if isinstance(watch_or_index, PodWatch):
        return sorted(i.ifname for i in watch_or_index.host_ifaces(WEB, None))
    return [p.name for p in watch_or_index.select(WEB)]


def test_index_follows_add_modify_delete_and_resync() -> None:
    watch = PodWatch(api=None, node=NODE, watch_factory=Watch, lookup=lookup)
    idx = watch.index
    idx.apply("ADDED", pod("web-1", "198.18.20.1"))
    idx.apply("ADDED", pod("web-2", None))  # scheduled, no IP yet
    idx.apply("ADDED", pod("db-1", "198.18.20.9", app="db"))  # another app
    idx.apply("ADDED", pod("web-x", "198.18.20.9", ns="other"))  # another namespace
    idx.apply("ADDED", pod("web-h", "198.18.20.3", host_network=True))  # the node's own IP: never
    assert names(watch) == ["cali1"]
    idx.apply("MODIFIED", pod("web-2", "198.18.20.2", version="2"))
    idx.apply("ADDED", pod("web-6", "2001:db8:20::4"))
    assert names(watch) == ["cali1", "cali2", "cali4"]
    idx.apply("MODIFIED", pod("web-1", "198.18.20.1", deleting=datetime.datetime(2026, 1, 1)))  # terminating
    idx.apply("DELETED", pod("web-6", "2001:db8:20::4"))
    idx.apply("MODIFIED", pod("web-2", "198.18.20.2", phase="Succeeded"))
    assert names(watch) == []
    idx.replace([pod("web-3", "198.18.20.3"), pod("web-7", "198.18.20.77")])  # no route to .77 (yet)
    assert names(idx) == ["web-3", "web-7"] and names(watch) == ["cali3"]


def test_selector_namespace_only_and_labels_only() -> None:
    idx = PodIndex()
    idx.apply("ADDED", pod("a", "198.18.20.1"))
    idx.apply("ADDED", pod("b", "198.18.20.2", ns="other"))
    idx.apply("ADDED", pod("c", "198.18.20.3", app="db"))
    assert [p.name for p in idx.select(PodSelector(namespace="shop"))] == ["a", "c"]
    assert sorted(p.name for p in idx.select(PodSelector(labels=(("app", "web"),)))) == ["a", "b"]


class Response:
    """What Watch reads from urllib3: JSON lines in chunks that split lines, like the wire."""

    status = 200

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.data = "".join(json.dumps(e) + "\n" for e in events).encode()

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for i in range(0, len(self.data), 97):
            yield self.data[i : i + 97]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def event(kind: str, obj: V1Pod) -> dict[str, Any]:
    return {"type": kind, "object": ApiClient().sanitize_for_serialization(obj)}


GONE = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                    "reason": "Expired", "message": "too old resource version: 5 (9)"}}


class FakeCoreV1Api:
    """list_pod_for_all_namespaces from a recording: one list per call, one event stream per watch."""

    def __init__(self, lists: list[V1PodList], streams: list[list[dict[str, Any]]]) -> None:
        self.lists, self.streams, self.calls = lists, streams, []

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        """List pods.

        :rtype: V1PodList
        """
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            return Response(self.streams.pop(0))
        return self.lists.pop(0)


def podlist(version: str, *pods: V1Pod) -> V1PodList:
    return V1PodList(items=list(pods), metadata=V1ListMeta(resource_version=version))


def test_recorded_stream_through_the_real_watch_with_a_410_resync() -> None:
    api = FakeCoreV1Api(
        lists=[
            podlist("5", pod("web-1", "198.18.20.1"), pod("db-1", "198.18.20.9", app="db")),
            # after the 410: web-2 was deleted while nobody watched, web-3 came
            podlist("20", pod("web-1", "198.18.20.1"), pod("web-3", "198.18.20.3")),
        ],
        streams=[
            [
                event("ADDED", pod("web-2", None, version="6")),
                event("MODIFIED", pod("web-2", "198.18.20.2", version="7")),
                event("ADDED", pod("web-6", "2001:db8:20::4", version="8")),
                event("DELETED", pod("web-1", "198.18.20.1", version="9")),
                GONE,
            ],
        ],
    )
    seen: list[list[str]] = []
    watch = PodWatch(api, NODE, Watch, lookup=lookup)
    original = watch.index.apply

    def record(kind: str, obj: Any) -> None:
        assert isinstance(obj, V1Pod)  # the client deserialised the event into its model
        original(kind, obj)
        seen.append(names(watch))

    watch.index.apply = record  # type: ignore[method-assign]
    watch.run_once()
    assert seen == [["cali1"], ["cali1", "cali2"], ["cali1", "cali2", "cali4"], ["cali2", "cali4"]]
    assert names(watch) == ["cali2", "cali4"]
    watch.relist()  # the loop's next round starts with a list: the resync
    assert names(watch) == ["cali1", "cali3"]
    # every call asked for this node's pods only; the watch resumed from the list's version
    assert {c["field_selector"] for c in api.calls} == {f"spec.nodeName={NODE}"}
    assert api.calls[1]["watch"] is True and api.calls[1]["resource_version"] == "5"


def test_from_environment_needs_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from bpftap.errors import ConfigError

    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(ConfigError, match=r"bpftap\.yaml: sources: .* needs NODE_NAME"):
        PodWatch.from_environment("bpftap.yaml")
