"""Hold build/bpf/counter.bpf.o on one interface's ingress, the way another vendor's agent would.

    python counter.py IFACE --mode tcx|tc [--priority N] [--drop-port P]

Loads the object, sets the port to drop, attaches `counter_ingress` (tcx: a
link placed before whatever is on the hook, through bpftap.bpf.tc.attach;
tc: a cls_bpf direct-action filter with its own handle at priority N,
creating the clsact qdisc if none is there), prints one line
``ready {"mode": ..., "priority": ..., "prog_id": ...}`` and then answers every
stdin line ``counts`` with ``{"packets": n, "udp4": n, "dropped": n}``. On end
of input it detaches, removes a clsact qdisc it created, and exits 0.
Run it inside the namespace of the interface (``ip netns exec``). Exits 1
with the error on stderr if loading or attaching fails.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import sys
from pathlib import Path

from bpftap.bpf import tc
from bpftap.bpf.libbpf import (
    BPF_TC_EGRESS,
    BPF_TC_INGRESS,
    BpfTcHook,
    BpfTcOpts,
    lib,
    sized,
)
from bpftap.bpf.objects import U64, BpfObject
from bpftap.errors import BpfError

OBJECT = Path(__file__).resolve().parents[2] / "build" / "bpf" / "counter.bpf.o"
PROGRAM = "counter_ingress"
SLOTS = ("packets", "udp4", "dropped")  # enum counter_slot in counter.bpf.c
HANDLE = 0x1  # not bpftap's: a different vendor, a different handle


class Clsact:
    """counter_ingress as a cls_bpf filter of its own on the ingress hook."""

    def __init__(self, ifindex: int, prog_fd: int, priority: int) -> None:
        self.ifindex, self.priority = ifindex, priority
        both = sized(BpfTcHook, ifindex=ifindex, attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
        ret = lib.bpf_tc_hook_create(ctypes.byref(both))
        if ret < 0 and ret != -17:  # EEXIST: somebody's qdisc, not ours to remove
            raise BpfError("create clsact qdisc", str(ifindex), -ret)
        self.created = ret == 0
        hook = sized(BpfTcHook, ifindex=ifindex, attach_point=BPF_TC_INGRESS)
        opts = sized(BpfTcOpts, prog_fd=prog_fd, handle=HANDLE, priority=priority)
        ret = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
        if ret < 0:
            self._destroy()
            raise BpfError("attach tc ingress", str(ifindex), -ret)

    def _destroy(self) -> None:
        if self.created:
            both = sized(BpfTcHook, ifindex=self.ifindex, attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
            lib.bpf_tc_hook_destroy(ctypes.byref(both))

    def close(self) -> None:
        hook = sized(BpfTcHook, ifindex=self.ifindex, attach_point=BPF_TC_INGRESS)
        opts = sized(BpfTcOpts, handle=HANDLE, priority=self.priority)
        lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
        self._destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("iface")
    ap.add_argument("--mode", choices=["tcx", "tc"], required=True)
    ap.add_argument("--priority", type=int, default=5, help="clsact filter priority")
    ap.add_argument("--drop-port", type=int, default=0, help="UDP destination port to drop (0: none)")
    args = ap.parse_args()
    ifindex = socket.if_nametoindex(args.iface)
    with BpfObject.open(OBJECT).load() as obj:
        obj.map("settings").update(0, ctypes.c_uint32(args.drop_port))
        prog = obj.program(PROGRAM)
        held: tc.Attachment | Clsact
        if args.mode == "tcx":
            held = tc.attach(prog, args.iface, ifindex, tc.Direction.INGRESS, tc.Mode.TCX, first=True)
        else:
            held = Clsact(ifindex, prog.fd, args.priority)
        try:
            ids = [i for i, name in tc.tcx_programs(ifindex, tc.Direction.INGRESS) or [] if name == PROGRAM]
            print("ready " + json.dumps({"mode": args.mode, "priority": args.priority, "tcx_ids": ids}), flush=True)
            counts = obj.map("counts")
            for line in sys.stdin:
                if line.strip() == "counts":
                    print(json.dumps({name: counts.lookup(i, U64).value for i, name in enumerate(SLOTS)}), flush=True)
        finally:
            held.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BpfError as exc:
        print(f"counter.py: {exc}", file=sys.stderr)
        sys.exit(1)
