"""Session records: the `sessions` map value of one collector, and how a group's flows spread (pure, no kernel).

The agent looks up the next hop of each collector (bpftap.netlink) and
writes what these functions compute (bpftap.agent.tables); everything that
decides a value lives here: flags, the outer header length, the snaplen a
truncating session cuts to, the names and identities counters are kept
under, and the rendezvous hashing of a group's flow buckets.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from bpftap import abi
from bpftap.compile.slots import session_header_len
from bpftap.config.model import Session
from bpftap.config.values import IPAddress
from bpftap.tunnels import TYPES
from bpftap.tunnels.common import ETH_HLEN

# a session's counters and sequence numbers are keyed by (name, tunnel, remote, tunnel id)
SessionIdentity = tuple[str, str, IPAddress, int]


class Hop(Protocol):
    """Where copies toward one collector leave this host (bpftap.netlink.NextHop is the real one)."""

    @property
    def ifindex(self) -> int: ...
    @property
    def src(self) -> IPAddress: ...
    @property
    def src_mac(self) -> bytes: ...
    @property
    def dst_mac(self) -> bytes: ...
    @property
    def mtu(self) -> int: ...


def member_name(session: Session, member: int) -> str:
    """What a collector of a session is called in counters: the name, or `name@remote` in a group."""
    return f"{session.name}@{session.members[member]}" if session.remotes else session.name


def session_identity(session: Session, member: int = 0) -> SessionIdentity:
    """What keeps a collector's counters and sequence numbers across reloads while it stays the same."""
    return (member_name(session, member), session.tunnel, session.members[member], session.tun_id)


def session_flags(session: Session, on_link: bool = False) -> int:
    """The record's MIRROR_SF_* flags; `on_link`: its copies leave by a device listed under `links:`."""
    return (abi.MIRROR_SF_KEY if session.gre_key else 0) | (abi.MIRROR_SF_SEQ if session.gre_seq else 0) \
        | (abi.MIRROR_SF_PLATFORM if session.erspan_platform else 0) \
        | (abi.MIRROR_SF_RESEGMENT if session.oversize == "resegment" else 0) \
        | (abi.MIRROR_SF_LINK if on_link else 0)


def session_snaplen(session: Session, hop: Hop | None) -> int:
    """Inner frame bytes stage 2 keeps in each copy (0: the whole frame).

    The session's snaplen; with `oversize: truncate` and a known next hop,
    at most what fits under the egress MTU with the outer headers (never
    less than an Ethernet header).
    """
    snaplen = session.snaplen
    if session.oversize == "truncate" and hop is not None:
        # the inner frame's room under the egress MTU: what stage 2 cuts a copy to
        fit = max(ETH_HLEN, hop.mtu - (session_header_len(session) - ETH_HLEN))
        snaplen = min(snaplen or fit, fit)
    return snaplen


def session_record(
    session: Session, hop: Hop | None, stats_id: int, member: int = 0, on_link: bool = False
) -> abi.MirrorSession:
    """The `sessions` map value of `session`'s collector `member`, its counters at `stats_id`.

    It carries the tunnel type, its identifier, GRE options and the outer
    header length the encap program grows the packet to. Without a next hop
    the outer source, MACs, ifindex and MTU stay zero: the kernel counts its
    copies as unresolved.
    """
    value = abi.MirrorSession(
        tun_id=session.tun_id,
        dst_port=session.port,
        hdr_len=session_header_len(session),
        family=session.remote.version,
        tunnel=TYPES[session.tunnel].kernel_code,
        flags=session_flags(session, on_link),
        stats_id=stats_id,
        sample=session.sample,
        rate_pps=session.rate_limit[0],
        rate_bps=session.rate_limit[1],
        group_size=len(session.members),
        snaplen=session_snaplen(session, hop),
        priority=abi.MirrorPriority[session.priority.upper()],
    )
    abi.set_addr(value.outer_dst, session.members[member].packed)
    if hop is not None:
        value.ifindex, value.mtu = hop.ifindex, min(hop.mtu, 0xFFFF)
        abi.set_addr(value.outer_src, hop.src.packed)
        value.src_mac[:] = hop.src_mac
        value.dst_mac[:] = hop.dst_mac
    return value


def rendezvous(members: tuple[object, ...], buckets: int) -> list[int]:
    """For each bucket, the index of the member with the highest hash of (bucket, member)."""

    def score(bucket: int, member: object) -> int:
        return int.from_bytes(hashlib.blake2b(f"{bucket}/{member}".encode(), digest_size=8).digest(), "big")

    return [max(range(len(members)), key=lambda i: score(b, members[i])) for b in range(buckets)]


def group_buckets(session: Session) -> list[int]:
    """Which member of a collector group takes each of its abi.GROUP_BUCKETS flow buckets.

    Each bucket goes to the member whose hash with it is highest, so
    removing a collector moves only the flows it had.
    """
    return rendezvous(session.members, abi.GROUP_BUCKETS)
