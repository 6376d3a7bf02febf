"""A four-host lab of network namespaces for the demo, the tests and the benchmarks.

Addresses come from 198.18.0.0/15 and 2001:db8::/32; nothing is created in,
or sent out of, the root namespace. `tap` (the monitored host) routes between
`src` and `dst` and has its own uplink to the collector host `col`::

    src eth0 ---- eth0 tap eth1 ---- eth0 dst      (.1.1 / .1.254, .3.254 / .3.1)
                       tap eth2 ---- eth0 col      (.2.254 / .2.1, MTU 9000)

Veth pairs are created directly inside their two namespaces, and deleting a
namespace deletes its veths: teardown ends the processes, then deletes the
namespaces. Usage: ``with Lab() as lab: lab.ping(lab.src, [lab.dst.ip6])``,
or by hand ``python -m bpftap.lab up [--prefix P] | down --prefix P | list``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from bpftap.errors import BpftapError

IPAddress = IPv4Address | IPv6Address
ROLES = ("src", "tap", "dst", "col")
"""Host roles; the namespace of a role is ``<prefix>-<role>``."""
JUMBO_MTU = 9000
"""MTU of the tap<->col link: a copy is the original plus up to 70 bytes."""
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")
_STOP_TIMEOUT = 3.0
_READY_TIMEOUT = 10.0


class LabError(BpftapError):
    """The lab could not be built or torn down; the message says which step."""


class LabCommandError(subprocess.CalledProcessError):
    """A command in the lab failed; unlike its base class, str() includes stderr."""

    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace") if isinstance(self.stderr, bytes) else self.stderr
        base = super().__str__().rstrip(".")
        return f"{base}: {err.strip()}" if err and err.strip() else base


@dataclass(frozen=True)
class Iface:
    """One interface of a lab host; ``str(iface)`` is its name, for commands."""

    name: str
    ip4: IPv4Address
    ip6: IPv6Address
    mac: str
    mtu: int
    peer: str
    """``role.ifname`` of the other end of the veth pair, e.g. ``"col.eth0"``."""
    plen4: int = 24
    plen6: int = 64

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Host:
    """One lab host: namespace, interfaces (``host.eth0`` ...), default gateways.

    ``ip4``, ``ip6`` and ``mac`` are those of its eth0.
    """

    role: str
    ns: str
    ifaces: tuple[Iface, ...]
    gw4: IPv4Address | None = None
    gw6: IPv6Address | None = None

    def iface(self, name: str) -> Iface:
        """The interface called `name`; raises KeyError if the host has none."""
        return {i.name: i for i in self.ifaces}[name]

    def __getattr__(self, name: str) -> Iface:
        # host.eth0, host.eth2, ...; AttributeError (not KeyError) keeps hasattr() working
        if name.startswith("eth") and name in (i.name for i in self.ifaces):
            return self.iface(name)
        raise AttributeError(f"{self.role} has no attribute or interface {name}")

    @property
    def ip4(self) -> IPv4Address:
        return self.ifaces[0].ip4

    @property
    def ip6(self) -> IPv6Address:
        return self.ifaces[0].ip6

    @property
    def mac(self) -> str:
        return self.ifaces[0].mac


def _iface(name: str, host_no: int, if_no: int, net: int, last: int, peer: str,
           mtu: int = 1500) -> Iface:
    # locally administered MACs that tell the host and interface: 02:b7:00:00:HH:II
    return Iface(name=name, ip4=IPv4Address(f"198.18.{net}.{last}"),
                 ip6=IPv6Address(f"2001:db8:{net}::{last:x}"),
                 mac=f"02:b7:00:00:{host_no:02x}:{if_no:02x}", mtu=mtu, peer=peer)


_TUNNEL_TSO = ("tx-checksumming", "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation", "tx-gre-segmentation",
               "tx-gre-csum-segmentation")


def _plan(prefix: str) -> dict[str, Host]:
    """The four hosts of the lab named `prefix` (pure: nothing is created)."""
    ns = {r: f"{prefix}-{r}" for r in ROLES}
    return {
        "src": Host("src", ns["src"], (_iface("eth0", 1, 0, 1, 1, "tap.eth0"),),
                    IPv4Address("198.18.1.254"), IPv6Address("2001:db8:1::fe")),
        "tap": Host("tap", ns["tap"], (_iface("eth0", 2, 0, 1, 254, "src.eth0"),
                                       _iface("eth1", 2, 1, 3, 254, "dst.eth0"),
                                       _iface("eth2", 2, 2, 2, 254, "col.eth0", JUMBO_MTU))),
        "dst": Host("dst", ns["dst"], (_iface("eth0", 3, 0, 3, 1, "tap.eth1"),),
                    IPv4Address("198.18.3.254"), IPv6Address("2001:db8:3::fe")),
        "col": Host("col", ns["col"], (_iface("eth0", 4, 0, 2, 1, "tap.eth2", JUMBO_MTU),),
                    IPv4Address("198.18.2.254"), IPv6Address("2001:db8:2::fe")),
    }


def _ip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raises LabCommandError on failure."""
    cmd = ["ip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode:
        raise LabCommandError(res.returncode, cmd, res.stdout, res.stderr)
    return res


def existing_namespaces() -> set[str]:
    """Names of every named network namespace (``ip netns list``)."""
    return {line.split()[0] for line in _ip(["netns", "list"]).stdout.splitlines() if line.strip()}


def lab_prefixes() -> list[str]:
    """Prefixes for which all four lab namespaces exist."""
    names = existing_namespaces()
    prefixes = {n.rsplit("-", 1)[0] for n in names if "-" in n}
    return sorted(p for p in prefixes if all(f"{p}-{r}" in names for r in ROLES))


def _signal(pid: int, group: bool, sig: int) -> bool:
    """Send `sig` to `pid` or its process group (sig 0: probe); False if none is left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it first if it is our child
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def end_processes(targets: Sequence[tuple[int, bool]], timeout: float = _STOP_TIMEOUT) -> None:
    """SIGTERM each ``(pid, is_group)``, SIGKILL whatever is left after `timeout` s."""
    left = [t for t in targets if _signal(*t, signal.SIGTERM)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [t for t in left if _signal(*t, 0)]
    for pid, group in left:
        _signal(pid, group, signal.SIGKILL)


def echo(addr: IPAddress, wait: float = 1.0) -> bool:
    """Send one ICMP(v6) echo request to `addr` from the current namespace.

    Uses an ICMP datagram socket (as unprivileged ping does: the kernel sets
    the id and checksum and hands back only our replies), which needs the
    caller's gid in net.ipv4.ping_group_range: the lab sets that in its
    namespaces. Returns True if the reply came within `wait` seconds, False
    on silence or a send error (no route, neighbour failed).
    """
    v6 = addr.version == 6
    fam, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    seq = secrets.randbits(16)
    with socket.socket(fam, socket.SOCK_DGRAM, proto) as s:
        s.settimeout(wait)
        try:
            s.sendto(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0, seq) + b"bpftap", (str(addr), 0))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                data = s.recv(1500)
                if len(data) >= 8 and struct.unpack("!BBHHH", data[:8])[::4] == (129 if v6 else 0, seq):
                    return True
        except OSError:  # includes the timeout
            return False
    return False


class Lab:
    """Four namespaces wired as above; a context manager that builds, then tears down.

    `prefix` names the namespaces (``<prefix>-src`` ...); the default is
    ``bt`` plus 6 random hex digits, so parallel or leftover labs never
    collide. The constructor creates nothing; `up` (or ``with``) does.
    Hosts: ``lab.src``, ``lab.tap``, ``lab.dst``, ``lab.col`` (`Host`).
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"bt{secrets.token_hex(3)}"
        if not _PREFIX_RE.match(self.prefix):
            raise LabError(f"lab prefix {self.prefix!r}: use 1-24 of [a-z0-9_], starting alnum")
        self.hosts = _plan(self.prefix)
        self.src, self.tap, self.dst, self.col = (self.hosts[r] for r in ROLES)
        self._created: list[str] = []
        self._procs: list[tuple[subprocess.Popen[Any], bool]] = []  # (process, leads a group)

    @classmethod
    def adopt(cls, prefix: str) -> Lab:
        """A Lab owning the existing namespaces of `prefix`, so `close` removes them."""
        lab = cls(prefix)
        have = existing_namespaces()
        lab._created = [h.ns for h in lab.hosts.values() if h.ns in have]
        return lab

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, host: Host | str) -> str:
        """Namespace name of `host` (a Host or a role); raises KeyError for others."""
        return host.ns if isinstance(host, Host) else self.hosts[host].ns

    def peer(self, iface: Iface) -> Iface:
        """The other end of `iface`'s veth pair."""
        role, name = iface.peer.split(".")
        return self.hosts[role].iface(name)

    def up(self) -> None:
        """Create namespaces, links, addresses and routes, then wait for pings.

        Raises LabError if a namespace of the lab already exists or neighbours
        cannot ping each other over v4 and v6 within 10 s, LabCommandError if
        a command fails. A failed `up` removes whatever it had created.
        """
        try:
            self._build()
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        taken = existing_namespaces() & {h.ns for h in self.hosts.values()}
        if taken:
            raise LabError(f"namespace {sorted(taken)[0]} already exists; "
                           f"remove it with: python -m bpftap.lab down --prefix {self.prefix}")
        for host in self.hosts.values():
            _ip(["netns", "add", host.ns])
            self._created.append(host.ns)
            # no DAD, so IPv6 addresses work at once (set before the veths exist)
            sysctls = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                       "net.ipv4.ping_group_range=0 2147483647"]  # for `echo`
            if host.role == "tap":
                sysctls += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
            self.run(host, ["sysctl", "-qw", *sysctls])
            _ip(["-n", host.ns, "link", "set", "lo", "up"])
        for host in (self.src, self.dst, self.col):  # every pair has one end on tap
            me, peer = host.eth0, self.peer(host.eth0)
            _ip(["link", "add", peer.name, "netns", self.tap.ns, "address", peer.mac,
                 "mtu", str(peer.mtu), "type", "veth", "peer", "name", me.name,
                 "netns", host.ns, "address", me.mac, "mtu", str(me.mtu)])
        for host in self.hosts.values():
            for i in host.ifaces:
                for addr in (f"{i.ip4}/{i.plen4}", f"{i.ip6}/{i.plen6}"):
                    _ip(["-n", host.ns, "addr", "add", addr, "dev", i.name, "nodad"])
                _ip(["-n", host.ns, "link", "set", i.name, "up"])
            if host.gw4 is not None and host.gw6 is not None:
                _ip(["-n", host.ns, "route", "add", "default", "via", str(host.gw4)])
                _ip(["-n", host.ns, "-6", "route", "add", "default", "via", str(host.gw6)])

        self.collector_link_offloads(False)

    def collector_link_offloads(self, on: bool) -> None:
        """Let the tapped host's collector link (eth2) segment tunnel super-packets and finish checksums, or not.

        Off (as the lab starts): the kernel does both in software before the
        link, as for a NIC without tunnel TSO and checksum offload, so what
        crosses it are finished wire frames, for the agent's copies and
        mirred's alike. On: the veth carries super-packets whole, as a NIC
        with tunnel TSO takes them (its segments would be cut in hardware).
        """
        self.run(self.tap, ["ethtool", "-K", "eth2", *(w for f in _TUNNEL_TSO for w in (f, "on" if on else "off"))])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        for host in (self.src, self.dst, self.col):
            peer = self.peer(host.eth0)
            if not self.ping(host, [peer.ip4, peer.ip6], max(deadline - time.monotonic(), 1.0)):
                raise LabError(f"lab {self.prefix}: {host.role} cannot ping {peer.ip4} and "
                               f"{peer.ip6} within {_READY_TIMEOUT:.0f} s")

    def ping(self, host: Host | str, addrs: Sequence[IPAddress | str], timeout: float = 3.0) -> bool:
        """True if every address in `addrs` answers an ICMP echo from `host` in time.

        Uses bpftap's own echo (``python -m bpftap.lab ping``): Debian's
        minimal images have no ping binary. Retries each address once a
        second until `timeout` s have passed overall.
        """
        cmd = [sys.executable, "-m", "bpftap.lab", "ping", "--timeout", str(timeout), *map(str, addrs)]
        return self.run(host, cmd, check=False, timeout=timeout + 30).returncode == 0

    def run(self, host: Host | str, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `cmd` in `host`'s namespace; defaults: output captured as text, check=True.

        Keyword arguments go to subprocess.run and override those defaults.
        Raises LabCommandError (a CalledProcessError whose text includes
        stderr) on a non-zero exit when checking, TimeoutExpired on timeout.
        """
        opts: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 120, **kw}
        check = opts.pop("check", True)
        full = ["ip", "netns", "exec", self.ns(host), *cmd]
        res = subprocess.run(full, check=False, **opts)
        if check and res.returncode:
            raise LabCommandError(res.returncode, full, res.stdout, res.stderr)
        return res

    def popen(self, host: Host | str, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `cmd` in `host`'s namespace; `close` ends it (and its children).

        Keyword arguments go to subprocess.Popen. The process leads a new
        session unless start_new_session=False is given, so teardown can
        signal its whole process group. Raises OSError if `ip` cannot start.
        """
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *cmd], **kw)
        self._procs.append((proc, bool(kw["start_new_session"])))
        return proc

    def close(self) -> None:
        """End processes (SIGTERM, SIGKILL 3 s later), then delete the namespaces.

        Idempotent and safe after a partial `up`. Any other process still in
        a lab namespace (``ip netns pids``) is ended the same way, by pid.
        Raises LabError if a namespace outlives ``ip netns del``.
        """
        end_processes([(p.pid, group) for p, group in self._procs if p.poll() is None])
        for proc, _ in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        pids = [subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                               timeout=30, check=False).stdout.split() for ns in self._created]
        end_processes([(int(pid), False) for found in pids for pid in found])
        failed = []
        for ns in reversed(self._created):
            try:
                _ip(["netns", "del", ns])
            except LabCommandError as e:
                if ns in existing_namespaces():
                    failed.append(f"{ns}: {e}")
        self._created = []
        if failed:
            raise LabError("could not delete " + "; ".join(failed))

    def describe(self) -> str:
        """The topology and addresses, one interface a line."""
        lines = [f"lab {self.prefix}"]
        for h in self.hosts.values():
            gw = f"  default via {h.gw4}, {h.gw6}" if h.gw4 else ""
            lines.append(f"  {h.role} (netns {h.ns}){gw}")
            lines += [f"    {i.name:5} {i.ip4}/{i.plen4:<3} {i.ip6}/{i.plen6:<3} "
                      f"{i.mac} mtu {i.mtu:<5} <-> {i.peer}" for i in h.ifaces]
        return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bpftap.lab up [--prefix P] | down --prefix P | list | ping ADDR...``."""
    ap = argparse.ArgumentParser(prog="python -m bpftap.lab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build a lab, print it, leave it running").add_argument(
        "--prefix", help="namespace prefix (default: bt + 6 random hex digits)")
    sub.add_parser("down", help="end a lab's processes, delete its namespaces").add_argument(
        "--prefix", required=True)
    sub.add_parser("list", help="print the prefixes of existing labs")
    ping = sub.add_parser("ping", help="ICMP echo from the current namespace (for Lab.ping)")
    ping.add_argument("--timeout", type=float, default=3.0, help="seconds for all addresses")
    ping.add_argument("addrs", nargs="+", type=ip_address)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            lab = Lab(args.prefix)
            lab.up()
            print(f"{lab.describe()}\ntear down with: python -m bpftap.lab down --prefix {lab.prefix}")
        elif args.cmd == "down":
            lab = Lab.adopt(args.prefix)
            if not lab._created:
                print(f"no namespaces with prefix {args.prefix}", file=sys.stderr)
                return 1
            lab.close()
        elif args.cmd == "list":
            for prefix in lab_prefixes():
                print(prefix)
        else:
            deadline = time.monotonic() + args.timeout
            for addr in args.addrs:
                while not echo(addr, min(1.0, max(deadline - time.monotonic(), 0.1))):
                    if time.monotonic() >= deadline:
                        print(f"no echo reply from {addr}", file=sys.stderr)
                        return 1
    except (BpftapError, subprocess.CalledProcessError) as e:
        print(f"bpftap.lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
