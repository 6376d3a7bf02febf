"""Pod sources in the config (`pods:` instead of `interface:`), and the config-file watch behind ConfigMap reloads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bpftap.agent.configwatch import ConfigWatch
from bpftap.config import Direction, InvalidConfigError, PodSelector, Source, parse_config


def parse(*sources: Any) -> tuple[Source, ...]:
    return parse_config({"sources": list(sources)}, "bpftap.yaml").sources


def test_pod_sources_parse() -> None:
    assert parse({"pods": {"netns": "web-*"}, "direction": "ingress"}) == (
        Source("", Direction.INGRESS, PodSelector(netns="web-*")),
    )
    assert parse({"pods": {"namespace": "shop", "labels": {"app": "web", "tier": "front"}}}) == (
        Source(pods=PodSelector(namespace="shop", labels=(("app", "web"), ("tier", "front")))),
    )
    assert parse({"interface": "eth0"}, {"pods": {"labels": {"app": "db"}}})[1].pods == PodSelector(
        labels=(("app", "db"),)
    )
    assert PodSelector(namespace="shop", labels=(("app", "web"),)).describe() == "pods shop/app=web"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({}, "bpftap.yaml: sources[0]: missing required field 'interface' (or 'pods' to select pods)"),
        ({"interface": "eth0", "pods": {"netns": "a"}},
         "bpftap.yaml: sources[0].pods: give either interface or pods, not both"),
        ({"pods": "web-*"},
         "bpftap.yaml: sources[0].pods: expected a mapping with netns, or namespace and labels, "
         "got the string 'web-*'"),
        ({"pods": {}},
         "bpftap.yaml: sources[0].pods: expected a mapping with netns, or namespace and labels, got a mapping"),
        ({"pods": {"netns": "a", "namespace": "b"}},
         "sources[0].pods: netns selects namespaces by name; it cannot be combined"),
        ({"pods": {"netns": "a/b"}}, "sources[0].pods: netns: expected a name or glob of /run/netns (no '/')"),
        ({"pods": {"namespce": "shop"}}, "sources[0].pods: unknown key 'namespce'; did you mean 'namespace'?"),
        ({"pods": {"namespace": "Shop"}}, "sources[0].pods: namespace: 'Shop' is not a Kubernetes namespace name"),
        ({"pods": {"labels": ["app=web"]}}, "sources[0].pods: labels: expected a mapping of label to value"),
        ({"pods": {"labels": {"app": "a b"}}}, "sources[0].pods: labels: 'app': 'a b' is not a label value"),
        ({"pods": {"labels": {}}}, "sources[0].pods: give netns, or namespace and/or labels"),
    ],
)
def test_pod_source_mistakes(source: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError) as err:
        parse(source)
    assert message in str(err.value)


def test_attach_where() -> None:
    assert parse({"pods": {"netns": "web-*"}})[0].attach == "host"
    assert parse({"pods": {"netns": "web-*"}, "attach": "inside"})[0].attach == "inside"
    assert parse({"pods": {"netns": "web-*"}, "attach": "Auto"})[0].attach == "auto"
    assert parse({"pods": {"labels": {"app": "db"}}, "attach": "host"})[0].attach == "host"
    assert parse({"pods": {"labels": {"app": "db"}}, "attach": "inside"})[0].attach == "inside"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"interface": "eth0", "attach": "inside"},
         "bpftap.yaml: sources[0].attach: only pod sources have a choice of where to attach"),
        ({"pods": {"netns": "a"}, "attach": "outside"}, "bpftap.yaml: sources[0].attach: unknown attach 'outside'"),
    ],
)
def test_attach_mistakes(source: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError) as err:
        parse(source)
    assert message in str(err.value)


def test_same_pod_selector_twice() -> None:
    with pytest.raises(InvalidConfigError, match=r"sources\[1\].pods: 'netns a' is already used by sources\[0\]"):
        parse({"pods": {"netns": "a"}}, {"pods": {"netns": "a"}})


def test_config_watch_sees_edits_and_configmap_swaps(tmp_path: Path) -> None:
    # a ConfigMap volume: bpftap.yaml -> ..data/bpftap.yaml, ..data -> a timestamped directory
    for gen in ("v1", "v2"):
        (tmp_path / gen).mkdir()
        (tmp_path / gen / "bpftap.yaml").write_text(f"# {gen}\n")
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/bpftap.yaml", tmp_path / "bpftap.yaml")
    watch = ConfigWatch(str(tmp_path / "bpftap.yaml"))
    assert not watch.changed()
    os.symlink("v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # kubelet's atomic swap
    assert watch.changed() and not watch.changed()
    (tmp_path / "v2" / "bpftap.yaml").write_text("# v2, edited in place and longer\n")
    assert watch.changed()
    os.unlink(tmp_path / "..data")  # mid-swap: missing is not a change
    assert not watch.changed()


class _Links:
    """An IPRoute whose link lookups fail as told."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def link(self, *args: Any, **kw: Any) -> Any:
        raise self.error


def test_a_vanished_peer_is_no_host_side_but_a_bug_is_not_swallowed() -> None:
    import errno

    from pyroute2.netlink.exceptions import NetlinkError

    from bpftap.agent.pods import host_side

    assert host_side(3, 4, _Links(NetlinkError(errno.ENODEV, "No such device"))) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        host_side(3, 4, _Links(TypeError("a bug")))  # type: ignore[arg-type]


def test_no_bpffs_and_none_can_be_made_is_an_error_naming_the_path(tmp_path: Path) -> None:
    from bpftap.bpf.pins import ensure_bpffs
    from bpftap.errors import BpftapError

    (tmp_path / "file").write_text("")
    with pytest.raises(BpftapError, match=f"no bpffs at {tmp_path}/file/bpf, and it cannot be made: Not a directory"):
        ensure_bpffs(str(tmp_path / "file" / "bpf"))
