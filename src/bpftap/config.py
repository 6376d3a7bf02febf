"""Configuration model of bpftap: sources, sessions and rules, validated.

`load_config` reads the YAML file and `parse_config` checks the data. Every
mistake is collected, not only the first, and each message has the shape
``<file>: <location>: <what is wrong>``. The location names the entry by its
0-based index in its list and then the field, as in
``bpftap.yaml: rules[2].src: '198.18.0.0/33' is not a CIDR``.

The model is plain frozen dataclasses with no kernel types; `bpftap.rules`
turns it into map entries.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import yaml

from bpftap import abi, rule_fields
from bpftap.config_values import (  # noqa: F401 (re-exported: the config's vocabulary)
    ANY_PORTS,
    IFNAMSIZ,
    MAX_CONFIG_BYTES,
    PROTOCOLS,
    IPAddress,
    IPNetwork,
    PortRange,
    _boolean,
    _choice,
    _cidr,
    _describe,
    _did_you_mean,
    _integer,
    _interface,
    _Invalid,
    _invalid_on_value_error,
    _name_list,
    _ports,
    _protocol,
    _remote,
    _remotes,
    _session_name,
    _string,
    _UniqueKeyLoader,
    _unknown,
    protocol_name,
    shown,
)
from bpftap.errors import ConfigError
from bpftap.pod_selector import PodSelector, _pod_selector

VXLAN_PORT = 4789
GENEVE_PORT = 6081
VNI_MAX = 2**24 - 1
GRE_KEY_MAX = 2**32 - 1
ERSPAN_SESSION_MAX = 1023
RULE_NUMBER_MAX = 2**31 - 1
PRIORITIES = ("high", "normal", "low")
OVERSIZE = ("fragment", "resegment", "truncate")
ETH_HLEN = 14
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})
ONE_FAMILY_PROTOCOLS = {IPPROTO_ICMP: 4, IPPROTO_ICMPV6: 6}  # protocol -> the only family it exists in
TUNNELS = ("vxlan", "geneve", "gre", "erspan2", "erspan3")
UDP_TUNNELS = ("vxlan", "geneve")
# the field that identifies a session's copies, per tunnel type; gre's is optional
TUNNEL_ID_FIELDS = {"vxlan": "vni", "geneve": "vni", "gre": "key", "erspan2": "session_id", "erspan3": "session_id"}

_TOP_KEYS = ("sources", "sessions", "rules", "copy_budget", "redirect_chain")
T = TypeVar("T")


class Direction(enum.IntFlag):
    """Which way packets cross an interface; the values are `abi.MirrorDir`'s."""

    INGRESS = int(abi.MirrorDir.INGRESS)
    EGRESS = int(abi.MirrorDir.EGRESS)
    BOTH = INGRESS | EGRESS


class Action(enum.Enum):
    """What a matching rule does: send copies, or stop looking (skip)."""

    MIRROR = "mirror"
    SKIP = "skip"


@dataclass(frozen=True)
class Source:
    """An interface name or fnmatch glob to mirror from, and in which directions.

    `pods` replaces `interface` for pod sources: the agent then attaches to
    the host-side interface of each selected pod as pods come and go.
    """

    interface: str = ""
    direction: Direction = Direction.BOTH
    pods: PodSelector | None = None


@dataclass(frozen=True)
class Session:
    """A collector that receives tunnelled copies: `tunnel` to `remote`, over its address family.

    `vni` belongs to vxlan and geneve, `port` (the UDP destination) too;
    `key` (optional) and `sequence` (send GRE sequence numbers) to gre;
    `session_id` to erspan2 and erspan3, `platform_subheader` to erspan3. A validated Config has exactly
    the fields of its tunnel type set; the others keep their defaults (port
    0 for the GRE-based types).
    """

    name: str
    tunnel: str
    remote: IPAddress
    vni: int | None = None
    port: int = VXLAN_PORT
    key: int | None = None
    session_id: int | None = None
    sequence: bool = True
    platform_subheader: bool = True  # erspan3: the platform sub-header (timestamp seconds, port); Linux ignores it
    sample: int = 1  # send 1 copy in this many
    rate_limit: tuple[int, int] = (0, 0)  # (copies per second, bits per second); 0 = no limit
    remotes: tuple[IPAddress, ...] = ()  # a collector group (remote is its first); () = just remote
    snaplen: int = 0  # inner frame bytes kept in each copy; 0 = the whole frame
    priority: str = "normal"  # high | normal | low: how far it may drain the node's copy budget
    oversize: str = "resegment"  # a copy over the egress MTU: smaller GSO segments, outer fragments, or cut to fit
    gso: bool = True  # copies of GSO super-packets encapsulated whole, where the session allows (gso_capable)

    @property
    def truncates(self) -> bool:
        """Its copies may be cut (snaplen, or cut to the MTU): each gets a clone of its own from stage 1."""
        return bool(self.snaplen) or self.oversize == "truncate"

    @property
    def gso_capable(self) -> bool:
        """Its copies of a GSO super-packet may be encapsulated whole, segmented after encapsulation.

        Every segment then carries the same tunnel header: no per-packet
        sequence numbers (ERSPAN, GRE with `sequence`), no snaplen, sampling
        or rate limit (they count wire frames). Over IPv6 the segments' UDP
        checksum is zero (RFC 6935); `gso: false` keeps the per-segment path.
        """
        return self.gso and self.tunnel in ("vxlan", "geneve", "gre") and not self.gre_seq and not self.truncates and self.sample == 1 \
            and self.rate_limit == (0, 0)

    @property
    def members(self) -> tuple[IPAddress, ...]:
        """The collectors copies go to: the group's, else the one remote (each flow to one of them)."""
        return self.remotes or (self.remote,)

    @property
    def tun_id(self) -> int:
        """The VNI, GRE key or ERSPAN session id (0 for a gre session without a key)."""
        return {"vni": self.vni, "key": self.key, "session_id": self.session_id}[TUNNEL_ID_FIELDS[self.tunnel]] or 0

    @property
    def gre_key(self) -> bool:
        """A gre session's copies carry a key."""
        return self.tunnel == "gre" and self.key is not None

    @property
    def erspan_platform(self) -> bool:
        """An erspan3 session's copies carry the platform sub-header (O bit): the time's seconds and the port."""
        return self.tunnel == "erspan3" and self.platform_subheader

    @property
    def gre_seq(self) -> bool:
        """A gre session's copies carry a sequence number (ERSPAN's always do)."""
        return self.tunnel == "gre" and self.sequence


@dataclass(frozen=True)
class Rule:
    """One ordered match rule; None and (0, 65535) mean "any"."""

    number: int
    direction: Direction = Direction.BOTH
    action: Action = Action.MIRROR
    protocol: int | None = None
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    src_ports: PortRange = ANY_PORTS
    dst_ports: PortRange = ANY_PORTS
    sessions: tuple[str, ...] = ()
    vlan: int | None = None  # outer VLAN id, or rule_fields.VLAN_UNTAGGED
    tcp_flags: tuple[int, int] | None = None  # (mask, value)
    interface: str | None = None  # name or glob of the source interface

    @property
    def family(self) -> int | None:
        """4 or 6 when a CIDR or the protocol (icmp, icmpv6) ties the rule to one family."""
        net = self.src or self.dst
        return net.version if net is not None else ONE_FAMILY_PROTOCOLS.get(self.protocol or 0)


@dataclass(frozen=True)
class Config:
    """A whole validated configuration; `rules` is sorted by rule number."""

    path: str
    sources: tuple[Source, ...]
    sessions: tuple[Session, ...]
    rules: tuple[Rule, ...]
    copy_budget: tuple[int, int] = (0, 0)  # (copies, bits) per second for all sessions; 0 = none
    # false: no packet is redirected twice; stage 2 hands copies to the daemon, which sends them (agent/copies.py)
    redirect_chain: bool = True


_SOURCE_FIELDS = tuple(f.name for f in fields(Source))
_SESSION_FIELDS = tuple(f.name for f in fields(Session))
_RULE_FIELDS = tuple(f.name for f in fields(Rule))


class InvalidConfigError(ConfigError):
    """Every mistake found in one configuration; `errors` holds one message each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the YAML configuration at `path`.

    Raises InvalidConfigError (a ConfigError) if the file is missing or
    unreadable, is not UTF-8, is not valid YAML (the message gives line and
    column), repeats a key in one mapping, or fails `parse_config`.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise InvalidConfigError([f"{name}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
                                      "is it the config file?"])
        text = raw.decode("utf-8")
    except OSError as e:
        code = f" ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else ""
        raise InvalidConfigError([f"{name}: cannot read: {e.strerror or e}{code}"]) from e
    except UnicodeDecodeError as e:
        raise InvalidConfigError([f"{name}: byte {e.start}: not UTF-8 text"]) from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise InvalidConfigError([f"{name}: {where}: {e.problem or e.context}"]) from e
    except yaml.YAMLError as e:
        raise InvalidConfigError([f"{name}: YAML: {e}"]) from e
    return parse_config(data, name)


def parse_config(data: object, filename: str) -> Config:
    """Validate parsed YAML `data` and build a Config named `filename`.

    Raises InvalidConfigError listing every mistake found; see the module
    docstring for the message shape and the test table in
    tests/unit/test_config.py for each kind of mistake.
    """
    report: _Report = []
    if not isinstance(data, Mapping):
        got = "the file is empty" if data is None else f"got {_describe(data)}"
        what = f"{got}; expected a mapping with keys {', '.join(_TOP_KEYS)}"
        raise InvalidConfigError([f"{filename}: top level: {what}"])
    for key in data:
        if key not in _TOP_KEYS:
            report.append(("top level", f"unknown key {shown(key)}{_did_you_mean(key, _TOP_KEYS)}"))
    raw_sources = _entries(report, "sources", data.get("sources"))
    raw_sessions = _entries(report, "sessions", data.get("sessions"), abi.MAX_SESSIONS)
    raw_rules = _entries(report, "rules", data.get("rules"), abi.MAX_RULES)
    if not raw_sources and isinstance(data.get("sources"), (list, type(None))):
        report.append(("sources", "no sources; list at least one interface to mirror from"))

    seen: dict[str, str] = {}
    sources = [_source(report, f"sources[{i}]", raw, seen) for i, raw in enumerate(raw_sources)]
    names: dict[str, str] = {}
    sessions = [_session(report, f"sessions[{i}]", raw, names) for i, raw in enumerate(raw_sessions)]
    numbers: dict[int, str] = {}
    rules = [_rule(report, f"rules[{i}]", raw, names, numbers) for i, raw in enumerate(raw_rules)]
    collectors = sum(len(s.members) for s in sessions if s is not None)
    if collectors > abi.MAX_SESSIONS >= len(raw_sessions):
        report.append(("sessions", f"{collectors} collectors in all; at most {abi.MAX_SESSIONS} fit (MAX_SESSIONS)"))
    elif collectors == abi.MAX_SESSIONS and any(s.truncates for s in sessions if s is not None):
        # a truncating session's clone names it in 6 bits of the mark, one value short of 64 slots
        report.append(("sessions", f"{collectors} collectors with a truncating session (snaplen or oversize: truncate); at most {abi.MAX_SESSIONS - 1}"))
    copy_budget = (0, 0)
    if "copy_budget" in data:
        try:
            copy_budget = rule_fields.rate_limit(data["copy_budget"])
        except ValueError as exc:
            report.append(("copy_budget", str(exc)))
    redirect_chain = Config.redirect_chain
    if "redirect_chain" in data:
        try:
            redirect_chain = _boolean(data["redirect_chain"])
        except _Invalid as exc:
            report.append(("redirect_chain", str(exc)))
    if report:
        raise InvalidConfigError(f"{filename}: {where}: {what}" for where, what in report)
    return Config(
        path=filename,
        sources=tuple(s for s in sources if s is not None),
        sessions=tuple(s for s in sessions if s is not None),
        rules=tuple(sorted((r for r in rules if r is not None), key=lambda r: r.number)),
        copy_budget=copy_budget,
        redirect_chain=redirect_chain,
    )


_Report = list[tuple[str, str]]  # (location, message) in the order found


class _Entry:
    """One mapping in a list: checks its keys and parses fields, recording errors."""

    def __init__(
        self, report: _Report, where: str, raw: object, fields: tuple[str, ...], required: tuple[str, ...]
    ) -> None:
        self.report, self.where = report, where
        self.bad: set[str] = set()
        self.raw: Mapping[Any, Any] = raw if isinstance(raw, Mapping) else {}
        self.ok = isinstance(raw, Mapping)
        if not self.ok:
            report.append((where, f"expected a mapping, got {_describe(raw)}"))
            return
        for key in self.raw:
            if key not in fields:
                self.fail(None, f"unknown field {shown(key)}{_did_you_mean(key, fields)}")
        for name in required:
            if name not in self.raw:
                self.fail(name, f"missing required field {shown(name)}", at_entry=True)

    def fail(self, field: str | None, message: str, at_entry: bool = False) -> None:
        """Record a mistake in `field` (or the entry itself) and mark the entry bad."""
        self.ok = False
        if field is not None:
            self.bad.add(field)
        where = self.where if field is None or at_entry else f"{self.where}.{field}"
        self.report.append((where, message))

    def get(self, name: str, parse: Callable[[object], T], default: T) -> T:
        """The parsed field, or `default` if absent or wrong (then recorded)."""
        if name not in self.raw:
            return default
        try:
            return parse(self.raw[name])
        except _Invalid as e:
            self.fail(name, str(e))
            return default

    def claim(self, name: str, value: Hashable, owners: dict[Any, str], hint: str = "") -> None:
        """Note that this entry's field `name` holds `value`; a second holder is a mistake."""
        if name in self.raw and name not in self.bad:
            if value in owners:
                self.fail(name, f"{shown(value)} is already used by {owners[value]}{hint}")
            owners.setdefault(value, self.where)


def _entries(report: _Report, key: str, value: object, limit: int = 0) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        report.append((key, f"expected a list, got {_describe(value)}"))
        return []
    if limit and len(value) > limit:
        report.append((key, f"{len(value)} {key}; at most {limit} fit (MAX_{key.upper()})"))
    return value


def _source(report: _Report, where: str, raw: object, seen: dict[str, str]) -> Source | None:
    e = _Entry(report, where, raw, _SOURCE_FIELDS, ())
    if e.ok and "interface" not in e.raw and "pods" not in e.raw:
        e.fail("interface", "missing required field 'interface' (or 'pods' to select pods)", at_entry=True)
    if "interface" in e.raw and "pods" in e.raw:
        e.fail("pods", "give either interface or pods, not both")
    interface = e.get("interface", _interface, "")
    pods = e.get("pods", _pod_selector, None)
    direction = e.get("direction", _choice("direction", _DIRECTIONS), Direction.BOTH)
    e.claim("interface", interface, seen, "; list each interface once (direction: both covers both ways)")
    if pods is not None:
        e.claim("pods", pods.describe(), seen, "; list each pod selector once")
    return Source(interface, direction, pods) if e.ok else None


def _session(report: _Report, where: str, raw: object, names: dict[str, str]) -> Session | None:
    e = _Entry(report, where, raw, _SESSION_FIELDS, ("name",))
    name = e.get("name", _session_name, "")
    tunnel = e.get("tunnel", _choice("tunnel", {t: t for t in TUNNELS}), "vxlan")
    unset: IPAddress = ipaddress.IPv4Address(0)  # only seen when the entry is rejected
    remote = e.get("remote", _remote, unset)
    remotes = e.get("remotes", _remotes, ())
    if isinstance(e.raw, dict) and ("remote" in e.raw) == ("remotes" in e.raw):
        e.fail("remote", "give remote (one collector) or remotes (a group), not both" if "remote" in e.raw
               else "missing required field 'remote' (or 'remotes' for a group of collectors)", at_entry=True)
    if remotes:
        remote = remotes[0]
    vni = e.get("vni", _integer(0, VNI_MAX), None)
    key = e.get("key", _integer(0, GRE_KEY_MAX), None)
    session_id = e.get("session_id", _integer(0, ERSPAN_SESSION_MAX), None)
    sequence = e.get("sequence", _boolean, True)
    platform = e.get("platform_subheader", _boolean, True)
    sample = e.get("sample", _integer(1, 2**32 - 1), 1)
    rate_limit = e.get("rate_limit", _invalid_on_value_error(rule_fields.rate_limit), (0, 0))
    snaplen = e.get("snaplen", _integer(ETH_HLEN, 65535), 0)
    priority = e.get("priority", _choice("priority", {p: p for p in PRIORITIES}), "normal")
    oversize = e.get("oversize", _choice("oversize", {o: o for o in OVERSIZE}), "resegment")
    gso = e.get("gso", _boolean, True)
    default_port = GENEVE_PORT if tunnel == "geneve" else VXLAN_PORT if tunnel == "vxlan" else 0
    port = e.get("port", _integer(1, 65535), default_port)
    e.claim("name", name, names)
    if "tunnel" not in e.bad:
        _check_tunnel_fields(e, tunnel)
    if not e.ok:
        return None
    return Session(
        name, tunnel, remote, vni, port, key, session_id, sequence, platform, sample, rate_limit, remotes, snaplen,
        priority, oversize, gso,
    )


def _check_tunnel_fields(e: _Entry, tunnel: str) -> None:
    """Each tunnel type has its identifier (required but gre's key) and refuses the others' fields."""
    id_field = TUNNEL_ID_FIELDS[tunnel]
    if id_field in ("vni", "session_id") and id_field not in e.raw:
        e.fail(id_field, f"missing required field {shown(id_field)}", at_entry=True)
    owners = {"vni": "vxlan and geneve", "key": "gre", "session_id": "erspan2 and erspan3",
              "sequence": "gre", "port": "vxlan and geneve", "platform_subheader": "erspan3"}
    for field, owner in owners.items():
        if field in e.raw and field != id_field and not (field == "port" and tunnel in UDP_TUNNELS) \
                and not (field == "sequence" and tunnel == "gre") \
                and not (field == "platform_subheader" and tunnel == "erspan3"):
            article = "an" if tunnel[0] in "aeiou" else "a"
            hint = f"; {article} {tunnel} session is identified by {id_field}" if field in TUNNEL_ID_FIELDS.values() else ""
            e.fail(field, f"only {owner} sessions have {field}{hint}")


def _rule(
    report: _Report, where: str, raw: object, names: Mapping[str, str], numbers: dict[int, str]
) -> Rule | None:
    e = _Entry(report, where, raw, _RULE_FIELDS, ("number",))
    if not e.raw:
        return None
    number = e.get("number", _integer(1, RULE_NUMBER_MAX), 0)
    direction = e.get("direction", _choice("direction", _DIRECTIONS), Direction.BOTH)
    action = e.get("action", _choice("action", {a.value: a for a in Action}), Action.MIRROR)
    protocol = e.get("protocol", _protocol, None)
    src = e.get("src", _cidr, None)
    dst = e.get("dst", _cidr, None)
    src_ports = e.get("src_ports", _ports, ANY_PORTS)
    dst_ports = e.get("dst_ports", _ports, ANY_PORTS)
    sessions: tuple[str, ...] = e.get("sessions", _name_list, ())  # names checked below
    vlan = e.get("vlan", _invalid_on_value_error(rule_fields.vlan), None)
    tcp_flags = e.get("tcp_flags", _invalid_on_value_error(rule_fields.tcp_flags), None)
    interface = e.get("interface", _invalid_on_value_error(rule_fields.interface), None)
    if tcp_flags is not None and protocol != IPPROTO_TCP and "protocol" not in e.bad:
        e.fail("tcp_flags", "tcp_flags needs protocol: tcp")
    e.claim("number", number, numbers)

    # one address family per rule: both CIDRs, and icmp/icmpv6, must agree
    if src is not None and dst is not None and src.version != dst.version:
        e.fail(
            "dst",
            f"{dst} is IPv{dst.version} but src {src} is IPv{src.version}; "
            "a rule matches one address family",
        )
    fixed = ONE_FAMILY_PROTOCOLS.get(protocol or 0)
    for field, net in (("src", src), ("dst", dst)):
        if fixed and net is not None and net.version != fixed:
            other = "icmpv6" if fixed == 4 else "icmp"
            e.fail(
                field,
                f"{protocol_name(protocol)} is IPv{fixed} only but {net} is "
                f"IPv{net.version}; use {other}",
            )

    # ports only mean something for protocols that carry them
    if protocol is not None and protocol not in PORT_PROTOCOLS:
        for field, ports in (("src_ports", src_ports), ("dst_ports", dst_ports)):
            if ports != ANY_PORTS:
                e.fail(
                    field,
                    f"protocol {protocol_name(protocol)} has no ports; "
                    f"remove {field} or use tcp, udp or sctp",
                )

    # a mirror rule needs somewhere to send copies; a skip rule sends none
    if "action" not in e.bad and "sessions" not in e.bad:
        if action is Action.MIRROR and not sessions:
            e.fail("sessions", "a mirror rule needs at least one session")
        if action is Action.SKIP and sessions:
            e.fail("sessions", "a skip rule mirrors nothing; remove sessions")
    for i, name in enumerate(sessions):
        if name not in names:
            e.fail(f"sessions[{i}]", f"unknown session {shown(name)}{_did_you_mean(name, names)}")
        elif name in sessions[:i]:
            e.fail(f"sessions[{i}]", f"session {shown(name)} is listed twice")
    if not e.ok:
        return None
    return Rule(number, direction, action, protocol, src, dst, src_ports, dst_ports, sessions, vlan, tcp_flags, interface)


_DIRECTIONS = {"ingress": Direction.INGRESS, "egress": Direction.EGRESS, "both": Direction.BOTH}
