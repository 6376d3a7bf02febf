"""Invariant 5: the default object declares a non-GPL licence, and the verifier accepts it as such."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

from bpftap import abi
from bpftap.bpf.libbpf import BpfProgInfo, lib
from bpftap.bpf.objects import BpfObject


def test_licence_string_is_not_gpl() -> None:
    out = subprocess.run(
        ["llvm-objdump", "-s", "--section=license", str(abi.object_path())], check=True, capture_output=True, text=True
    ).stdout
    assert "BSD-2-Clause" in out.replace(" ", "") or "BSD-2-Cl" in out
    assert "GPL" not in out


def test_verifier_loads_it_as_not_gpl_compatible() -> None:
    """Loading succeeds, so no GPL-only helper is used; the kernel records the programs as non-GPL."""
    with BpfObject.open(abi.object_path()) as obj:
        obj.load()
        for name in (abi.PROG_INGRESS, abi.PROG_EGRESS, abi.PROG_ENCAP):
            info = BpfProgInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            assert lib.bpf_obj_get_info_by_fd(obj.program(name).fd, ctypes.byref(info), ctypes.byref(size)) == 0
            shown = json.loads(
                subprocess.run(["bpftool", "-j", "prog", "show", "id", str(info.id)], check=True,
                               capture_output=True, text=True).stdout
            )
            assert shown["gpl_compatible"] is False, name


def test_debug_build_is_gpl_and_loads_with_bpf_printk() -> None:
    """`make debug` (built by `make build` too): GPL, so the verifier allows bpf_printk, which it calls."""
    debug = abi.object_path().parents[2] / "build" / "bpf" / "mirror_tc.debug.bpf.o"
    if not debug.exists():  # an installed package has no build tree
        debug = Path(__file__).resolve().parents[2] / "build" / "bpf" / "mirror_tc.debug.bpf.o"
    out = subprocess.run(["llvm-objdump", "-d", "-s", "--section=license", str(debug)],
                         check=True, capture_output=True, text=True).stdout
    assert "GPL" in out
    code = subprocess.run(["llvm-objdump", "-d", str(debug)], check=True, capture_output=True, text=True).stdout
    assert "call 6" in code, "bpf_trace_printk (helper 6) is not called"
    with BpfObject.open(debug) as obj:
        obj.load()
        info = BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        assert lib.bpf_obj_get_info_by_fd(obj.program(abi.PROG_INGRESS).fd, ctypes.byref(info), ctypes.byref(size)) == 0
        shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(info.id)], check=True,
                                          capture_output=True, text=True).stdout)
        assert shown["gpl_compatible"] is True
