"""Kernel tier: BPF_PROG_TEST_RUN against the real kernel, inside a namespace of the test's own.

The `kernel_ns` fixture creates a network namespace with a veth pair, moves the
test thread into it (setns) and back out afterwards, so every clone a test run
makes lands on the test's own veth, never on an interface of the host.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bpftap import abi
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject

CLONE_NEWNET = 0x40000000


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (BPF_PROG_TEST_RUN, network namespaces)"
    if not abi.object_path().exists():
        return f"no BPF object at {abi.object_path()}: run 'make build'"
    if shutil.which("ip") is None:
        return "iproute2 'ip' missing"
    return None


@pytest.fixture(scope="session", autouse=True)
def _requires_kernel() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


@dataclass
class KernelNs:
    """The test namespace: `k0` is up with its peer `k1` up too, both ours."""

    name: str
    k0: int
    k1: int


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def kernel_ns() -> Iterator[KernelNs]:
    name = f"btk-{secrets.token_hex(3)}"
    home = f"/proc/self/task/{ctypes.CDLL(None).gettid()}/ns/net"
    home_fd = os.open(home, os.O_RDONLY)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "k0", "type", "veth", "peer", "name", "k1"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        for dev in ("k0", "k1"):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        _setns(f"/run/netns/{name}")
        try:
            idx = {d: socket.if_nametoindex(d) for d in ("k0", "k1")}
            yield KernelNs(name, idx["k0"], idx["k1"])
        finally:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.setns(home_fd, CLONE_NEWNET)
    finally:
        os.close(home_fd)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture()
def loaded(kernel_ns: KernelNs) -> Iterator[tuple[BpfObject, Tables]]:
    """A freshly loaded object (maps empty, counters zero) inside the test namespace."""
    obj = BpfObject.open(abi.object_path()).load()
    try:
        yield obj, Tables(obj)
    finally:
        obj.close()
