"""Rule filters in the lab (issue 15): a pcap-filter expression picks the frames libpcap picks, from real traffic.

The tapped host's eth0 is mirrored both ways to the collector's kernel VXLAN
device. What it must copy is decided here by libpcap itself
(`pcap_offline_filter`) on the frames a sniffer on that interface saw, as
tcpdump would see them (an outer VLAN tag the kernel holds beside the frame
put back in). A CPU is kept busy meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.filter.pcap import compile_filter
from bpftap.lab import Lab

from .agent_lab import Agent, received, send_frames, sniffing
from .test_big_packets import busy_cpu

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

CONFIG = """
sources:
  - interface: eth0
sessions:
  - {{name: ids, remote: "{col4}", vni: 42}}
rules:
{rules}
"""
EXPRESSION = "udp port 53 or tcp[tcpflags] & tcp-syn != 0"
VLAN = 100

# real traffic from src: DNS-like and other UDP, TCP handshakes (SYN, SYN-ACK) and refused connects (SYN, RST),
# pings; over the VLAN device too when given. dst listens on TCP 8080; nothing listens on 8081.
TRAFFIC = """
import socket, sys, time
dst4, dst6 = sys.argv[1], sys.argv[2]
for fam, dst in ((socket.AF_INET, dst4), (socket.AF_INET6, dst6)):
    u = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(20):
        u.sendto(b"q%d" % i, (dst, 53))
        u.sendto(b"o%d" % i, (dst, 5353))
    for port in (8080, 8081) * 5:
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.settimeout(2)
        try:
            t.connect((dst, port))
            t.sendall(b"payload after the handshake")
        except OSError:
            pass
        t.close()
    time.sleep(0.2)
"""
LISTEN = """
import socket, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(64)
    while True:
        c, _ = s.accept(); c.recv(100); c.close()
threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
print("ready", flush=True)
serve(socket.AF_INET, "0.0.0.0")
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        col = lab.col
        lab.run(col, ["ip", "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4789",
                      "local", str(col.ip4), "nolearning"])
        lab.run(col, ["sysctl", "-qw", "net.ipv6.conf.vx42.disable_ipv6=1"])
        lab.run(col, ["ip", "link", "set", "vx42", "up"])
        # full checksums on the wire, as a NIC sends them (veth leaves them for the receiver to trust), so the
        # frames the sniffer sees are byte for byte what copies carry
        for host in (lab.src, lab.dst):
            lab.run(host, ["ethtool", "-K", "eth0", "tx", "off"])
        yield lab


def mirrored(lab: Lab, rules: str, crafted: list[bytes] = ()) -> tuple[Counter[bytes], Counter[bytes], dict]:
    """Traffic from src to dst (and `crafted` frames from src's eth0) with the rules live:
    (frames on tap.eth0, copies decapsulated, status)."""
    targets = [(lab.dst, str(lab.dst.ip4), str(lab.dst.ip6))]
    listeners = [lab.popen(host, [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
                 for host, _, _ in targets]
    for proc in listeners:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    agent = Agent(lab, CONFIG.format(col4=lab.col.ip4, rules=rules))
    try:
        with busy_cpu(), sniffing(lab, [(lab.tap, "eth0"), (lab.col, "vx42")], seconds=8) as seen:
            for _, v4, v6 in targets:
                lab.run(lab.src, [sys.executable, "-c", TRAFFIC, v4, v6], timeout=60)
            if crafted:
                send_frames(lab, lab.src, "eth0", list(crafted))
        status = agent.status()
    finally:
        assert agent.stop() == 0
        for proc in listeners:
            proc.kill()
            proc.wait()
    on_link = Counter(f for _, f in seen["tap.eth0"])
    return on_link, received(seen["col.vx42"]), status


def expected(on_link: Counter[bytes], expression: str) -> Counter[bytes]:
    match = compile_filter(expression).matcher()
    return Counter({f: n for f, n in on_link.items() if match(f)})


def test_a_filter_rule_mirrors_exactly_the_frames_libpcap_picks(lab: Lab) -> None:
    rules = f'  - {{number: 10, filter: "{EXPRESSION}", sessions: [ids]}}'
    on_link, copies, status = mirrored(lab, rules)
    want = expected(on_link, EXPRESSION)
    # the traffic had both kinds (20 DNS queries per family; libpcap's tcp[] reads IPv4 only: 10 SYNs and
    # 5 SYN-ACKs), and more besides
    assert sum(want.values()) >= 2 * 20 + 10 + 5 and sum(on_link.values()) > sum(want.values()) + 40
    assert copies == want
    assert status["counters"]["filter_run"] >= sum(on_link.values()) - 20


def tagged_frames(lab: Lab) -> list[bytes]:
    """Frames with 802.1Q/802.1ad tags: on tap's eth0 the kernel takes the outer tag out of the frame."""
    l2 = Ether(src=lab.src.mac, dst=lab.tap.eth0.mac)
    ip = IP(src=str(lab.src.ip4), dst=str(lab.dst.ip4))
    out = []
    for i in range(10):
        out += [bytes(l2 / Dot1Q(vlan=VLAN) / ip / UDP(sport=3000 + i, dport=53) / Raw(b"q")),
                bytes(l2 / Dot1Q(vlan=VLAN) / ip / UDP(sport=3000 + i, dport=54) / Raw(b"o")),
                bytes(l2 / Dot1Q(vlan=7) / ip / UDP(sport=3000 + i, dport=53) / Raw(b"7")),
                bytes(l2 / Dot1AD(vlan=VLAN) / Dot1Q(vlan=7) / ip / UDP(sport=3000 + i, dport=53) / Raw(b"qq"))]
    return out


def test_filters_see_the_vlan_tag_the_kernel_holds_beside_the_frame(lab: Lab) -> None:
    """`vlan N` matches as tcpdump sees the frame; rules run in order, a filter rule after a plain one."""
    rules = (f'  - {{number: 10, filter: "vlan {VLAN} and udp port 53", sessions: [ids]}}\n'
             f'  - {{number: 20, protocol: tcp, dst_ports: 8081, sessions: [ids]}}\n'
             f'  - {{number: 30, filter: "ip and tcp[13] & 0x12 == 0x12 and not vlan", sessions: [ids]}}')
    on_link, copies, status = mirrored(lab, rules, tagged_frames(lab))
    # each rule on its own ('vlan' shifts the offsets of the rest of an expression, so no one expression)
    want = expected(on_link, f"vlan {VLAN} and udp port 53") | expected(on_link, "tcp dst port 8081") | \
        expected(on_link, "ip and tcp[13] & 0x12 == 0x12 and not vlan")
    tagged = sum(n for f, n in want.items() if f[12:14] in (b"\x81\x00", b"\x88\xa8"))
    # DNS tagged 100 only: behind QinQ's outer 100 comes a second tag, so 'udp port 53' needs 'vlan 100 and vlan 7'
    assert tagged == 10, "the DNS frames tagged 100 were not all seen"
    assert copies == want
    rule_packets = {r["number"]: r["packets"] for r in status["rules"]}
    assert rule_packets[10] == tagged and rule_packets[30] >= 5 and rule_packets[20] >= 10


def test_filters_read_a_super_packets_payload_past_its_linear_part(lab: Lab) -> None:
    """GSO super-packets from src's TCP stack reach tap's eth0 whole, their payload in pages: a filter reading
    their last bytes (bpf_skb_load_bytes) decides as libpcap does on the same frames, as a sniffer saw them."""
    expression = "tcp dst port 5201 and len > 3000 and ether[len - 7] & 1 == 1"
    rules = f'  - {{number: 10, action: skip, filter: "{expression}"}}'
    lab.run(lab.src, ["ethtool", "-K", "eth0", "tx", "on"])  # TSO needs it: super-packets again
    server = lab.popen(lab.dst, ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    agent = Agent(lab, CONFIG.format(col4=lab.col.ip4, rules=rules))
    try:
        time.sleep(0.5)
        with busy_cpu(), sniffing(lab, [(lab.tap, "eth0")], seconds=6) as seen:
            lab.run(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-b", "20M", "-t", "2", "-M", "1400"], timeout=30)
        status = agent.status()
    finally:
        assert agent.stop() == 0
        server.wait(timeout=10)
        lab.run(lab.src, ["ethtool", "-K", "eth0", "tx", "off"])
    frames = [f for out, f in seen["tap.eth0"] if not out]
    big = [f for f in frames if len(f) > 3000]
    want = sum(compile_filter(expression).matcher()(f) for f in frames)
    assert len(big) >= 20, f"only {len(big)} super-packets: the test needs TSO on src"
    assert 0 < want < len(big)
    assert {r["number"]: r["packets"] for r in status["rules"]}[10] == want
