"""Expressions and frames for the rule filters' differential test (tests/bpf/test_filter_diff.py)."""

from __future__ import annotations

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from bpftap.filter.pcap import FilterError, compile_filter

PRIMITIVES = [
    # hosts and nets, both families
    "host 198.18.0.1", "src host 198.18.0.1", "dst host 198.18.1.2", "host 10.1.2.3", "net 198.18.0.0/16",
    "src net 198.18.1.0/24", "dst net 10.0.0.0/8", "net 192.168.0.0/16", "not net 198.18.0.0/15",
    "host 2001:db8::1", "src host 2001:db8:1::2", "net 2001:db8::/32", "dst net 2001:db8:1::/48",
    "ip6 net 2001:db8:2::/64", "ip host 198.18.0.1", "ip6 host 2001:db8::1",
    # ports and ranges
    "port 53", "udp port 53", "tcp port 80", "tcp dst port 443", "src port 1234", "dst port 5353",
    "portrange 1000-2000", "tcp portrange 0-1023", "udp src portrange 5000-6000", "sctp port 9",
    "not port 22", "port 53 or port 5353", "ip6 and udp port 53", "ip and tcp port 443",
    # protocols
    "tcp", "udp", "icmp", "icmp6", "sctp", "ip", "ip6", "arp", "ip proto 47", "ip6 proto 58", "proto 17",
    # TCP flags and ICMP fields
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn", "tcp[13] & 0x12 == 0x12",
    "tcp[tcpflags] & tcp-rst != 0", "tcp[tcpflags] & tcp-fin != 0", "icmp[icmptype] == icmp-echo",
    "icmp[icmptype] != icmp-echo and icmp[icmptype] != icmp-echoreply", "icmp6[icmp6type] == icmp6-echo",
    "icmp[0] == 3",
    # VLAN
    "vlan", "vlan 7", "vlan 100", "vlan and udp", "vlan 100 and vlan 7", "vlan and ip6", "not vlan",
    "vlan 7 and ip", "vlan 100 and tcp port 80",
    # byte offsets, lengths, arithmetic
    "ip[8] < 64", "ip[0] & 0xf > 5", "ether[12:2] == 0x0800", "ether[0] & 1 != 0", "ether[6:4] == 0x02b70000",
    "ip[2:2] > 1000", "ip[6:2] & 0x1fff != 0", "ip[6] & 0x20 != 0", "ip6[6] == 44",
    "ip[2:2] - ((ip[0]&0xf)<<2) > 40", "ip[2:2] / 4 > 100", "ip[2:2] % 7 == 3", "ip[9] * 2 == 34",
    "ip[1] ^ 0xff == 0xff", "ip[3] | 1 == 1", "(ip[0] >> 4) == 4", "ip[0] << 28 == 0x50000000",
    "ip[2:2] - 20 < 0", "-ip[8] & 0xff == 192", "tcp[0:2] + tcp[2:2] > 6000", "udp[4:2] > 100",
    "tcp[((tcp[12] & 0xf0) >> 2):4] == 0x47455420", "tcp[(tcp[12]>>2):2] == 0x1603",
    "len <= 100", "len > 1000", "greater 500", "less 64", "len == 60", "len - 14 > 1480",
    "ip[4:2] / ip[8] > 3", "ip[4:2] % (ip[8] & 3) == 1", "ether[len - 1] & 1 == 1", "ether[len - 4:4] != 0",
    "ip[len - 40:2] > 0x8000",
    # link layer
    "ether host 02:b7:00:00:01:00", "ether src 02:b7:00:00:02:00", "ether broadcast", "ether multicast",
    "broadcast", "multicast", "ip broadcast", "ip multicast", "ip6 multicast", "ether proto 0x88cc",
    "arp and arp[6:2] == 1", "ip[6:2] & 0x3fff == 0",
]


def expressions(count: int, seed: int = 1) -> list[str]:
    """PRIMITIVES, then random and/or/not nestings of them, `count` in all; each compiles."""
    rng = random.Random(seed)
    out = [e for e in PRIMITIVES if _compiles(e)]
    while len(out) < count:
        a, b, c = rng.sample(PRIMITIVES, 3)
        shape = rng.choice(["({a}) and ({b})", "({a}) or ({b})", "not ({a}) and ({b})",
                            "({a}) or (({b}) and not ({c}))", "(({a}) or ({b})) and ({c})", "not (({a}) or ({b}))"])
        expr = shape.format(a=a, b=b, c=c)
        if expr not in out and _compiles(expr):
            out.append(expr)
    return out


def _compiles(expr: str) -> bool:
    try:
        compile_filter(expr)
        return True
    except FilterError:
        return False


def base_frames() -> list[bytes]:
    """Real frames of every shape the expressions look at."""
    macs = [("02:b7:00:00:01:00", "02:b7:00:00:02:00"), ("ff:ff:ff:ff:ff:ff", "02:b7:00:00:01:00"),
            ("01:00:5e:00:00:fb", "02:b7:00:00:02:00"), ("33:33:00:00:00:01", "02:b7:00:00:03:00")]
    v4 = [("198.18.0.1", "198.18.1.2"), ("10.1.2.3", "198.18.0.1"), ("192.168.1.1", "224.0.0.251"),
          ("198.19.5.5", "255.255.255.255"), ("198.18.1.255", "10.9.8.7")]
    v6 = [("2001:db8::1", "2001:db8:1::2"), ("2001:db8:2::5", "ff02::1"), ("fe80::1", "2001:db8::1")]
    l4 = [TCP(sport=1234, dport=80, flags="S"), TCP(sport=443, dport=50000, flags="SA"), TCP(dport=443, flags="A"),
          TCP(sport=22, dport=1000, flags="R"), TCP(dport=80, flags="PA") / Raw(b"GET / HTTP/1.1\r\n"),
          TCP(dport=443, flags="FA"), UDP(sport=1234, dport=53), UDP(sport=53, dport=5353), UDP(sport=5500, dport=9),
          ICMP(type=8), ICMP(type=0), ICMP(type=3, code=3) / IP(dst="198.18.0.1") / UDP(dport=53),
          SCTP(sport=9, dport=9)]
    frames = []
    for i, (dst, src) in enumerate(macs):
        eth = Ether(dst=dst, src=src)
        for s, d in v4:
            for p in l4:
                for pay in (b"", bytes(range(256)) * (i + 1)):
                    frames.append(bytes(eth / IP(src=s, dst=d, ttl=64 - 17 * i) / p / Raw(pay)))
            frames.append(bytes(eth / IP(src=s, dst=d, options=[IPOption_RR()]) / TCP(flags="S")))
            frames.append(bytes(eth / IP(src=s, dst=d, flags="MF", frag=0) / UDP(dport=53) / Raw(b"x" * 64)))
            frames.append(bytes(eth / IP(src=s, dst=d, frag=100) / Raw(b"y" * 64)))
        for s, d in v6:
            for p in l4[:9]:
                frames.append(bytes(eth / IPv6(src=s, dst=d) / p))
            for ext in (IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment()):
                frames.append(bytes(eth / IPv6(src=s, dst=d) / ext / TCP(dport=80, flags="S")))
                frames.append(bytes(eth / IPv6(src=s, dst=d) / ext / UDP(dport=53)))
            frames.append(bytes(eth / IPv6(src=s, dst=d) / ICMPv6EchoRequest()))
        for tags in ([Dot1Q(vlan=7)], [Dot1Q(vlan=100)], [Dot1AD(vlan=100), Dot1Q(vlan=7)]):
            head = eth
            for t in tags:
                head = head / t
            frames.append(bytes(head / IP(src="198.18.0.1", dst="198.18.1.2") / TCP(dport=80, flags="S")))
            frames.append(bytes(head / IP(src="10.1.2.3", dst="198.18.0.1") / UDP(dport=53)))
            frames.append(bytes(head / IPv6(src="2001:db8::1", dst="2001:db8:1::2") / UDP(dport=53)))
        frames.append(bytes(eth / ARP(op=1, psrc="198.18.0.1", pdst="198.18.0.2")))
        frames.append(bytes(eth / ARP(op=2)))
        frames.append(bytes(Ether(dst=dst, src=src, type=0x88CC) / Raw(b"\x02\x07" * 20)))
    return frames


def corpus(count: int, seed: int = 2, max_len: int = 3500) -> list[bytes]:
    """`count` frames: the base frames, then mutations of them (bytes flipped, cut short, grown) and random bytes."""
    rng = random.Random(seed)
    base = base_frames()
    out = list(base)
    while len(out) < count:
        f = bytearray(rng.choice(base))
        kind = rng.random()
        if kind < 0.45:  # flip a few bytes, mostly in the headers
            for _ in range(rng.randint(1, 4)):
                f[min(int(rng.expovariate(1 / 40)), len(f) - 1)] = rng.randrange(256)
        elif kind < 0.7:  # cut short anywhere (at least the 14-byte Ethernet header BPF_PROG_TEST_RUN needs)
            f = f[: rng.randint(14, len(f))]
        elif kind < 0.85:  # grow, up to what BPF_PROG_TEST_RUN takes
            f += rng.randbytes(rng.randint(0, max_len - len(f)))
        else:  # random bytes behind a random EtherType
            etype = rng.choice([b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x08\x06"])
            f = bytearray(rng.randbytes(12) + etype + rng.randbytes(rng.randint(0, 200)))
        out.append(bytes(f[:max_len]).ljust(_shortest(f), b"\0"))
    return out


def _shortest(frame: bytes | bytearray) -> int:
    """BPF_PROG_TEST_RUN refuses an IPv4 frame shorter than its header, IPv6 too (cut-short ones of other
    types, VLAN-tagged IP among them, still get through)."""
    return {b"\x08\x00": 34, b"\x86\xdd": 54}.get(bytes(frame[12:14]), 14)
