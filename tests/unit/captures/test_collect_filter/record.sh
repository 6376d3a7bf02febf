#!/bin/bash
# Records traffic.pcap (as root; takes a few seconds): a capture of a VXLAN underlay, for
# tests/unit/test_collect_filter.py. Two network namespaces of its own, joined by a veth
# (va 198.18.6.1 -- vb 198.18.6.2); in each a kernel VXLAN device (vx0, VNI 42) carrying
# 198.18.7.0/24 and 2001:db8:7::/64. Over vx0: pings (v4 and v6), DNS queries over UDP (v4, v6)
# and TCP to a tiny server, a TCP connection refused (port 80), a UDP datagram to a closed port
# (an ICMP error comes back). dumpcap records vb as a classic pcap. Everything is removed at the end.
# Usage: tests/unit/captures/test_collect_filter/record.sh [OUT.pcap]
set -euo pipefail
out=$(realpath "${1:-$(dirname "$0")/traffic.pcap}")
A=btfa-$$ B=btfb-$$
cleanup() {
	[[ -n ${cap:-} ]] && kill "$cap" 2>/dev/null
	[[ -n ${srv:-} ]] && kill "$srv" 2>/dev/null
	ip netns del "$A" 2>/dev/null || true
	ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$A"
ip netns add "$B"
ip link add va netns "$A" address 02:00:00:00:06:01 type veth peer name vb netns "$B" address 02:00:00:00:06:02
for side in "$A va 1 2" "$B vb 2 1"; do
	set -- $side
	ns=$1 dev=$2 me=$3 peer=$4
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
		net.ipv6.conf.$dev.disable_ipv6=1
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add 198.18.6.$me/24 dev "$dev"
	ip -n "$ns" link set "$dev" up
	ip -n "$ns" link add vx0 address 02:00:00:00:07:0$me type vxlan id 42 dstport 4789 \
		local 198.18.6.$me remote 198.18.6.$peer dev "$dev"
	ip -n "$ns" addr add 198.18.7.$me/24 dev vx0
	ip -n "$ns" addr add 2001:db8:7::$me/64 dev vx0 nodad
	ip -n "$ns" link set vx0 up
done
# a DNS server of sorts on B: every query over UDP (v4, v6) or TCP gets an answer
ip netns exec "$B" python3 -c '
import socket, struct, select
def answer(q):
    return q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6\x12\x07\x63"
socks = []
for fam, addr in ((socket.AF_INET, "198.18.7.2"), (socket.AF_INET6, "2001:db8:7::2")):
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((addr, 53)); socks.append(u)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("198.18.7.2", 53)); t.listen()
socks.append(t)
while True:
    for s in select.select(socks, [], [])[0]:
        if s is t:
            c, _ = t.accept()
            n = struct.unpack("!H", c.recv(2))[0]
            a = answer(c.recv(n)); c.sendall(struct.pack("!H", len(a)) + a); c.close()
        else:
            q, peer = s.recvfrom(512); s.sendto(answer(q), peer)
' &
srv=$!
ip netns exec "$B" dumpcap -q -P -i vb -w "$out" 2>/dev/null &
cap=$!
sleep 1.5
ip netns exec "$A" python3 -c '
import socket, struct, subprocess, time
def query(i, name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x4200 + i, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x01\x00\x01"
subprocess.run(["ping", "-c", "3", "-i", "0.2", "198.18.7.2"], check=True, capture_output=True)
subprocess.run(["ping", "-6", "-c", "3", "-i", "0.2", "2001:db8:7::2"], check=True, capture_output=True)
for i, (fam, addr, name) in enumerate([(socket.AF_INET, "198.18.7.2", "a.example"), (socket.AF_INET, "198.18.7.2", "b.example"),
                                       (socket.AF_INET6, "2001:db8:7::2", "six.example")]):
    with socket.socket(fam, socket.SOCK_DGRAM) as u:
        u.settimeout(2); u.sendto(query(i, name), (addr, 53)); u.recv(512)
with socket.create_connection(("198.18.7.2", 53), timeout=2) as t:
    q = query(9, "tcp.example"); t.sendall(struct.pack("!H", len(q)) + q); t.recv(512)
try:
    socket.create_connection(("198.18.7.2", 80), timeout=2)
except ConnectionRefusedError:
    pass
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    u.sendto(b"not dns", ("198.18.7.2", 5000))
time.sleep(0.5)
'
sleep 0.5
kill "$cap"
wait "$cap" || true
cap=
echo "recorded $(python3 -c 'import os,sys; print(os.path.getsize(sys.argv[1]))' "$out") bytes in $out"
