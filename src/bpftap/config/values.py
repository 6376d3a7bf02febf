"""Parsers of single config values (CIDRs, ports, protocols, names): raw YAML value in, typed value out;
and the YAML loader that refuses a repeated key.

Each raises `Invalid` with the message that follows ``<file>: <location>: ``
in a config error; bpftap.config.validate says where.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import yaml

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]
Ports = tuple[PortRange, ...]  # sorted, disjoint, not adjacent: the ports a rule field allows

ANY_PORTS: Ports = ((0, 65535),)
MAX_PORT_ITEMS = 256
IFNAMSIZ = 16  # the kernel's limit includes the terminating NUL
PROTOCOLS: dict[str, int | None] = {"any": None, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}

_SESSION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_PORT = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)
_GLOB_CHARS = frozenset("*?[")
T = TypeVar("T")

# bounds on hostile input: a config file's size, and the nodes its aliases may expand to
# (16,384 rules of a dozen fields are about 400,000 nodes)
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_YAML_NODES = 2_000_000

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


def shown(value: object) -> str:
    """`repr(value)` cut to a few dozen characters, for error messages about values of any size."""
    return _SHOWN.repr(value)


class Invalid(Exception):
    """A value is wrong; the message says what, the caller says where."""


_Invalid = Invalid


def _describe(value: object) -> str:
    if value is None:
        return "null (nothing)"
    kinds = {bool: "boolean", str: "string", int: "integer", float: "number", list: "list"}
    kind = kinds.get(type(value), "mapping" if isinstance(value, Mapping) else type(value).__name__)
    if isinstance(value, (list, Mapping)):
        return f"a {kind}"
    return f"the {kind} {str(value).lower() if isinstance(value, bool) else shown(value)}"


def _did_you_mean(word: object, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown(what: str, text: str, options: Mapping[str, object], known: str = "") -> _Invalid:
    hint, known = _did_you_mean(text.strip().lower(), options), known or ", ".join(options)
    return _Invalid(f"unknown {what} {shown(text)}{hint or ';'} supported: {known}")


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
        raise _Invalid(f"{shown(name)} is not an interface name: '/', ':' and spaces are not allowed")
    if len(name) >= IFNAMSIZ and not _GLOB_CHARS.intersection(name):
        raise _Invalid(f"{shown(name)} has {len(name)} characters; interface names have at most {IFNAMSIZ - 1}")
    return name


FILTER_MAX_CHARS = 4096


def _filter(value: object) -> str:
    """A pcap-filter expression that libpcap compiles and bpftap can run in the kernel."""
    from bpftap.filter import check_expression
    from bpftap.filter.pcap import FilterError
    from bpftap.filter.translate import UnsupportedFilter

    text = _string(value, "a pcap-filter expression such as 'udp port 53'")
    if not text.strip():
        raise _Invalid("is empty; give a pcap-filter expression such as 'udp port 53', or remove filter")
    if len(text) > FILTER_MAX_CHARS:
        raise _Invalid(f"has {len(text)} characters; at most {FILTER_MAX_CHARS}")
    try:
        check_expression(text)
    except UnsupportedFilter as e:
        raise _Invalid(f"{shown(text)}: {e.reason}") from None
    except FilterError as e:
        raise _Invalid(f"{shown(text)}: libpcap: {e.reason}") from None
    return text


def _session_name(value: object) -> str:
    name = _string(value, "a session name")
    if not _SESSION_NAME.fullmatch(name):
        raise _Invalid(f"{shown(name)} is not a session name: use 1-32 letters, digits, '_', '.' or '-'")
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
        raise _Invalid(f"{shown(text)} is not an IP address{hint}") from None
    if addr.is_multicast or addr.is_unspecified:
        kind = "a multicast" if addr.is_multicast else "the unspecified"
        raise _Invalid(f"{text} is {kind} address; give the collector's unicast address")
    return addr


def _remotes(value: object) -> tuple[IPAddress, ...]:
    """`remotes: [a, b, c]`: a collector group, 2-16 unicast addresses of one family."""
    if not isinstance(value, list) or not 2 <= len(value) <= 16:
        raise _Invalid("expected a list of 2 to 16 collector addresses (one collector: use remote)")
    addrs = tuple(_remote(v) for v in value)
    if len({a.version for a in addrs}) > 1:
        raise _Invalid("mixes IPv4 and IPv6; a group's collectors share one address family")
    if len(set(addrs)) < len(addrs):
        raise _Invalid("lists a collector twice")
    return addrs


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
        raise _Invalid(f"{shown(text)} is not a CIDR") from None
    raise _Invalid(f"{shown(text)} has host bits set; did you mean {loose}?")


def _port_range(value: object) -> PortRange | None:
    """One port or range a-b; None for 'any'."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    else:
        text = _string(value, "a port, a range a-b, a list of them, or 'any'").strip()
        if text.lower() == "any":
            return None
        m = _PORT.fullmatch(text)
        if not m:
            raise _Invalid(f"{shown(text)} is not a port, a range such as 1024-65535, or 'any'")
        lo, hi = int(m[1]), int(m[2] or m[1])
    for port in (lo, hi):
        if not 0 <= port <= 65535:
            raise _Invalid(f"port {port} is out of range 0-65535")
    if lo > hi:
        raise _Invalid(f"range {lo}-{hi} is backwards; write {hi}-{lo}")
    return (lo, hi)


def _ports(value: object) -> Ports:
    """A port, a range a-b, 'any', or a list of ports and ranges (YAML, or one string with commas)."""
    if isinstance(value, str) and "," in value:
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list):
        found = _port_range(value)
        return ANY_PORTS if found is None else (found,)
    if not value:
        raise _Invalid("is an empty list; give ports such as [53, 5353, 8000-8080], or 'any'")
    if len(value) > MAX_PORT_ITEMS:
        raise _Invalid(f"has {len(value)} items; at most {MAX_PORT_ITEMS} (use ranges)")
    ranges = []
    for i, item in enumerate(value):
        if isinstance(item, list):
            raise _Invalid(f"item {i} is a list; give ports and ranges such as [53, 8000-8080]")
        try:
            found = _port_range(item)
        except _Invalid as e:
            raise _Invalid(f"item {i}: {e}") from None
        if found is None:
            return ANY_PORTS
        ranges.append(found)
    merged: list[PortRange] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


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


def protocol_name(number: int | None) -> str:
    """The config spelling of a protocol number: 'udp', 'any' or '47'."""
    return next((name for name, value in PROTOCOLS.items() if value == number), str(number))


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"expected true or false, got {_describe(value)}")


def _invalid_on_value_error(parse: Callable[[object], T]) -> Callable[[object], T]:
    """`parse` with its ValueError turned into Invalid (for parsers shared with code outside the config)."""
    def wrapped(value: object) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None

    return wrapped


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` stands for with every alias expanded; shared nodes are counted once in `sizes`."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_nodes(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_nodes(k, sizes) + _expanded_nodes(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    if size > MAX_YAML_NODES:
        # the innermost node over the budget: its mark is the alias tree's root
        problem = f"aliases expand to more than {MAX_YAML_NODES:,} nodes; refusing what looks like an alias bomb"
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)
    return size


def node_lines(node: yaml.Node, path: str = "", depth: int = 4) -> dict[str, int]:
    """The line (1-based) of each entry and field down to `depth` levels, by its path in error messages.

    Paths are spelled as the validator reports them: `rules[1].dst_ports`.
    """
    out: dict[str, int] = {}
    if depth == 0:
        return out
    if isinstance(node, yaml.MappingNode):
        children = [(f"{path}.{k.value}" if path else str(k.value), k, v) for k, v in node.value
                    if isinstance(k, yaml.ScalarNode)]
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{path}[{i}]", v, v) for i, v in enumerate(node.value)]
    else:
        return out
    for where, at, value in children:
        out.setdefault(where, at.start_mark.line + 1)
        for key, line in node_lines(value, where, depth - 1).items():
            out.setdefault(key, line)
    return out


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (libyaml's parser where PyYAML has it: 3x faster) that rejects a key repeated in one mapping
    (PyYAML keeps the last), and a document whose aliases expand to more than MAX_YAML_NODES nodes (billion
    laughs) before building anything."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        # the composed graph shares aliased nodes, so this walk is linear in the file's size;
        # (a recursive alias cycles; PyYAML's composer refuses those already)
        _expanded_nodes(node, {})
        self.lines = node_lines(node)
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int)) and key in seen:
                problem = f"duplicate key {shown(key)}; each key may appear once"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key if isinstance(key, (str, int)) else id(key_node))
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping
