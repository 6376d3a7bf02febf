"""The configuration's model: sources, sessions and rules as plain frozen dataclasses, and their limits.

No kernel types and no parsing: `bpftap.config.validate` checks YAML into
these, `bpftap.compile` turns them into map entries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bpftap import abi
from bpftap.config.pod_selector import PodSelector
from bpftap.config.values import ANY_PORTS, IPAddress, IPNetwork, Ports
from bpftap.tunnels import TUNNEL_ID_FIELDS, TYPES, UDP_PORTS

VXLAN_PORT, GENEVE_PORT = UDP_PORTS["vxlan"], UDP_PORTS["geneve"]
GRE_KEY_MAX = 2**32 - 1
RULE_NUMBER_MAX = 2**31 - 1
PRIORITIES = ("high", "normal", "low")
OVERSIZE = ("fragment", "resegment", "truncate")
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})
ONE_FAMILY_PROTOCOLS = {IPPROTO_ICMP: 4, IPPROTO_ICMPV6: 6}  # protocol -> the only family it exists in


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
    `attach` (pod sources only): `host` (that host-side interface), `inside`
    (the pod's own eth0, in its network namespace) or `auto` (inside where
    the host side cannot see everything: see bpftap.agent.inside).
    """

    interface: str = ""
    direction: Direction = Direction.BOTH
    pods: PodSelector | None = None
    attach: str = "host"


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
        return self.gso and TYPES[self.tunnel].gso and not self.gre_seq and not self.truncates and self.sample == 1 \
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
    src_ports: Ports = ANY_PORTS  # sorted, disjoint ranges
    dst_ports: Ports = ANY_PORTS
    sessions: tuple[str, ...] = ()
    vlan: int | None = None  # outer VLAN id, or fields.VLAN_UNTAGGED
    tcp_flags: tuple[int, int] | None = None  # (mask, value)
    interface: str | None = None  # name or glob of the source interface
    filter: str | None = None  # a pcap-filter expression (tcpdump syntax) the frame must match too

    @property
    def family(self) -> int | None:
        """4 or 6 when a CIDR or the protocol (icmp, icmpv6) ties the rule to one family."""
        net = self.src or self.dst
        return net.version if net is not None else ONE_FAMILY_PROTOCOLS.get(self.protocol or 0)


@dataclass(frozen=True)
class Link:
    """One entry of `links:`: egress devices copies share with originals, and the room originals keep."""

    interface: str  # a name or a glob
    capacity: int = 0  # bits per second; 0: the device's speed as its driver reports it
    headroom: float = 5.0  # percent of capacity copies never take: kept for originals' bursts


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
    links: tuple[Link, ...] = ()
