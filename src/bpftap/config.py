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

import difflib
import enum
import errno
import ipaddress
import os
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import yaml

from bpftap import abi
from bpftap.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]

ANY_PORTS: PortRange = (0, 65535)
VXLAN_PORT = 4789
VNI_MAX = 2**24 - 1
RULE_NUMBER_MAX = 2**31 - 1
IFNAMSIZ = 16  # the kernel's limit includes the terminating NUL
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
PROTOCOLS: dict[str, int | None] = {"any": None, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})
ONE_FAMILY_PROTOCOLS = {IPPROTO_ICMP: 4, IPPROTO_ICMPV6: 6}  # protocol -> the only family it exists in
TUNNELS = ("vxlan",)

_SESSION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_PORT = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)
_GLOB_CHARS = frozenset("*?[")
_TOP_KEYS = ("sources", "sessions", "rules")
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
    """An interface name or fnmatch glob to mirror from, and in which directions."""

    interface: str
    direction: Direction = Direction.BOTH


@dataclass(frozen=True)
class Session:
    """A collector that receives tunnelled copies (VXLAN to remote:port, vni)."""

    name: str
    tunnel: str
    remote: IPAddress
    vni: int
    port: int = VXLAN_PORT


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


_SOURCE_FIELDS = tuple(f.name for f in fields(Source))
_SESSION_FIELDS = tuple(f.name for f in fields(Session))
_RULE_FIELDS = tuple(f.name for f in fields(Rule))


class InvalidConfigError(ConfigError):
    """Every mistake found in one configuration; `errors` holds one message each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


def protocol_name(number: int | None) -> str:
    """The config spelling of a protocol number: 'udp', 'any' or '47'."""
    return next((name for name, value in PROTOCOLS.items() if value == number), str(number))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the YAML configuration at `path`.

    Raises InvalidConfigError (a ConfigError) if the file is missing or
    unreadable, is not UTF-8, is not valid YAML (the message gives line and
    column), repeats a key in one mapping, or fails `parse_config`.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
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
            report.append(("top level", f"unknown key {key!r}{_did_you_mean(key, _TOP_KEYS)}"))
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
    if report:
        raise InvalidConfigError(f"{filename}: {where}: {what}" for where, what in report)
    return Config(
        path=filename,
        sources=tuple(s for s in sources if s is not None),
        sessions=tuple(s for s in sessions if s is not None),
        rules=tuple(sorted((r for r in rules if r is not None), key=lambda r: r.number)),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int)) and key in seen:
                problem = f"duplicate key {key!r}; each key may appear once"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key if isinstance(key, (str, int)) else id(key_node))
        return super().construct_mapping(node, deep=deep)


_Report = list[tuple[str, str]]  # (location, message) in the order found


class _Invalid(Exception):
    """A value is wrong; the message says what, the caller says where."""


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
                self.fail(None, f"unknown field {key!r}{_did_you_mean(key, fields)}")
        for name in required:
            if name not in self.raw:
                self.fail(name, f"missing required field {name!r}", at_entry=True)

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
                self.fail(name, f"{value!r} is already used by {owners[value]}{hint}")
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
    e = _Entry(report, where, raw, _SOURCE_FIELDS, ("interface",))
    interface = e.get("interface", _interface, "")
    direction = e.get("direction", _choice("direction", _DIRECTIONS), Direction.BOTH)
    e.claim("interface", interface, seen, "; list each interface once (direction: both covers both ways)")
    return Source(interface, direction) if e.ok else None


def _session(report: _Report, where: str, raw: object, names: dict[str, str]) -> Session | None:
    e = _Entry(report, where, raw, _SESSION_FIELDS, ("name", "remote", "vni"))
    name = e.get("name", _session_name, "")
    tunnel = e.get("tunnel", _choice("tunnel", {t: t for t in TUNNELS}), "vxlan")
    unset: IPAddress = ipaddress.IPv4Address(0)  # only seen when the entry is rejected
    remote = e.get("remote", _remote, unset)
    vni = e.get("vni", _integer(0, VNI_MAX), 0)
    port = e.get("port", _integer(1, 65535), VXLAN_PORT)
    e.claim("name", name, names)
    return Session(name, tunnel, remote, vni, port) if e.ok else None


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
            e.fail(f"sessions[{i}]", f"unknown session {name!r}{_did_you_mean(name, names)}")
        elif name in sessions[:i]:
            e.fail(f"sessions[{i}]", f"session {name!r} is listed twice")
    if not e.ok:
        return None
    return Rule(number, direction, action, protocol, src, dst, src_ports, dst_ports, sessions)


_DIRECTIONS = {"ingress": Direction.INGRESS, "egress": Direction.EGRESS, "both": Direction.BOTH}


def _describe(value: object) -> str:
    if value is None:
        return "null (nothing)"
    kinds = {bool: "boolean", str: "string", int: "integer", float: "number", list: "list"}
    kind = kinds.get(type(value), "mapping" if isinstance(value, Mapping) else type(value).__name__)
    if isinstance(value, (list, Mapping)):
        return f"a {kind}"
    return f"the {kind} {str(value).lower() if isinstance(value, bool) else repr(value)}"


def _did_you_mean(word: object, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown(what: str, text: str, options: Mapping[str, object], known: str = "") -> _Invalid:
    hint, known = _did_you_mean(text.strip().lower(), options), known or ", ".join(options)
    return _Invalid(f"unknown {what} {text!r}{hint or ';'} supported: {known}")


def _string(value: object, what: str = "a string") -> str:
    if isinstance(value, str):
        return value
    hint = "; put it in quotes" if isinstance(value, (bool, int, float)) else ""
    raise _Invalid(f"expected {what}, got {_describe(value)}{hint}")


def _integer(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_describe(value)}")
        if not lo <= value <= hi:
            raise _Invalid(f"{value} is out of range {lo}-{hi}")
        return value

    return parse


def _choice(what: str, options: Mapping[str, T]) -> Callable[[object], T]:
    def parse(value: object) -> T:
        text = _string(value, f"a {what}")
        if text.strip().lower() in options:
            return options[text.strip().lower()]
        raise _unknown(what, text, options)

    return parse


def _interface(value: object) -> str:
    name = _string(value, "an interface name")
    if not name:
        raise _Invalid("is empty; give an interface name or a glob such as 'eth*'")
    if "/" in name or ":" in name or any(c.isspace() for c in name):
        raise _Invalid(f"{name!r} is not an interface name: '/', ':' and spaces are not allowed")
    if len(name) >= IFNAMSIZ and not _GLOB_CHARS.intersection(name):
        raise _Invalid(f"{name!r} has {len(name)} characters; interface names have at most {IFNAMSIZ - 1}")
    return name


def _session_name(value: object) -> str:
    name = _string(value, "a session name")
    if not _SESSION_NAME.fullmatch(name):
        raise _Invalid(f"{name!r} is not a session name: use 1-32 letters, digits, '_', '.' or '-'")
    return name


def _name_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid(f"expected a list of session names, got {_describe(value)}")
    for item in value:
        _string(item, "session names")
    return tuple(value)


def _remote(value: object) -> IPAddress:
    text = _string(value, "an IP address")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        hint = "; give the address without a prefix length" if "/" in text else ""
        raise _Invalid(f"{text!r} is not an IP address{hint}") from None
    if addr.is_multicast or addr.is_unspecified:
        kind = "a multicast" if addr.is_multicast else "the unspecified"
        raise _Invalid(f"{text} is {kind} address; give the collector's unicast address")
    return addr


def _cidr(value: object) -> IPNetwork | None:
    text = _string(value, "a CIDR or 'any'")
    if text.strip().lower() == "any":
        return None
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(f"{text!r} is not a CIDR") from None
    raise _Invalid(f"{text!r} has host bits set; did you mean {loose}?")


def _ports(value: object) -> PortRange:
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    else:
        text = _string(value, "a port, a range a-b or 'any'").strip()
        if text.lower() == "any":
            return ANY_PORTS
        m = _PORT.fullmatch(text)
        if not m:
            raise _Invalid(f"{text!r} is not a port, a range such as 1024-65535, or 'any'")
        lo, hi = int(m[1]), int(m[2] or m[1])
    for port in (lo, hi):
        if not 0 <= port <= 65535:
            raise _Invalid(f"port {port} is out of range 0-65535")
    if lo > hi:
        raise _Invalid(f"range {lo}-{hi} is backwards; write {hi}-{lo}")
    return (lo, hi)


def _protocol(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = _string(value, "a protocol name or number").strip().lower()
        if text in PROTOCOLS:
            return PROTOCOLS[text]
        if not text.isascii() or not text.isdigit():
            raise _unknown("protocol", str(value), PROTOCOLS, ", ".join(PROTOCOLS) + " or 1-255")
        number = int(text)
    if number == 0:
        raise _Invalid("protocol 0 cannot be matched (0 means any to the kernel); write 'any'")
    if not 0 < number <= 255:
        raise _Invalid(f"protocol number {number} is out of range 1-255")
    return number
