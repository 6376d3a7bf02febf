"""Feature probes for `bpftap check`: what this kernel offers, found by trying.

Attach probes run in a child process inside a network namespace of its own
(unshare), on that namespace's loopback: they never touch an interface of the
host, and the namespace vanishes with the child.
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bpftap import abi
from bpftap.bpf import tc
from bpftap.bpf.libbpf import BPF_MAP_TYPE_RINGBUF, BPF_PROG_TYPE_SCHED_CLS, lib
from bpftap.bpf.objects import BpfObject
from bpftap.errors import BpftapError

CLONE_NEWNET = 0x40000000


@dataclass
class Features:
    """What the kernel offers bpftap; each field a yes/no with `detail` notes."""

    btf: bool
    sched_cls: bool
    ringbuf: bool
    object_loads: bool
    test_run: bool
    tcx: bool
    clsact: bool
    detail: dict[str, str]

    @property
    def mode(self) -> str:
        if self.tcx:
            return "tcx"
        return "tc (clsact)" if self.clsact else "none"


def _attach_probes(path: Path) -> dict[str, str]:
    """tcx and clsact attach on the loopback of a throwaway namespace; '' means it worked."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = os.strerror(ctypes.get_errno())
        return {"tcx": f"unshare: {err}", "clsact": f"unshare: {err}"}
    result = {}
    with BpfObject.open(path) as obj:
        obj.load()
        prog = obj.program(abi.PROG_INGRESS)
        for name, mode in (("tcx", tc.Mode.TCX), ("clsact", tc.Mode.TC)):
            try:
                tc.attach(prog, "lo", 1, tc.Direction.INGRESS, mode).close()
                result[name] = ""
            except BpftapError as exc:
                result[name] = str(exc)
    return result


def _in_child(path: Path) -> dict[str, str]:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its own network namespace, gone when it exits
        os.close(rfd)
        try:
            out = _attach_probes(path)
        except BaseException as exc:  # noqa: BLE001 - report anything, never return into the parent's code
            out = {"tcx": f"probe failed: {exc}", "clsact": f"probe failed: {exc}"}
        os.write(wfd, json.dumps(out).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        data = f.read()
    os.waitpid(pid, 0)
    try:
        parsed: dict[str, str] = json.loads(data)
        return parsed
    except ValueError:
        return {"tcx": "probe crashed", "clsact": "probe crashed"}


def probe(path: Path | None = None) -> Features:
    """Probe everything; never raises for a missing feature (it says so in `detail`)."""
    path = path or abi.object_path()
    detail: dict[str, str] = {}
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    if not btf:
        detail["btf"] = "/sys/kernel/btf/vmlinux missing (kernel built without CONFIG_DEBUG_INFO_BTF)"
    sched_cls = lib.libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SCHED_CLS, None) == 1
    ringbuf = lib.libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, None) == 1
    object_loads = test_run = False
    try:
        with BpfObject.open(path) as obj:
            obj.load()
            object_loads = True
            frame = bytes(14) + bytes(50)
            test_run = obj.program(abi.PROG_INGRESS).test_run(frame).retval == abi.MIRROR_PASS
    except BpftapError as exc:
        detail["object"] = str(exc)
    attach = _in_child(path) if object_loads else {"tcx": "object did not load", "clsact": "object did not load"}
    for name, problem in attach.items():
        if problem:
            detail[name] = problem
    return Features(btf, sched_cls, ringbuf, object_loads, test_run, not attach["tcx"], not attach["clsact"], detail)


def as_dict(features: Features) -> dict[str, object]:
    """JSON-able form, with the mode bpftap would use."""
    return {**asdict(features), "mode": features.mode}
