"""Raw frames in and out of one interface, for end-to-end tests (run inside a lab namespace).

    python wire.py sniff IFACE SECONDS   prints "ready", then one JSON line per frame seen
                                         ({"out": bool, "hex": ...}) until SECONDS have passed
    python wire.py send IFACE            sends each hex frame read from stdin (one a line)

AF_PACKET sees a veth's frames in both directions: received frames before the
TC ingress hook, sent frames after the TC egress hook. A VLAN tag the kernel
has moved beside the frame (hardware-accelerated) comes back through
PACKET_AUXDATA and is put back in place, as libpcap does.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata


def with_vlan(data: bytes, ancillary: list[tuple[int, int, bytes]]) -> bytes:
    for level, kind, blob in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(blob) >= AUXDATA.size:
            status, _, _, _, _, tci, tpid = AUXDATA.unpack_from(blob)
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def sniff(iface: str, seconds: float) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.bind((iface, 0))
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    frames = []
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            continue
        data, ancillary, _, addr = sock.recvmsg(70000, socket.CMSG_SPACE(AUXDATA.size))
        frames.append({"out": addr[2] == PACKET_OUTGOING, "hex": with_vlan(data, ancillary).hex()})
    for frame in frames:
        print(json.dumps(frame))


def send(iface: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    for line in sys.stdin:
        if line.strip():
            sock.send(bytes.fromhex(line.strip()))
            time.sleep(0.002)


if __name__ == "__main__":
    if sys.argv[1] == "sniff":
        sniff(sys.argv[2], float(sys.argv[3]))
    else:
        send(sys.argv[2])
