"""Hold build/bpf/cni_redirect.bpf.o on tc ingress of some interfaces, the way an eBPF CNI's host routing would.

    python cni.py --on IFACE [--on IFACE...] --route ADDR,IFACE,peer|redirect,DMAC,SMAC [--route ...]

Loads the object, fills `routes` (a packet to ADDR, IPv4 or IPv6, gets DMAC
and SMAC and leaves by IFACE: `peer` with bpf_redirect_peer into IFACE's
veth peer, `redirect` with bpf_redirect to IFACE's egress), attaches
`cni_redirect` to the ingress of every --on interface (tcx after whatever
is there, or clsact at priority 5 without tcx), prints ``ready``, then answers
every stdin line ``counts`` with ``{"peer": n, "redirect": n, "pass": n}``.
On end of input it detaches and exits 0. Run it inside the namespace of the
interfaces (``ip netns exec``). Exits 1 with the error on stderr if loading
or attaching fails.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import socket
import sys
from pathlib import Path

from bpftap.bpf import tc
from bpftap.bpf.objects import U64, BpfObject
from bpftap.errors import BpfError

OBJECT = Path(__file__).resolve().parents[2] / "build" / "bpf" / "cni_redirect.bpf.o"
PROGRAM = "cni_redirect"
SLOTS = ("peer", "redirect", "pass")  # enum cni_slot in cni_redirect.bpf.c


class RouteKey(ctypes.Structure):
    _fields_ = (("addr", ctypes.c_uint8 * 16),)


class Route(ctypes.Structure):
    _fields_ = (("ifindex", ctypes.c_uint32), ("peer", ctypes.c_uint32),
                ("dmac", ctypes.c_uint8 * 6), ("smac", ctypes.c_uint8 * 6))


def route(spec: str) -> tuple[RouteKey, Route]:
    addr, iface, how, dmac, smac = spec.split(",")
    ip = ipaddress.ip_address(addr)
    packed = (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed
    value = Route(socket.if_nametoindex(iface), 1 if how == "peer" else 0)
    value.dmac[:] = bytes.fromhex(dmac.replace(":", ""))
    value.smac[:] = bytes.fromhex(smac.replace(":", ""))
    key = RouteKey()
    key.addr[:] = packed
    return key, value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--on", action="append", default=[], help="interface whose ingress gets the program")
    ap.add_argument("--route", action="append", default=[], help="ADDR,IFACE,peer|redirect,DMAC,SMAC")
    args = ap.parse_args()
    with BpfObject.open(OBJECT).load() as obj:
        routes = obj.map("routes")
        for spec in args.route:
            routes.update_key(*route(spec))
        prog = obj.program(PROGRAM)
        held: list[tc.Attachment] = []
        try:
            for iface in args.on:
                held.append(tc.attach(prog, iface, socket.if_nametoindex(iface), tc.Direction.INGRESS,
                                      tc.Mode.AUTO, first=False, priority=5))
            print("ready", flush=True)
            counts = obj.map("counts")
            for line in sys.stdin:
                if line.strip() == "counts":
                    print(json.dumps({name: counts.lookup(i, U64).value for i, name in enumerate(SLOTS)}), flush=True)
        finally:
            for att in held:
                att.close()
                if att.owns_qdisc:
                    tc.destroy_clsact(att.ifname, att.ifindex)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BpfError as exc:
        print(f"cni.py: {exc}", file=sys.stderr)
        sys.exit(1)
