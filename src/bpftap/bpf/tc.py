"""Attach programs to TC hooks: tcx links (kernel 6.6+) or clsact + cls_bpf direct-action.

`attach()` picks the mode: `tcx`, `tc` (clsact), or `auto` (tcx, falling back
to clsact when the kernel refuses the link with EINVAL/EOPNOTSUPP: decided by
trying, never by the kernel version). Every attachment has `close()`, which
removes only what bpftap created: a clsact qdisc found already there stays.
tcx and XDP links are pinned (`pin_link`) so that they outlive the agent;
`adopt()` finds a dead agent's attachments again, and `replace()` swaps the
program of one in a single step (link update, or a filter replaced in place).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpftap import abi
from bpftap.bpf import pins
from bpftap.bpf.libbpf import (
    BPF_F_AFTER,
    BPF_F_BEFORE,
    BPF_LINK_TYPE_TCX,
    BPF_LINK_TYPE_XDP,
    BPF_TC_EGRESS,
    BPF_TC_F_REPLACE,
    BPF_TC_INGRESS,
    BPF_TCX_EGRESS,
    BPF_TCX_INGRESS,
    BPF_XDP,
    BpfLinkCreateOpts,
    BpfProgInfo,
    BpfProgQueryOpts,
    BpfTcHook,
    BpfTcOpts,
    check,
    lib,
    sized,
)
from bpftap.bpf.objects import Program
from bpftap.errors import BpfError, NotSupportedError

log = logging.getLogger("bpftap.tc")

# include/uapi/linux/pkt_sched.h: the clsact qdisc's handle and its two hooks' minor numbers
TC_H_CLSACT = 0xFFFF0000
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3

# include/uapi/linux/pkt_cls.h: a cls_bpf filter's program id (pyroute2 0.9.7 leaves it undecoded)
TCA_BPF_ID = 11

# handle of bpftap's cls_bpf filters: how a restart finds a crashed run's filters
FILTER_HANDLE = 0xB7A9


class Direction(enum.Enum):
    """A TC hook of an interface."""

    INGRESS = "ingress"
    EGRESS = "egress"

    @property
    def tcx_type(self) -> int:
        return BPF_TCX_INGRESS if self is Direction.INGRESS else BPF_TCX_EGRESS

    @property
    def tc_point(self) -> int:
        return BPF_TC_INGRESS if self is Direction.INGRESS else BPF_TC_EGRESS

    @property
    def clsact_parent(self) -> int:
        """The hook's parent handle under a clsact qdisc (ffff:fff2 or ffff:fff3), as filters name it."""
        return TC_H_CLSACT | (TC_H_MIN_INGRESS if self is Direction.INGRESS else TC_H_MIN_EGRESS)


class Mode(enum.Enum):
    """How to attach: `auto` tries tcx first."""

    AUTO = "auto"
    TCX = "tcx"
    TC = "tc"


@dataclass
class Attachment:
    """One program on one hook; `close()` detaches it."""

    ifname: str
    ifindex: int
    direction: Direction
    mode: Mode
    program: str
    link_fd: int = -1
    priority: int = 0
    owns_qdisc: bool = False
    pin: Path | None = None  # where a tcx link is pinned
    closed: bool = field(default=False, repr=False)

    @property
    def hook(self) -> str:
        return self.direction.value

    def describe(self) -> str:
        where = f"{self.ifname} {self.direction.value}"
        how = "tcx link" if self.mode is Mode.TCX else f"clsact prio {self.priority} handle {FILTER_HANDLE:#x}"
        return f"{self.program} on {where} ({how})"

    def replace(self, prog: Program) -> None:
        """Run `prog` here instead, in one step: no packet passes the hook with neither. Raises BpfError."""
        if self.mode is Mode.TCX:
            check(lib.bpf_link_update(self.link_fd, prog.fd, None), f"update tcx {self.hook} link", self.ifname)
        else:
            hook = sized(BpfTcHook, ifindex=self.ifindex, attach_point=self.direction.tc_point)
            opts = sized(BpfTcOpts, prog_fd=prog.fd, flags=BPF_TC_F_REPLACE, handle=FILTER_HANDLE,
                         priority=self.priority)
            check(lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)), f"replace tc {self.hook}", self.ifname)
        self.program = prog.name

    def close(self) -> None:
        """Detach (unpinning a tcx link); idempotent. A vanished interface counts as detached."""
        if self.closed:
            return
        self.closed = True
        if self.mode is Mode.TCX:
            if self.pin is not None:
                self.pin.unlink(missing_ok=True)
            os.close(self.link_fd)
            return
        hook = sized(BpfTcHook, ifindex=self.ifindex, attach_point=self.direction.tc_point)
        opts = sized(BpfTcOpts, handle=FILTER_HANDLE, priority=self.priority)
        ret = lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
        if ret < 0 and -ret not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            log.warning("%s", BpfError(f"detach tc {self.direction.value}", self.ifname, -ret))


def _attach_tcx(prog: Program, ifname: str, ifindex: int, direction: Direction, first: bool) -> Attachment:
    opts = sized(BpfLinkCreateOpts, flags=BPF_F_BEFORE if first else BPF_F_AFTER)
    fd = lib.bpf_link_create(prog.fd, ifindex, direction.tcx_type, ctypes.byref(opts))
    if fd < 0:
        err = -fd
        op = f"attach tcx {direction.value}"
        if err in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524):
            raise NotSupportedError(op, ifname, err, "this kernel has no tcx (6.6+); use --attach tc")
        raise BpfError(op, ifname, err)
    return Attachment(ifname, ifindex, direction, Mode.TCX, prog.name, link_fd=fd)


def _ensure_clsact(ifname: str, ifindex: int) -> bool:
    """Create the clsact qdisc; True if bpftap created it, False if it was there."""
    hook = sized(BpfTcHook, ifindex=ifindex, attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
    ret = lib.bpf_tc_hook_create(ctypes.byref(hook))
    if ret == -errno.EEXIST:
        return False
    check(ret, "create clsact qdisc", ifname)
    return True


def destroy_clsact(ifname: str, ifindex: int) -> None:
    """Remove the clsact qdisc (and with it every filter on it)."""
    hook = sized(BpfTcHook, ifindex=ifindex, attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
    ret = lib.bpf_tc_hook_destroy(ctypes.byref(hook))
    if ret < 0 and -ret not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
        log.warning("%s", BpfError("remove clsact qdisc", ifname, -ret))


def _attach_tc(prog: Program, ifname: str, ifindex: int, direction: Direction, priority: int) -> Attachment:
    owns = _ensure_clsact(ifname, ifindex)
    hook = sized(BpfTcHook, ifindex=ifindex, attach_point=direction.tc_point)
    last_err = 0
    # the asked priority, else the next free one (another kind of filter may hold it)
    for prio in range(priority, priority + 16):
        opts = sized(BpfTcOpts, prog_fd=prog.fd, handle=FILTER_HANDLE, priority=prio)
        ret = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
        if ret == 0:
            return Attachment(ifname, ifindex, direction, Mode.TC, prog.name, priority=prio, owns_qdisc=owns)
        last_err = -ret
        if last_err not in (errno.EEXIST, errno.EINVAL):
            break
    if owns:
        destroy_clsact(ifname, ifindex)
    raise BpfError(f"attach tc {direction.value}", ifname, last_err)


def attach(
    prog: Program,
    ifname: str,
    ifindex: int,
    direction: Direction,
    mode: Mode = Mode.AUTO,
    first: bool = True,
    priority: int = 1,
) -> Attachment:
    """Attach `prog` to one hook of `ifname`.

    tcx: a link placed before (first) or after every other program. clsact:
    a cls_bpf direct-action filter at `priority` (lower runs earlier).
    Raises NotSupportedError for `tcx` on a kernel without it, BpfError otherwise.
    """
    if mode is Mode.TC:
        return _attach_tc(prog, ifname, ifindex, direction, priority)
    try:
        return _attach_tcx(prog, ifname, ifindex, direction, first)
    except NotSupportedError:
        if mode is Mode.TCX:
            raise
        log.info("tcx refused on %s; falling back to clsact", ifname)
        return _attach_tc(prog, ifname, ifindex, direction, priority)


@dataclass
class XdpLink:
    """An XDP program attached through a link: detached by close(), or when the process dies unpinned."""

    ifname: str
    ifindex: int
    program: str
    fd: int
    pin: Path | None = None
    hook = "xdp"

    def describe(self) -> str:
        return f"{self.program} on {self.ifname} xdp (link)"

    def replace(self, prog: Program) -> None:
        """Run `prog` here instead, in one step. Raises BpfError."""
        check(lib.bpf_link_update(self.fd, prog.fd, None), "update xdp link", self.ifname)
        self.program = prog.name

    def close(self) -> None:
        if self.fd >= 0:
            if self.pin is not None:
                self.pin.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = -1


def attach_xdp(prog: Program, ifname: str, ifindex: int) -> XdpLink:
    """Attach an XDP program with a link (native mode where the driver has it)."""
    opts = sized(BpfLinkCreateOpts)
    fd = lib.bpf_link_create(prog.fd, ifindex, BPF_XDP, ctypes.byref(opts))
    if fd < 0:
        raise BpfError("attach xdp", ifname, -fd)
    return XdpLink(ifname, ifindex, prog.name, fd)


def pin_link(att: Attachment | XdpLink, directory: Path) -> None:
    """Pin a tcx or XDP link at `directory`/HOOK-IFINDEX, so it stays attached when the agent dies.

    Named by ifindex: a bpffs name may have no dot, and interface names may.
    clsact filters stay by themselves and are left as they are. Raises BpfError.
    """
    fd = att.fd if isinstance(att, XdpLink) else att.link_fd
    if fd < 0:
        return
    att.pin = directory / f"{att.hook}-{att.ifindex}"
    pins.pin(fd, att.pin)


Adopted = Attachment | XdpLink


def adopt(directory: Path, links: dict[int, str]) -> list[Adopted]:
    """What a dead agent left attached in this namespace: its pinned links and its clsact filters.

    `directory` holds its link pins, `links` maps ifindex to name for every
    interface here. Each comes back open, ready to keep, replace() or close().
    A pin whose interface is gone is removed. Raises BpfError if a pin cannot be read.
    """
    found: list[Adopted] = []
    for path in sorted(directory.glob("*")) if directory.is_dir() else []:
        fd = pins.get(path)
        info = pins.link_info(fd, str(path))
        name = prog_name(info.prog_id)
        if info.ifindex not in links:
            os.close(fd)
            path.unlink()  # its interface went away, and the link with it
        elif info.type == BPF_LINK_TYPE_XDP:
            found.append(XdpLink(links[info.ifindex], info.ifindex, name, fd, pin=path))
        elif info.type == BPF_LINK_TYPE_TCX:
            direction = Direction.INGRESS if info.attach_type == BPF_TCX_INGRESS else Direction.EGRESS
            found.append(Attachment(links[info.ifindex], info.ifindex, direction, Mode.TCX, name, fd, pin=path))
        else:
            os.close(fd)
            raise BpfError("adopt link", str(path), errno.EINVAL, f"link type {info.type} is none of bpftap's")
    for ifindex, ifname in links.items():
        for direction in Direction:
            for flt in tc_filters(ifname, direction):
                if flt.ours:
                    found.append(Attachment(ifname, ifindex, direction, Mode.TC, flt.name, priority=flt.priority))
    return found


def prog_name(prog_id: int) -> str:
    """The name of a loaded program by id ('' if it is gone)."""
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        info = BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) < 0:
            return ""
        name: bytes = info.name
        return name.decode(errors="replace")
    finally:
        os.close(fd)


def tcx_programs(ifindex: int, direction: Direction) -> list[tuple[int, str]] | None:
    """(id, name) of the tcx programs on a hook, in order; None without tcx."""
    ids = (ctypes.c_uint32 * 64)()
    opts = sized(BpfProgQueryOpts, prog_ids=ids, prog_cnt=64)
    ret = lib.bpf_prog_query_opts(ifindex, direction.tcx_type, ctypes.byref(opts))
    if ret < 0:
        return None
    return [(ids[i], prog_name(ids[i])) for i in range(opts.prog_cnt)]


@dataclass(frozen=True)
class TcFilter:
    """A filter on a clsact hook, as `tc filter show` reports it (read through netlink)."""

    kind: str
    priority: int
    handle: int
    prog_id: int
    name: str

    @property
    def ours(self) -> bool:
        return self.kind == "bpf" and self.handle == FILTER_HANDLE and self.name in abi.KERNEL_PROGRAM_NAMES


def tc_filters(ifname: str, direction: Direction) -> list[TcFilter]:
    """The filters on a clsact hook (empty without clsact or without the interface).

    A cls_bpf filter is named by its program's name (as `tc filter show`
    does), else by the name it was attached with (TCA_BPF_NAME).
    """
    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)
            msgs = ipr.get_filters(index=index[0], parent=direction.clsact_parent) if index else ()
    except NetlinkError:
        return []
    out = []
    for msg in msgs:
        kind = str(msg.get_attr("TCA_KIND") or "?")
        handle = int(msg["handle"])
        if kind == "bpf" and not handle:
            continue  # the per-priority header entry
        prog_id, name = 0, ""
        opts = msg.get_attr("TCA_OPTIONS") if kind == "bpf" else None
        if opts is not None:
            prog_id = _bpf_prog_id(opts)
            name = (prog_name(prog_id) if prog_id else "") or str(opts.get_attr("TCA_BPF_NAME") or "")
        out.append(TcFilter(kind=kind, priority=int(msg["info"]) >> 16, handle=handle, prog_id=prog_id, name=name))
    return out


def _bpf_prog_id(opts: Any) -> int:
    """TCA_BPF_ID of a cls_bpf filter's TCA_OPTIONS (0 if absent).

    pyroute2 decodes the attribute where it knows it; 0.9.7 does not and
    keeps it as an UNKNOWN attribute, whose u32 payload follows its 4-byte header.
    """
    known = opts.get_attr("TCA_BPF_ID")
    if known is not None:
        return int(known)
    for slot in opts["attrs"]:
        nla = slot.value
        if slot.name == "UNKNOWN" and nla["header"].get("type") == TCA_BPF_ID and nla["header"].get("length") == 8:
            return int(struct.unpack_from("=I", nla.data, nla.offset + 4)[0])
    return 0


def others_on_hook(ifname: str, ifindex: int, direction: Direction) -> list[str]:
    """Human descriptions of every program on a hook that is not bpftap's."""
    found = []
    for prog_id, name in tcx_programs(ifindex, direction) or []:
        if name not in abi.KERNEL_PROGRAM_NAMES:
            found.append(f"tcx program {name or '?'} (id {prog_id})")
    for flt in tc_filters(ifname, direction):
        if not flt.ours:
            what = f"{flt.kind} filter prio {flt.priority}"
            found.append(f"{what} {flt.name} (id {flt.prog_id})" if flt.prog_id else what)
    return found


def remove_stale_filters(ifname: str, ifindex: int) -> int:
    """Remove cls_bpf filters a crashed bpftap left (by handle and program name)."""
    removed = 0
    for direction in Direction:
        for flt in tc_filters(ifname, direction):
            if flt.ours:
                Attachment(ifname, ifindex, direction, Mode.TC, flt.name, priority=flt.priority).close()
                removed += 1
    return removed
