"""Pins in the bpffs: where an agent's maps and links live so that they outlive the agent.

One directory per network namespace an agent runs in, keyed by the
namespace's inode like the state file (`ROOT/netns-INODE`, ROOT being
`/sys/fs/bpf/bpftap` or `$BPFTAP_PIN_ROOT`):

    maps/NAME     every map of the object except .rodata/.bss (the next load reuses them)
    links/HOOK-IFINDEX  the agent's bpf links (tcx, xdp): a pinned link keeps its program attached
                  while no process holds it

clsact filters need no pin: they stay until removed. The pins must be in a
bpffs that outlives the agent, the host's /sys/fs/bpf: under `ip netns exec`
/sys is a fresh mount of the command's own, the agent mounts a bpffs there
that vanishes with it, and a killed agent's links and maps go with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import subprocess
from pathlib import Path

from bpftap.bpf.libbpf import BpfLinkInfo, BpfMapInfo, check, lib
from bpftap.errors import BpftapError

log = logging.getLogger("bpftap.agent")

ROOT = Path(os.environ.get("BPFTAP_PIN_ROOT", "/sys/fs/bpf/bpftap"))


def netns_dir(netns_ino: int) -> Path:
    """The pin directory of the agent of the network namespace with inode `netns_ino`."""
    return ROOT / f"netns-{netns_ino}"


def pinned_namespaces() -> list[int]:
    """Inodes of the network namespaces that have a pin directory."""
    if not ROOT.is_dir():
        return []
    return sorted(int(p.name[6:]) for p in ROOT.iterdir() if p.name.startswith("netns-") and p.name[6:].isdigit())


def get(path: Path) -> int:
    """An fd on the object pinned at `path`. Raises BpfError if there is none."""
    return check(lib.bpf_obj_get(str(path).encode()), "open pin", str(path))


def pin(fd: int, path: Path) -> None:
    """Pin the object behind `fd` at `path` (its directory is created). Raises BpfError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    check(lib.bpf_obj_pin(fd, str(path).encode()), "pin", str(path))


def map_info(path: Path) -> BpfMapInfo:
    """Type, sizes and flags of the map pinned at `path`. Raises BpfError."""
    fd = get(path)
    try:
        info = BpfMapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read map info", str(path))
        return info
    finally:
        os.close(fd)


def link_info(fd: int, where: str) -> BpfLinkInfo:
    """Type, program id and interface of a link. Raises BpfError."""
    info = BpfLinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read link info", where)
    return info


def remove(directory: Path) -> None:
    """Unpin everything under `directory` and remove it, and ROOT once empty (missing ones are fine)."""
    if directory.exists():
        shutil.rmtree(directory)
    with contextlib.suppress(OSError):  # other namespaces' pins are there, or it is gone already
        ROOT.rmdir()


def ensure_bpffs(path: str = "/sys/fs/bpf") -> bool:
    """Mount a bpffs at `path` if none is there (as under `ip netns exec`); True if this mounted it."""
    if os.path.ismount(path):
        return False
    try:
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise BpftapError(f"no bpffs at {path}, and mounting one failed: {exc.stderr.strip() or exc}") from None
    except OSError as exc:
        raise BpftapError(f"no bpffs at {path}, and it cannot be made: {exc.strerror or exc}") from None
    log.info("mounted bpffs at %s", path)
    return True
