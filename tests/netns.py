"""A network namespace of a test's own, entered by the test thread itself (setns) and left afterwards.

BPF_PROG_TEST_RUN and raw sockets act in the calling thread's namespace, so a
test that enters its own namespace keeps every clone and datagram off the
host's interfaces.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


def _setns(fd: int, what: str) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {what}")


@contextmanager
def inside_new_netns(prefix: str, setup: Sequence[Sequence[str]] = ()) -> Iterator[str]:
    """Create `<prefix>-<random>`, bring lo up, run each `ip -n NAME <setup>` command, enter it; undo on exit."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    home = os.open(f"/proc/self/task/{ctypes.CDLL(None).gettid()}/ns/net", os.O_RDONLY)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], *setup):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target, name)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(home, "back home")
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], check=False)
