"""Kernel tier: BPF_PROG_TEST_RUN against the real kernel, inside a namespace of the test's own.

The `kernel_ns` fixture creates a network namespace with a veth pair, moves the
test thread into it (setns) and back out afterwards, so every clone a test run
makes lands on the test's own veth, never on an interface of the host.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bpftap import abi
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject

from ..netns import inside_new_netns


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


@pytest.fixture(scope="module")
def kernel_ns() -> Iterator[KernelNs]:
    """Each test module's own namespace, entered for its tests and left after them."""
    veth = [["link", "add", "k0", "type", "veth", "peer", "name", "k1"], ["link", "set", "k0", "up"],
            ["link", "set", "k1", "up"]]
    with inside_new_netns("btk", veth) as name:
        yield KernelNs(name, socket.if_nametoindex("k0"), socket.if_nametoindex("k1"))


@pytest.fixture()
def loaded(kernel_ns: KernelNs) -> Iterator[tuple[BpfObject, Tables]]:
    """A freshly loaded object (maps empty, counters zero) inside the test namespace."""
    obj = BpfObject.open(abi.object_path()).load()
    try:
        yield obj, Tables(obj)
    finally:
        obj.close()
