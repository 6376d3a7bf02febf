"""Configuration model of bpftap: sources, sessions and rules, validated.

`load_config` reads the YAML file and `parse_config` checks the data. Every
mistake is collected, not only the first, and each message has the shape
``<file>: <location>: <what is wrong>``. The location names the entry by its
0-based index in its list and then the field, as in
``bpftap.yaml: rules[2].src: '198.18.0.0/33' is not a CIDR``.

The model (`bpftap.config.model`) is plain frozen dataclasses with no
kernel types; `bpftap.compile` turns it into map entries.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

import yaml

from bpftap import abi
from bpftap.config import fields as rule_fields
from bpftap.config.model import (
    GRE_KEY_MAX,
    IPPROTO_TCP,
    ONE_FAMILY_PROTOCOLS,
    OVERSIZE,
    PORT_PROTOCOLS,
    PRIORITIES,
    RULE_NUMBER_MAX,
    Action,
    Config,
    Direction,
    Link,
    Rule,
    Session,
    Source,
)
from bpftap.config.pod_selector import _pod_selector
from bpftap.config.values import (
    ANY_PORTS,
    MAX_CONFIG_BYTES,
    IPAddress,
    _boolean,
    _choice,
    _cidr,
    _describe,
    _did_you_mean,
    _filter,
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
    _UniqueKeyLoader,
    protocol_name,
    shown,
)
from bpftap.errors import ConfigError
from bpftap.tunnels import TUNNEL_ID_FIELDS, TUNNELS, TYPES, TunnelType
from bpftap.tunnels.common import ETH_HLEN, VNI_MAX
from bpftap.tunnels.erspan import SESSION_MAX as ERSPAN_SESSION_MAX

_TOP_KEYS = ("sources", "sessions", "rules", "copy_budget", "redirect_chain", "links")
T = TypeVar("T")
_SOURCE_FIELDS = tuple(f.name for f in fields(Source))
_SESSION_FIELDS = tuple(f.name for f in fields(Session))
_RULE_FIELDS = tuple(f.name for f in fields(Rule))
_LINK_FIELDS = tuple(f.name for f in fields(Link))


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
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise InvalidConfigError([f"{name}: {where}: {e.problem or e.context}"]) from e
    except yaml.YAMLError as e:
        raise InvalidConfigError([f"{name}: YAML: {e}"]) from e
    finally:
        loader.dispose()
    return parse_config(data, name, getattr(loader, "lines", None))


def parse_config(data: object, filename: str, lines: Mapping[str, int] | None = None) -> Config:
    """Validate parsed YAML `data` and build a Config named `filename`.

    Raises InvalidConfigError listing every mistake found; see the module
    docstring for the message shape and the test table in
    tests/unit/test_config.py for each kind of mistake. `lines` (path ->
    line, from the YAML loader) adds the line to each message, and a rule's
    mistakes name its number too.
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
    filtered = [r for r in rules if r is not None and r.filter is not None]
    if len(filtered) > abi.MAX_FILTER_RULES:
        report.append(("rules", f"{len(filtered)} rules have a filter; at most {abi.MAX_FILTER_RULES} "
                                f"(MAX_FILTER_RULES): rule {filtered[abi.MAX_FILTER_RULES].number} is one too many"))
    collectors = sum(len(s.members) for s in sessions if s is not None)
    if collectors > abi.MAX_SESSIONS >= len(raw_sessions):
        report.append(("sessions", f"{collectors} collectors in all; at most {abi.MAX_SESSIONS} fit (MAX_SESSIONS)"))
    elif collectors == abi.MAX_SESSIONS and any(s.truncates for s in sessions if s is not None):
        # a truncating session's clone names it in 6 bits of the mark, one value short of 64 slots
        report.append(("sessions", f"{collectors} collectors with a truncating session (snaplen or oversize: "
                                   f"truncate); at most {abi.MAX_SESSIONS - 1}"))
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
    link_names: dict[str, str] = {}
    links = [_link(report, f"links[{i}]", raw, link_names)
             for i, raw in enumerate(_entries(report, "links", data.get("links"), abi.MAX_LINKS))]
    if report:
        raise InvalidConfigError(f"{filename}: {where}: {what}{_context(where, lines, raw_rules)}"
                                 for where, what in report)
    return Config(
        path=filename,
        sources=tuple(s for s in sources if s is not None),
        sessions=tuple(s for s in sessions if s is not None),
        rules=tuple(sorted((r for r in rules if r is not None), key=lambda r: r.number)),
        copy_budget=copy_budget,
        redirect_chain=redirect_chain,
        links=tuple(link for link in links if link is not None),
    )


_Report = list[tuple[str, str]]  # (location, message) in the order found


def _context(where: str, lines: Mapping[str, int] | None, raw_rules: list[object]) -> str:
    """' (line 14, rule 200)': where a mistake is in the file, and which rule it is in."""
    parts = []
    path = where
    while lines and path:
        if path in lines:
            parts.append(f"line {lines[path]}")
            break
        path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"(\.[^.\[]*|\[\d+\])$", path) else ""
    m = re.match(r"rules\[(\d+)\]", where)
    if m and int(m[1]) < len(raw_rules):
        raw = raw_rules[int(m[1])]
        number = raw.get("number") if isinstance(raw, Mapping) else None
        if isinstance(number, int) and not isinstance(number, bool):
            parts.append(f"rule {number}")
    return f" ({', '.join(parts)})" if parts else ""


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


def _headroom(value: object) -> float:
    """`headroom: 5%` (or 5): the percent of a link's capacity copies leave free."""
    text = str(value).strip().removesuffix("%") if isinstance(value, (str, int, float)) else ""
    try:
        percent = float(text) if not isinstance(value, bool) else -1.0
    except ValueError:
        percent = -1.0
    if not 0 <= percent < 100:
        raise _Invalid(f"{shown(value)} is not a headroom; write a percent of the capacity from 0 to 99, e.g. 5%")
    return percent


def _capacity(value: object) -> int:
    """`capacity: 10G`: bits per second."""
    try:
        return rule_fields.rate(value, "bps")
    except ValueError as exc:
        if "out of range" in str(exc):
            raise _Invalid(str(exc)) from None
        raise _Invalid(f"{shown(value)} is not a capacity; write bits per second, e.g. 10G or 200M") from None


def _link(report: _Report, where: str, raw: object, seen: dict[str, str]) -> Link | None:
    e = _Entry(report, where, raw, _LINK_FIELDS, ("interface",))
    interface = e.get("interface", _interface, "")
    capacity = e.get("capacity", _capacity, 0)
    headroom = e.get("headroom", _headroom, Link.headroom)
    e.claim("interface", interface, seen, "; list each link once")
    return Link(interface, capacity, headroom) if e.ok else None


def _source(report: _Report, where: str, raw: object, seen: dict[str, str]) -> Source | None:
    e = _Entry(report, where, raw, _SOURCE_FIELDS, ())
    if e.ok and "interface" not in e.raw and "pods" not in e.raw:
        e.fail("interface", "missing required field 'interface' (or 'pods' to select pods)", at_entry=True)
    if "interface" in e.raw and "pods" in e.raw:
        e.fail("pods", "give either interface or pods, not both")
    interface = e.get("interface", _interface, "")
    pods = e.get("pods", _pod_selector, None)
    direction = e.get("direction", _choice("direction", _DIRECTIONS), Direction.BOTH)
    attach = e.get("attach", _choice("attach", _ATTACH), "host")
    if "attach" in e.raw and "pods" not in e.raw:
        e.fail("attach", "only pod sources have a choice of where to attach (an interface source is attached "
                         "where it is)")
    e.claim("interface", interface, seen, "; list each interface once (direction: both covers both ways)")
    if pods is not None:
        e.claim("pods", pods.describe(), seen, "; list each pod selector once")
    return Source(interface, direction, pods, attach) if e.ok else None


def _session(report: _Report, where: str, raw: object, names: dict[str, str]) -> Session | None:
    e = _Entry(report, where, raw, _SESSION_FIELDS, ("name",))
    name = e.get("name", _session_name, "")
    tunnel = e.get("tunnel", _choice("tunnel", {t: t for t in TUNNELS}), "vxlan")
    unset: IPAddress = ipaddress.IPv4Address(0)  # only seen when the entry is rejected
    remote = e.get("remote", _remote, unset)
    no_remotes: tuple[IPAddress, ...] = ()
    remotes = e.get("remotes", _remotes, no_remotes)
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
    default_port = TYPES[tunnel].udp_port if tunnel in TYPES else 0
    port = e.get("port", _integer(1, 65535), default_port)
    e.claim("name", name, names)
    raw_name = e.raw.get("name")
    if "name" in e.bad and isinstance(raw_name, str) and raw_name:
        # one root cause, one message: rules naming it are not told it is unknown
        names.setdefault(raw_name, where)
    if "tunnel" not in e.bad:
        _check_tunnel_fields(e, tunnel)
    if not e.ok:
        return None
    return Session(
        name, tunnel, remote, vni, port, key, session_id, sequence, platform, sample, rate_limit, remotes, snaplen,
        priority, oversize, gso,
    )


def _takes(t: TunnelType, field: str) -> bool:
    return field == t.id_field or field in t.options or (field == "port" and t.udp_port != 0)


def _check_tunnel_fields(e: _Entry, tunnel: str) -> None:
    """Each tunnel type has its identifier (required unless the registry says optional) and refuses the fields
    only other types take (bpftap.tunnels.TYPES says which)."""
    t = TYPES[tunnel]
    if not t.id_optional and t.id_field not in e.raw:
        e.fail(t.id_field, f"missing required field {shown(t.id_field)}", at_entry=True)
    every = dict.fromkeys([*(o.id_field for o in TYPES.values()), *(f for o in TYPES.values() for f in o.options),
                           "port"])
    for field in every:
        if field in e.raw and not _takes(t, field):
            owner = " and ".join(o.name for o in TYPES.values() if _takes(o, field))
            article = "an" if tunnel[0] in "aeiou" else "a"
            hint = (f"; {article} {tunnel} session is identified by {t.id_field}"
                    if field in TUNNEL_ID_FIELDS.values() else "")
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
    expression = e.get("filter", _filter, None)
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
    return Rule(number, direction, action, protocol, src, dst, src_ports, dst_ports, sessions, vlan, tcp_flags,
                interface, expression)


_DIRECTIONS = {"ingress": Direction.INGRESS, "egress": Direction.EGRESS, "both": Direction.BOTH}
_ATTACH = {"host": "host", "inside": "inside", "auto": "auto"}
