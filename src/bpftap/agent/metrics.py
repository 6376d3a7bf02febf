"""Prometheus metrics of the running agent, read from the BPF maps when scraped (`bpftap run --metrics ADDR`).

Nothing is counted in Python: `MirrorCollector.collect()` reads the per-CPU
maps through `bpftap.agent.tables.Tables` on every scrape, sums the CPUs and
yields the families below. Label values come from the ABI mirror (the names
of `abi.MirrorStat` and the fields of `abi.SessionStats`), so a counter added
to `mirror_abi.h` shows up here with no second list to update.

    bpftap_packets_seen_total                       packets the source programs ran on
    bpftap_packets_matched_total                    packets whose first matching rule mirrors
    bpftap_copies_sent_total                        copies handed to an egress device
    bpftap_fragments_sent_total                     outer fragments of copies over the egress MTU
    bpftap_gso_sent_total                           super-packets whose copy was encapsulated whole
    bpftap_gso_slow_total                           super-packets of a GSO session copied per segment
    bpftap_not_copied_total{reason}                 every other `enum mirror_stat` exit: packets
                                                    passed on without a copy (no_match, skipped,
                                                    loop, ...) or copies not sent (unresolved,
                                                    oversize, encap_fail, ...); the original
                                                    packet always passes
    bpftap_rule_packets_total{rule,action}          per rule of the live rule set
    bpftap_rule_bytes_total{rule,action}
    bpftap_session_copies_total{session,tunnel,remote}
    bpftap_session_bytes_total{session,tunnel,remote}
    bpftap_session_fragments_total{session,tunnel,remote}
    bpftap_session_gso_total{session,tunnel,remote}  copies of super-packets encapsulated whole
    bpftap_session_not_sent_total{session,tunnel,remote,reason}
    bpftap_session_resolved{session,tunnel,remote}  1 while the session has a next hop
    bpftap_queue_dropped_total{queue}               copies the internal pair's rings dropped
    bpftap_build_info{version,object,attach_mode}   always 1

A rule's counters go on across reloads (they are keyed by rule number); a
rule that is new, or removed and added again, starts from zero, which
Prometheus's rate() treats as a counter reset.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bpftap import __version__, abi
from bpftap.errors import BpfError, ConfigError

if TYPE_CHECKING:
    from bpftap.agent.daemon import Agent

log = logging.getLogger("bpftap.metrics")

# the global counters with families of their own; every other MirrorStat is a not-copied reason
HEADLINE = {
    abi.MirrorStat.SEEN: ("bpftap_packets_seen", "Packets the source programs ran on."),
    abi.MirrorStat.MATCHED: ("bpftap_packets_matched", "Packets whose first matching rule is a mirror rule."),
    abi.MirrorStat.COPY_SENT: ("bpftap_copies_sent", "Copies handed to an egress device (all sessions)."),
    abi.MirrorStat.FRAGMENTS: ("bpftap_fragments_sent", "Outer fragments sent for copies over the egress MTU."),
    abi.MirrorStat.GSO_SENT: ("bpftap_gso_sent", "GSO super-packets whose copy was encapsulated whole "
                              "(its segments count in bpftap_copies_sent)."),
    abi.MirrorStat.GSO_SLOW: ("bpftap_gso_slow", "GSO super-packets of a GSO session copied per segment instead."),
    abi.MirrorStat.FILTER_RUN: ("bpftap_filter_runs", "Packets whose first candidate rule has a filter: "
                                "the rule set's filter expressions ran on them."),
}
SESSION_LABELS = ["session", "tunnel", "remote"]


class TablesView(Protocol):
    """What the collector reads from the maps (`bpftap.agent.tables.Tables` is the real one)."""

    def counters(self) -> dict[str, int]: ...

    def rule_stats(self, number: int) -> abi.RuleStats: ...

    def session_stats(self, name: str) -> abi.SessionStats: ...


@dataclass(frozen=True)
class RuleLabel:
    """A rule of the live rule set (its number keys its counters)."""

    number: int
    action: str


@dataclass(frozen=True)
class SessionLabel:
    """A session of the live config (its name keys its counters)."""

    name: str
    tunnel: str
    remote: str
    resolved: bool


@dataclass(frozen=True)
class Layout:
    """What the counters mean right now: the live rules and sessions, and how bpftap attached."""

    rules: tuple[RuleLabel, ...]
    sessions: tuple[SessionLabel, ...]
    object: str
    attach_mode: str
    queue_drops: dict[str, int]  # the internal pair's rings: copies dropped when the kernel is behind
    links: tuple[dict[str, Any], ...] = ()  # config links:, as status shows them


class Source(Protocol):
    """The collector's view of an agent: a lock held while reading, the maps, and their meaning."""

    @property
    def lock(self) -> AbstractContextManager[object]: ...

    @property
    def tables(self) -> TablesView: ...

    def layout(self) -> Layout | None: ...


class AgentSource:
    """`Source` over a started `Agent` (the agent's lock keeps the slot and the plan consistent)."""

    def __init__(self, agent: Agent | None = None) -> None:
        # None until the agent exists: the endpoint is bound first, and scrapes then get nothing
        self.agent = agent

    @property
    def lock(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext() if self.agent is None else self.agent.lock

    @property
    def tables(self) -> TablesView:
        assert self.agent is not None, "read only after layout() gave a plan"
        return self.agent.tables

    def layout(self) -> Layout | None:
        """The live plan as labels; None before the first rule set is applied. Call with `lock` held."""
        plan = None if self.agent is None else self.agent.plan
        if plan is None or self.agent is None:
            return None
        rules = tuple(RuleLabel(r.number, r.action.value) for r in plan.config.rules)
        sessions = tuple(
            SessionLabel(name, st.session.tunnel, str(st.remote), st.nexthop is not None)
            for name, st in plan.sessions.items()
        )
        modes = sorted({a.mode.value for a in self.agent.attachments})
        return Layout(rules, sessions, str(self.agent.object_path), ",".join(modes) or "none",
                      self.agent.queue_drops(), tuple(self.agent.governor.status()))


class MirrorCollector(Collector):
    """A custom collector: one `collect()` per scrape reads every counter from the maps."""

    def __init__(self, source: Source, version: str = __version__) -> None:
        self.source, self.version = source, version

    def describe(self) -> Iterator[Metric]:
        """Nothing: registering must not read the maps (prometheus_client calls collect() otherwise)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Read the maps and yield every family.

        Before the first rule set is live nothing is yielded. A failed map
        read raises BpfError (logged): the scrape fails with
        HTTP 500 rather than serving made-up zeros.
        """
        try:
            with self.source.lock:
                layout = self.source.layout()
                if layout is None:
                    return
                tables = self.source.tables
                counters = tables.counters()
                rules = [(r, tables.rule_stats(r.number)) for r in layout.rules]
                sessions = [(s, tables.session_stats(s.name)) for s in layout.sessions]
        except BpfError as exc:
            log.warning("metrics scrape failed: %s", exc)
            raise
        yield from self._globals(counters)
        yield from self._rules(rules)
        yield from self._sessions(sessions)
        queues = CounterMetricFamily("bpftap_queue_dropped", "Copies dropped because an internal ring was full "
                                     "(encap: stage 1's clones, fragment: the fragments' clones); never originals.",
                                     labels=["queue"])
        for queue, drops in layout.queue_drops.items():
            queues.add_metric([queue], drops)
        yield queues
        yield from self._links(layout.links)
        info = InfoMetricFamily("bpftap_build", "bpftap's version, BPF object and attach mode.")
        info.add_metric([], {"version": self.version, "object": layout.object, "attach_mode": layout.attach_mode})
        yield info

    @staticmethod
    def _globals(counters: dict[str, int]) -> Iterator[Metric]:
        for stat, (name, doc) in HEADLINE.items():
            yield CounterMetricFamily(name, doc, value=counters.get(stat.name.lower(), 0))
        fam = CounterMetricFamily(
            "bpftap_not_copied",
            "Packets passed on without a copy, or copies not sent, by reason (enum mirror_stat); "
            "the original packet always passes.",
            labels=["reason"],
        )
        for stat in abi.MirrorStat:
            if stat not in HEADLINE:
                fam.add_metric([stat.name.lower()], counters.get(stat.name.lower(), 0))
        yield fam

    @staticmethod
    def _rules(rules: list[tuple[RuleLabel, abi.RuleStats]]) -> Iterator[Metric]:
        packets = CounterMetricFamily("bpftap_rule_packets", "Packets whose first match was this rule.",
                                      labels=["rule", "action"])
        octets = CounterMetricFamily("bpftap_rule_bytes", "Bytes of the packets whose first match was this rule.",
                                     labels=["rule", "action"])
        for rule, stats in rules:
            labels = [str(rule.number), rule.action]
            packets.add_metric(labels, stats.packets)
            octets.add_metric(labels, stats.bytes)
        yield packets
        yield octets

    @staticmethod
    def _sessions(sessions: list[tuple[SessionLabel, abi.SessionStats]]) -> Iterator[Metric]:
        copies = CounterMetricFamily("bpftap_session_copies", "Copies sent to this session.", labels=SESSION_LABELS)
        octets = CounterMetricFamily("bpftap_session_bytes", "Bytes of the copies sent to this session "
                                     "(outer headers included).", labels=SESSION_LABELS)
        frags = CounterMetricFamily("bpftap_session_fragments", "Outer fragments sent for this session's copies "
                                    "over the egress MTU.", labels=SESSION_LABELS)
        gso = CounterMetricFamily("bpftap_session_gso", "Copies of GSO super-packets encapsulated whole for this "
                                  "session (their segments count in bpftap_session_copies).", labels=SESSION_LABELS)
        lost = CounterMetricFamily("bpftap_session_not_sent", "Copies for this session that were not sent, "
                                   "by reason.", labels=[*SESSION_LABELS, "reason"])
        resolved = GaugeMetricFamily("bpftap_session_resolved", "1 while the session's remote has a route and "
                                     "a neighbour, else 0 (its copies count as unresolved).", labels=SESSION_LABELS)
        reasons = abi.SESSION_NOT_SENT
        for sess, stats in sessions:
            labels = [sess.name, sess.tunnel, sess.remote]
            copies.add_metric(labels, stats.packets)
            octets.add_metric(labels, stats.bytes)
            frags.add_metric(labels, stats.fragments)
            gso.add_metric(labels, stats.gso)
            for reason in reasons:
                lost.add_metric([*labels, reason], getattr(stats, reason))
            resolved.add_metric(labels, 1 if sess.resolved else 0)
        yield from (copies, octets, frags, gso, lost, resolved)


    @staticmethod
    def _links(links: tuple[dict[str, Any], ...]) -> Iterator[Metric]:
        """config links: each link's capacity, rates and copies (names as in `bpftap status`)."""
        families = [
            (GaugeMetricFamily, "bpftap_link_capacity_bits", "capacity", "The link's capacity, bits per second."),
            (GaugeMetricFamily, "bpftap_link_copy_budget_bits", "fill_bps",
             "What copies may use on the link now, bits per second, before originals take theirs."),
            (GaugeMetricFamily, "bpftap_link_originals_bits", "originals_bps",
             "Originals leaving through the link, bits per second over the last second."),
            (GaugeMetricFamily, "bpftap_link_copies_bits", "copies_bps",
             "Copies leaving through the link, bits per second over the last second."),
            (CounterMetricFamily, "bpftap_link_copies", "copies", "Copies the link had room for (wire frames)."),
            (CounterMetricFamily, "bpftap_link_shed", "shed",
             "Copies not sent: no room left on the link for their priority (wire frames)."),
        ]
        for kind, name, key, doc in families:
            fam = kind(name, doc, labels=["link"])
            for link in links:
                fam.add_metric([link["name"]], link[key])
            yield fam


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` (an IP literal, port 0 picks a free one) as (host, port).

    Raises ValueError naming what is wrong.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"'{text}' is not ADDRESS:PORT (for example 127.0.0.1:9477 or [::1]:9477)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host) or ipaddress.ip_address(host).version != 6:
            raise ValueError(f"'{text}': [{host}] is not an IPv6 address")
    elif not _is_ip(host) or ipaddress.ip_address(host).version != 4:
        raise ValueError(f"'{text}': '{host}' is not an IPv4 address (write IPv6 as [ADDRESS]:PORT)")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"'{text}': port '{port}' is not 0-65535")
    return host, int(port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """The HTTP endpoint: every path answers the registry's metrics in the Prometheus text format."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        """Listen on `address` and serve from a thread of its own.

        Raises ConfigError (exit 2: the user's input) if the address cannot
        be bound (in use, not assigned to any interface of this network
        namespace), naming the address and the errno.
        """
        host, port = address
        try:
            self.httpd, self.thread = start_http_server(port, host, registry)
        except OSError as exc:
            code = f" ({errno.errorcode.get(exc.errno, exc.errno)})" if exc.errno else ""
            raise ConfigError(f"bpftap: --metrics {format_address(address)}: cannot listen: "
                              f"{exc.strerror or exc}{code}; give a free port, or an address of this "
                              "network namespace") from exc
        self.address = (host, int(self.httpd.server_port))
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop serving and release the socket (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=2)


def serve(address: tuple[str, int], source: Source, registry: CollectorRegistry | None = None) -> MetricsServer:
    """Register a `MirrorCollector` over `source` in `registry` (a new private one by default) and serve it.

    Raises ConfigError if the address cannot be bound.
    """
    registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
    registry.register(MirrorCollector(source))
    server = MetricsServer(address, registry)
    log.info("metrics on http://%s/metrics", format_address(server.address))
    return server
