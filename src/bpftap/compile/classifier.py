"""Pure rules compiler: a Config's rules in, the classifier's tables out (no kernel).

The kernel classifies a packet in eight dimensions (bpf/classify.bpf.h):
source and destination address (an LPM trie over the rules' CIDRs), source
and destination port (a table of every port), direction x family x
protocol (a table of 1,024 keys), outer VLAN id, TCP flags, and the source
interface (a hash by ifindex). Each maps the packet's value to a class:
the set of rules that value allows, as a bitmap of rule positions. The first
matching rule is the lowest position set in all eight bitmaps. Classes are
shared: identical sets get one id.

Why this shape (measured, `make bench`): a linear scan cost 55 ns a packet
with 10 rules and 611 ns with 256 (2.2 ns a rule), so 10,000 rules would
cost ~22 us. Here the work is five class lookups, five bitmap lookups and
one AND per candidate word, whatever the number of rules; the summary words
(one bit per non-empty word) find candidate words without scanning. The
meta and port tables give each class's coarse mask with its id
(`coarse_mask`): a packet whose meta and destination port masks share no
bit matches nothing, and no bitmap is read (tier 1's no-match cost on
kernel 6.18: 3.0-3.1x the empty program before, 2.4-2.9x after).

Addresses: for a CIDR E in the trie, the rules allowing every address whose
longest match is E are those without that field (any) and those whose CIDR
contains E, so the trie holds every rule CIDR plus a /0 per family. Ports:
the rules' range boundaries cut 0-65535 into intervals, one class each,
plus one for packets without ports (only rules with the full range allow
them). `match_compiled` runs the same lookups in Python, for tests.
"""

from __future__ import annotations

import ctypes
import fnmatch
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bpftap import abi
from bpftap.compile.reference import PacketInfo, filter_accepts
from bpftap.config.model import Action, Config, Direction, Rule
from bpftap.config.values import ANY_PORTS, IPNetwork

_ACTIONS = {Action.MIRROR: abi.MirrorAction.MIRROR, Action.SKIP: abi.MirrorAction.SKIP}
_ANY_NET = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
ADDR_DIMS = (abi.MirrorDim.SRC, abi.MirrorDim.DST)
PORT_DIMS = (abi.MirrorDim.SPORT, abi.MirrorDim.DPORT)


@dataclass(frozen=True)
class AddrEntry:
    """One entry of the `addr_classes` trie."""

    dim: abi.MirrorDim
    network: IPNetwork
    class_id: int

    def key(self, slot: int) -> abi.AddrKey:
        """Its trie key in rule slot `slot`: slot, dim and family are 32 fixed bits ahead of the address."""
        key = abi.AddrKey(prefixlen=32 + self.network.prefixlen, slot=slot, dim=self.dim, family=self.network.version)
        key.addr[:] = self.network.network_address.packed.ljust(16, b"\0")
        return key


@dataclass
class CompiledRules:
    """Everything the kernel needs for one rule slot, in host terms.

    `rules[i]` is what the rule at position i does; `classes[c]` is class c's
    rule set as a Python int (bit i = position i); `ports[dim]` has
    abi.PORT_KEYS class ids; `meta` has abi.META_KEYS (see meta_key()).
    """

    rules: list[abi.MirrorRule]
    classes: list[int]
    addr: list[AddrEntry]
    ports: dict[abi.MirrorDim, list[int]]
    meta: list[int]
    vlan: list[int]
    tcp_flags: list[int]
    iface: dict[int, int]  # ifindex (0: any other interface) -> class id
    ifindex: dict[str, int]  # the interface names the rules were compiled against
    filters: list[tuple[int, str]] = field(default_factory=list)  # (position, pcap-filter expression)
    _index: dict[tuple[abi.MirrorDim, int], dict[int, dict[IPNetwork, int]]] = field(default_factory=dict, repr=False)

    @property
    def words(self) -> int:
        """Bitmap words in use (64 rules each)."""
        return (len(self.rules) + 63) // 64


def meta_key(direction: Direction, family: int, proto: int) -> int:
    """Key of `meta_classes` within a slot, as classify() computes it."""
    return (512 if direction == Direction.EGRESS else 0) + (256 if family == 6 else 0) + proto


class _Interner:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.classes: list[int] = []

    def __call__(self, bits: int) -> int:
        found = self.ids.get(bits)
        if found is None:
            found = self.ids[bits] = len(self.classes)
            self.classes.append(bits)
        return found


def _addr_entries(rules: list[Rule], dim: abi.MirrorDim, intern: _Interner) -> list[AddrEntry]:
    attr = "src" if dim == abi.MirrorDim.SRC else "dst"
    anywhere = 0
    exact: dict[IPNetwork, int] = defaultdict(int)
    for pos, rule in enumerate(rules):
        net = getattr(rule, attr)
        if net is None:
            anywhere |= 1 << pos
        else:
            exact[net] |= 1 << pos
    entries = []
    for family in (4, 6):
        nets = {n for n in exact if n.version == family} | {_ANY_NET[family]}
        lengths = sorted({n.prefixlen for n in nets})
        for net in nets:
            bits = anywhere
            for plen in lengths:
                if plen > net.prefixlen:
                    break
                bits |= exact.get(net.supernet(new_prefix=plen) if plen < net.prefixlen else net, 0)
            entries.append(AddrEntry(dim, net, intern(bits)))
    return entries


def _port_classes(rules: list[Rule], dim: abi.MirrorDim, intern: _Interner) -> list[int]:
    attr = "src_ports" if dim == abi.MirrorDim.SPORT else "dst_ports"
    edges: dict[int, int] = defaultdict(int)  # port -> bits toggled there
    full = 0
    for pos, rule in enumerate(rules):
        ranges = getattr(rule, attr)
        for lo, hi in ranges:  # disjoint and not adjacent: each toggles the rule on, then off
            edges[lo] ^= 1 << pos
            edges[hi + 1] ^= 1 << pos
        if ranges == ANY_PORTS:
            full |= 1 << pos
    table = [0] * abi.PORT_KEYS
    points = [*sorted(p for p in edges if p <= 0xFFFF), 0x10000]
    current = 0
    start = 0
    for point in points:
        if point > start:
            table[start:point] = [intern(current)] * (point - start)
        current ^= edges.get(point, 0)
        start = point
    table[abi.NO_PORTS] = intern(full)
    return table


def _meta_classes(rules: list[Rule], intern: _Interner) -> list[int]:
    groups: dict[tuple[int, int, int], int] = defaultdict(int)
    for pos, rule in enumerate(rules):
        groups[(int(rule.direction), rule.family or 0, rule.protocol or 0)] |= 1 << pos
    table = [0] * abi.META_KEYS
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for family in (4, 6):
            # rules whose protocol is any, and those naming each protocol
            base = 0
            by_proto: defaultdict[int, int] = defaultdict(int)
            for (dirs, fam, prot), group in groups.items():
                if dirs & int(direction) and fam in (0, family):
                    if prot:
                        by_proto[prot] |= group
                    else:
                        base |= group
            for proto in range(256):
                table[meta_key(direction, family, proto)] = intern(base | by_proto.get(proto, 0))
    return table


def _value_classes(rules: list[Rule], keys: int, allows: Callable[[Rule, int], bool], intern: _Interner) -> list[int]:
    """Class per key of a small dimension: rules without the field allow every key."""
    table = []
    for key in range(keys):
        bits = 0
        for pos, rule in enumerate(rules):
            if allows(rule, key):
                bits |= 1 << pos
        table.append(intern(bits))
    return table


def _vlan_classes(rules: list[Rule], intern: _Interner) -> list[int]:
    anyvlan = sum(1 << pos for pos, r in enumerate(rules) if r.vlan is None)
    exact: dict[int, int] = defaultdict(int)
    for pos, rule in enumerate(rules):
        if rule.vlan is not None:
            exact[rule.vlan] |= 1 << pos
    return [intern(anyvlan | exact.get(key, 0)) for key in range(abi.VLAN_KEYS)]


def _flag_classes(rules: list[Rule], intern: _Interner) -> list[int]:
    def allows(rule: Rule, key: int) -> bool:
        if rule.tcp_flags is None:
            return True
        return key != abi.NOT_TCP and key & rule.tcp_flags[0] == rule.tcp_flags[1]

    constrained = [r for r in rules if r.tcp_flags is not None]
    if not constrained:  # the common case: one class for every key
        return [intern((1 << len(rules)) - 1)] * abi.FLAG_KEYS
    return _value_classes(rules, abi.FLAG_KEYS, allows, intern)


def _iface_classes(rules: list[Rule], ifindex: Mapping[str, int], intern: _Interner) -> dict[int, int]:
    anywhere = sum(1 << pos for pos, r in enumerate(rules) if r.interface is None)
    table = {0: intern(anywhere)}
    for name, index in ifindex.items():
        bits = anywhere
        for pos, rule in enumerate(rules):
            if rule.interface is not None and fnmatch.fnmatchcase(name, rule.interface):
                bits |= 1 << pos
        table[index] = intern(bits)
    return table


def compile_rules(config: Config, slots: Mapping[str, int], ifindex: Mapping[str, int] | None = None) -> CompiledRules:
    """Compile `config.rules` (in rule-number order) for one rule slot.

    `ifindex` names the source interfaces (name -> ifindex) that rules with
    an `interface:` field are matched against.

    Raises ValueError if a rule names a session without a slot, or there
    are more than abi.MAX_RULES rules (a validated Config has neither).
    """
    rules = sorted(config.rules, key=lambda r: r.number)
    if len(rules) > abi.MAX_RULES:
        raise ValueError(f"{len(rules)} rules; at most {abi.MAX_RULES} fit")
    groups = {s.name for s in config.sessions if len(s.members) > 1}
    records = []
    for rule in rules:
        mask = 0
        for name in rule.sessions:
            slot = slots.get(name)
            if slot is None or not 0 <= slot < abi.MAX_SESSIONS:
                raise ValueError(f"rule {rule.number}: session {name!r} has no slot (got {slot})")
            mask |= 1 << slot
        flags = abi.MIRROR_RF_GROUP if groups.intersection(rule.sessions) else 0
        if rule.filter is not None:
            flags |= abi.MIRROR_RF_FILTER
        snap = sum(1 << slots[s.name] for s in config.sessions if s.truncates and s.name in rule.sessions)
        # (a clone of its own each, carried like a truncating session's: slots below MAX_SESSIONS - 1)
        gso = sum(1 << slots[s.name] for s in config.sessions
                  if s.gso_capable and s.name in rule.sessions and slots[s.name] < abi.MAX_SESSIONS - 1)
        records.append(abi.MirrorRule(sessions=mask, snap_sessions=snap, gso_sessions=gso, number=rule.number,
                                      action=_ACTIONS[rule.action], flags=flags))
    intern = _Interner()
    addr = [e for dim in ADDR_DIMS for e in _addr_entries(rules, dim, intern)]
    ports = {dim: _port_classes(rules, dim, intern) for dim in PORT_DIMS}
    meta = _meta_classes(rules, intern)
    vlan = _vlan_classes(rules, intern)
    tcp_flags = _flag_classes(rules, intern)
    ifindex = dict(ifindex or {})
    iface = _iface_classes(rules, ifindex, intern)
    filters = [(i, rule.filter) for i, rule in enumerate(rules) if rule.filter is not None]
    return CompiledRules(records, intern.classes, addr, ports, meta, vlan, tcp_flags, iface, ifindex, filters)


def class_capacity(classes: int) -> int:
    """Classes per slot to size `class_bits` for a rule set with `classes` classes: room to grow 2x."""
    capacity = abi.CLASS_CAPACITY
    while capacity < 2 * classes:
        capacity *= 2
    return capacity


def coarse_mask(bits: int) -> int:
    """A class's coarse mask (`struct class_ref`): bit b set when it holds a rule at positions b * COARSE_RULES ...

    Block by block from the lowest rule (most classes hold few): 16,384 classes in 0.02 s.
    """
    mask = base = 0
    while bits:
        block = ((bits & -bits).bit_length() - 1) // abi.COARSE_RULES
        mask |= 1 << (base + block)
        bits >>= (block + 1) * abi.COARSE_RULES
        base += block + 1
    return mask


def rule_bits(bits: int, words: int) -> abi.RuleBits:
    """A class's bitmap as `struct rule_bits` (summary bit j set when word j is not zero)."""
    out = abi.RuleBits()
    raw = bits.to_bytes(abi.RULE_WORDS * 8, "little")
    ctypes.memmove(out.words, raw, len(raw))
    zero = bytes(8)
    for j in range(words):
        if raw[8 * j : 8 * j + 8] != zero:
            out.summary[j // 64] |= 1 << (j % 64)
    return out


def _longest(compiled: CompiledRules, dim: abi.MirrorDim, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    if not compiled._index:
        for e in compiled.addr:
            compiled._index.setdefault((e.dim, e.network.version), {}).setdefault(e.network.prefixlen, {})[
                e.network
            ] = e.class_id
    by_len = compiled._index[(dim, addr.version)]
    for plen in sorted(by_len, reverse=True):
        found = by_len[plen].get(ipaddress.ip_network(f"{addr}/{plen}", strict=False))
        if found is not None:
            return found
    raise AssertionError("every family has a /0 entry")


def match_compiled(compiled: CompiledRules, pkt: PacketInfo) -> int | None:
    """Position of the first rule matching `pkt`, found the way classify() finds it."""
    if pkt.family not in (4, 6) or pkt.src is None or pkt.dst is None:
        return None
    bits = compiled.classes[compiled.meta[meta_key(pkt.direction, pkt.family, pkt.proto)]]
    bits &= compiled.classes[_longest(compiled, abi.MirrorDim.SRC, pkt.src)]
    bits &= compiled.classes[_longest(compiled, abi.MirrorDim.DST, pkt.dst)]
    for dim, port in ((abi.MirrorDim.SPORT, pkt.sport), (abi.MirrorDim.DPORT, pkt.dport)):
        bits &= compiled.classes[compiled.ports[dim][abi.NO_PORTS if port is None else port]]
    bits &= compiled.classes[compiled.vlan[pkt.vlan]]
    bits &= compiled.classes[compiled.tcp_flags[abi.NOT_TCP if pkt.tcp_flags is None else pkt.tcp_flags]]
    index = compiled.ifindex.get(pkt.ifname or "", 0)
    bits &= compiled.classes[compiled.iface.get(index, compiled.iface[0])]
    # a filter rule is a candidate only if its expression accepts the frame
    for position, expression in compiled.filters:
        if bits >> position & 1 and not filter_accepts(expression, pkt):
            bits &= ~(1 << position)
    return (bits & -bits).bit_length() - 1 if bits else None
