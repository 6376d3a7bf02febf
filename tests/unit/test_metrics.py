"""The metrics collector over a fake tables object: names, labels, values, the text format and the HTTP endpoint."""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpftap import __version__, abi
from bpftap.agent.metrics import (
    HEADLINE,
    Layout,
    MirrorCollector,
    RuleLabel,
    SessionLabel,
    format_address,
    parse_address,
    serve,
)
from bpftap.cli import ExitStatus, main
from bpftap.errors import BpfError, ConfigError

from ..probes import has_ipv6_loopback


class FakeTables:
    """Counters as the maps would hold them; rule stats by rule number, session stats by name."""

    def __init__(self) -> None:
        self.global_counts = {stat.name.lower(): 100 + int(stat) for stat in abi.MirrorStat}
        self.rules = {10: abi.RuleStats(3, 300), 20: abi.RuleStats(8, 8000)}
        self.sessions = {"ids": abi.SessionStats(8, 8800, 1, 2, 3), "ids6": abi.SessionStats(7, 9100, 0, 0, 0)}
        self.reads = 0
        self.fail = False

    def counters(self) -> dict[str, int]:
        self.reads += 1
        if self.fail:
            raise BpfError("read map stats", "", 9)
        return dict(self.global_counts)

    def rule_stats(self, number: int) -> abi.RuleStats:
        return self.rules[number]

    def session_stats(self, name: str) -> abi.SessionStats:
        return self.sessions[name]


LAYOUT = Layout(
    rules=(RuleLabel(10, "skip"), RuleLabel(20, "mirror")),
    sessions=(SessionLabel("ids", "vxlan", "198.18.2.1", True), SessionLabel("ids6", "vxlan", "2001:db8:2::1", False)),
    object="/opt/bpftap/mirror_tc.bpf.o",
    attach_mode="tcx",
    queue_drops={"encap": 4, "fragment": 0},
)


class FakeSource:
    def __init__(self, layout: Layout | None = LAYOUT) -> None:
        self.lock = threading.Lock()
        self.tables = FakeTables()
        self._layout = layout

    def layout(self) -> Layout | None:
        assert self.lock.locked(), "the layout must be read under the agent's lock"
        return self._layout


def scrape(source: FakeSource) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, through the text format and the client's own parser."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MirrorCollector(source))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_global_counters_headline_and_every_other_stat_as_a_reason() -> None:
    source = FakeSource()
    got = scrape(source)
    counts = source.tables.global_counts
    assert got["bpftap_packets_seen_total"] == {(): counts["seen"]}
    assert got["bpftap_packets_matched_total"] == {(): counts["matched"]}
    assert got["bpftap_copies_sent_total"] == {(): counts["copy_sent"]}
    # labels are the enum's names: a stat added to the ABI appears with no second list
    reasons = {dict(labels)["reason"]: value for labels, value in got["bpftap_not_copied_total"].items()}
    assert reasons == {s.name.lower(): counts[s.name.lower()] for s in abi.MirrorStat if s not in HEADLINE}
    assert "no_match" in reasons and "unresolved" in reasons


def test_rules_and_sessions_with_their_labels() -> None:
    got = scrape(FakeSource())
    assert got["bpftap_rule_packets_total"] == {
        (("action", "skip"), ("rule", "10")): 3,
        (("action", "mirror"), ("rule", "20")): 8,
    }
    assert got["bpftap_rule_bytes_total"][(("action", "mirror"), ("rule", "20"))] == 8000
    ids = (("remote", "198.18.2.1"), ("session", "ids"), ("tunnel", "vxlan"))
    ids6 = (("remote", "2001:db8:2::1"), ("session", "ids6"), ("tunnel", "vxlan"))
    assert got["bpftap_session_copies_total"] == {ids: 8, ids6: 7}
    assert got["bpftap_session_bytes_total"] == {ids: 8800, ids6: 9100}
    not_sent = {(dict(k)["session"], dict(k)["reason"]): v for k, v in got["bpftap_session_not_sent_total"].items()}
    assert not_sent == {
        ("ids", "unresolved"): 1, ("ids", "oversize"): 2, ("ids", "encap_fail"): 3,
        ("ids", "sampled_out"): 0, ("ids", "rate_limited"): 0, ("ids", "shed"): 0, ("ids", "ring_full"): 0,
        ("ids6", "unresolved"): 0, ("ids6", "oversize"): 0, ("ids6", "encap_fail"): 0,
        ("ids6", "sampled_out"): 0, ("ids6", "rate_limited"): 0, ("ids6", "shed"): 0, ("ids6", "ring_full"): 0,
    }
    assert all(dict(k)["remote"] in ("198.18.2.1", "2001:db8:2::1") for k in got["bpftap_session_not_sent_total"])
    assert got["bpftap_session_resolved"] == {ids: 1, ids6: 0}


def test_queue_drops_by_queue() -> None:
    assert scrape(FakeSource())["bpftap_queue_dropped_total"] == {(("queue", "encap"),): 4, (("queue", "fragment"),): 0}


def test_build_info() -> None:
    got = scrape(FakeSource())
    assert got["bpftap_build_info"] == {
        (("attach_mode", "tcx"), ("object", "/opt/bpftap/mirror_tc.bpf.o"), ("version", __version__)): 1
    }


def test_read_at_scrape_time_not_cached() -> None:
    source = FakeSource()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MirrorCollector(source))
    assert source.tables.reads == 0, "registering must not read the maps"
    first = generate_latest(registry)
    source.tables.global_counts["seen"] += 5
    second = generate_latest(registry)
    assert source.tables.reads == 2
    assert b"bpftap_packets_seen_total 100.0" in first
    assert b"bpftap_packets_seen_total 105.0" in second


def test_no_rule_set_yet_means_no_metrics() -> None:
    assert scrape(FakeSource(layout=None)) == {}


def test_failed_map_read_fails_the_scrape() -> None:
    source = FakeSource()
    source.tables.fail = True
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MirrorCollector(source))
    with pytest.raises(BpfError):
        generate_latest(registry)
    assert not source.lock.locked()


GOOD_ADDRESSES = [
    ("127.0.0.1:9477", ("127.0.0.1", 9477)),
    ("[::1]:9477", ("::1", 9477)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[2001:db8::1]:80", ("2001:db8::1", 80)),
]
BAD_ADDRESSES = [
    ("9477", "is not ADDRESS:PORT"),
    (":9477", "is not ADDRESS:PORT"),
    ("localhost:9477", "'localhost' is not an IPv4 address"),
    ("::1:9477", "write IPv6 as [ADDRESS]:PORT"),
    ("[127.0.0.1]:9477", "is not an IPv6 address"),
    ("127.0.0.1:70000", "port '70000' is not 0-65535"),
    ("127.0.0.1:http", "port 'http'"),
]


@pytest.mark.parametrize("text,want", GOOD_ADDRESSES)
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want
    assert format_address(want) == text


@pytest.mark.parametrize("text,message", BAD_ADDRESSES)
def test_parse_address_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_address(text)


def test_cli_refuses_a_bad_metrics_address_at_parse_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-c", str(tmp_path / "x.yaml"), "--metrics", "localhost:9477"])
    assert exit_info.value.code == ExitStatus.USAGE
    assert "--metrics: 'localhost:9477': 'localhost' is not an IPv4 address" in capsys.readouterr().err


@contextlib.contextmanager
def serving(host: str) -> Iterator[str]:
    server = serve((host, 0), FakeSource(), CollectorRegistry(auto_describe=False))
    try:
        yield f"http://{format_address(server.address)}/metrics"
    finally:
        server.close()
        server.close()  # idempotent


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_http_endpoint_on_loopback(host: str) -> None:
    if host == "::1" and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    with serving(host) as url, urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own http:// URL
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
    assert {"bpftap_packets_seen", "bpftap_rule_packets", "bpftap_build_info"} <= names


def test_busy_address_is_reported() -> None:
    with serving("127.0.0.1") as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(ConfigError, match=f"--metrics 127.0.0.1:{port}: cannot listen: Address already in use"):
            serve(("127.0.0.1", port), FakeSource(), CollectorRegistry(auto_describe=False))


def test_a_metrics_address_that_cannot_be_bound_is_exit_2_before_anything_attaches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16, defect 6: exit 2 (systemd's RestartPreventExitStatus) and no Agent made, let alone started."""
    import socket

    from bpftap.agent import run as run_module

    made: list[object] = []
    monkeypatch.setattr(run_module, "Agent", lambda *a, **kw: made.append(a))
    config = tmp_path / "bpftap.yaml"
    config.write_text("sources: [{interface: eth0}]\nsessions: [{name: ids, remote: 198.18.2.2, vni: 1}]\n"
                      "rules: [{number: 1, sessions: [ids]}]\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["run", "-c", str(config), "--metrics", f"127.0.0.1:{port}"]) == ExitStatus.USAGE
    assert made == []
    assert f"--metrics 127.0.0.1:{port}: cannot listen: Address already in use (EADDRINUSE)" in capsys.readouterr().err


def test_links_by_link() -> None:
    from dataclasses import replace

    from bpftap.agent.links import LinkState

    eth1 = LinkState("eth1", 3, 10_000_000_000, 5.0)
    eth1.fill, eth1.counters.copies, eth1.counters.shed = 9_500_000_000, 12, 3
    got = scrape(FakeSource(replace(LAYOUT, links=(eth1.to_json(),))))
    link = (("link", "eth1"),)
    assert got["bpftap_link_capacity_bits"] == {link: 1e10}
    assert got["bpftap_link_copy_budget_bits"] == {link: 9.5e9}
    assert got["bpftap_link_originals_bits"] == {link: 0} and got["bpftap_link_copies_bits"] == {link: 0}
    assert got["bpftap_link_copies_total"] == {link: 12} and got["bpftap_link_shed_total"] == {link: 3}
    assert "bpftap_link_shed_total" not in scrape(FakeSource())  # no links: no samples
