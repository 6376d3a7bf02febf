"""`bpftap mirror` (issue 15 item 3) in the lab, a CPU kept busy: no config file, real traffic, nothing left behind.

`bpftap mirror eth0 --to COL --duration ...` runs on the tapped host (its
pins in a scope of the test's own, in the host's bpffs); on the collector
host `bpftap collect --out -` streams pcapng into `tshark -r -`. The source
host sends UDP datagrams and ICMP echo requests (dst answers them) through
the tapped eth0: the inner frames tshark decodes must be exactly those, each
once (requests and datagrams on ingress, replies on egress), and the
mirror's summary must count every copy the collector wrote. SIGINT ends it
with exit 0 and leaves the tapped host as it was; bad options are exit 2
naming the option.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpftap import abi
from bpftap.demo import wait_for_agent
from bpftap.lab import Lab

from .agent_lab import BPFTAP, TIME_SCALE, PinScope, hook_state, in_tap
from .test_big_packets import busy_cpu

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing (make test installs it)"),
]

IDENT = 0x6D69  # the ICMP echo id of the test's requests
# Runs on the source host: for each i, one UDP datagram to each port and one ICMP echo request
# (id IDENT, seq i + 1), waiting for its reply, so every request and reply crosses the tapped eth0
SENDER = """
import socket, struct, sys, time
dst, count, ports = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for i in range(count):
    for port in ports:
        u.sendto(b"bpftap mirror %d to %d" % (i, port), (dst, port))
    body = b"bpftap echo %02d" % i
    head = struct.pack("!BBHHH", 8, 0, 0, IDENT, i + 1)
    r.sendto(struct.pack("!BBHHH", 8, 0, csum(head + body), IDENT, i + 1) + body, (dst, 0))
    end = time.monotonic() + 5
    while time.monotonic() < end:
        r.settimeout(end - time.monotonic())
        data = r.recv(2048)
        ihl = (data[0] & 15) * 4
        if struct.unpack("!BBHHH", data[ihl:ihl + 8])[::3] == (0, IDENT):
            break
    else:
        sys.exit("no echo reply %d" % i)
    time.sleep(0.02)
""".replace("IDENT", str(IDENT))
FIELDS = ["icmp.type", "icmp.ident", "icmp.seq", "udp.dstport", "udp.payload", "data.data"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.fixture
def pins(lab: Lab) -> Iterator[PinScope]:
    scope = PinScope()
    yield scope
    scope.close(lab)


class Mirror:
    """`bpftap mirror ARGS` on the tapped host, its pins in `pins`; output in files."""

    def __init__(self, lab: Lab, pins: PinScope, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bpftap-mirror-"))
        self.out, self.err = self.dir / "stdout", self.dir / "stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(in_tap(lab, [*BPFTAP, "mirror", *args]), stdout=out, stderr=err,
                                         env=pins.env, start_new_session=True)
        try:
            wait_for_agent(lab, 20 * TIME_SCALE)
        except Exception:  # noqa: BLE001 - whatever the failure, kill bpftap mirror and show its log
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"bpftap mirror did not start:\n{self.err.read_text()}") from None

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=timeout * TIME_SCALE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        out, err = self.out.read_text(), self.err.read_text()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code, out, err


class Collector:
    """`bpftap collect --out -` on the collector host, piped into `tshark -r - -T fields`."""

    def __init__(self, lab: Lab) -> None:
        cmd = [*BPFTAP, "collect", "--listen", f"{lab.col.ip4}:4789", "--tunnel", "vxlan", "--out", "-"]
        self.proc = lab.popen(lab.col, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        fields = [w for f in FIELDS for w in ("-e", f)]
        self.tshark = subprocess.Popen(["tshark", "-r", "-", "-T", "fields", "-E", "occurrence=f", *fields],
                                       stdin=self.proc.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()  # tshark's now
        started = self.proc.stderr.readline().decode()
        assert started.startswith("listening on"), started

    def stop(self) -> tuple[list[list[str]], str]:
        """SIGTERM the collector; tshark's rows (one list of FIELDS per frame) and the collector's summary."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        summary = self.proc.stderr.read().decode()
        assert self.proc.wait(timeout=15 * TIME_SCALE) == 0, summary
        out, err = self.tshark.communicate(timeout=30 * TIME_SCALE)
        assert self.tshark.returncode == 0, err
        return [line.split("\t") for line in out.splitlines()], summary


def send(lab: Lab, count: int, ports: str = "7000") -> None:
    lab.run(lab.src, [sys.executable, "-c", SENDER, str(lab.dst.ip4), str(count), ports], timeout=120)


def ours(rows: list[list[str]]) -> Counter[tuple[str, ...]]:
    """The test's frames among the decoded ones: ('echo', type, seq) and ('udp', port, payload), counted."""
    found: Counter[tuple[str, ...]] = Counter()
    for row in rows:
        icmp_type, ident, seq, port, payload, data = (row + [""] * len(FIELDS))[: len(FIELDS)]
        if icmp_type in ("0", "8") and ident and int(ident, 0) == IDENT:
            found[("echo", icmp_type, seq)] += 1
        elif not icmp_type and port:
            found[("udp", port, bytes.fromhex((payload or data).replace(":", "")).decode(errors="replace"))] += 1
    return found


def expected(count: int, ports: tuple[int, ...] = (7000,)) -> Counter[tuple[str, ...]]:
    want: Counter[tuple[str, ...]] = Counter()
    for i in range(count):
        want.update(("udp", str(p), f"bpftap mirror {i} to {p}") for p in ports)
        want.update(("echo", t, str(i + 1)) for t in ("8", "0"))
    return want


def left_behind(lab: Lab, pins: PinScope, before: dict[str, str]) -> None:
    """Assert the tapped host is as `before`: no filter, tcx program, qdisc, internal device or pin of ours."""
    after = hook_state(lab)
    assert after == before, "bpftap mirror left something behind"
    assert "bpftap" not in after["link names"], after["link names"]
    pinned = [p for p in pins.root.rglob("*")] if pins.root.exists() else []
    assert not [p for p in pinned if p.is_file()], f"pins left: {pinned}"


def mirrored(lab: Lab, pins: PinScope, count: int, ports: tuple[int, ...], *args: str) -> tuple[
        Counter[tuple[str, ...]], list[list[str]], str, str, str]:
    """Run `bpftap mirror eth0 --to COL --duration 15s ARGS` over the test's traffic, a CPU busy."""
    before = hook_state(lab)
    with busy_cpu():
        collector = Collector(lab)
        mirror = Mirror(lab, pins, "eth0", "--to", str(lab.col.ip4), "--duration", f"{15 * TIME_SCALE:g}s", *args)
        send(lab, count, ",".join(map(str, ports)))
        code, out, err = mirror.wait(40)
        rows, summary = collector.stop()
    assert code == 0, err
    left_behind(lab, pins, before)
    return ours(rows), rows, summary, out, err


def test_mirror_sends_exactly_the_traffic_and_ends_clean_at_its_duration(lab: Lab, pins: PinScope) -> None:
    count = 10
    got, rows, summary, out, err = mirrored(lab, pins, count, (7000,))
    assert got == expected(count), f"decapsulated frames differ from the traffic sent:\n{rows}"
    # every copy the mirror counts reached the collector (which may also have one sent between the
    # mirror's last count and its detach: the lab's hosts talk NDP now and then)
    sent = int(re.search(r"copies sent (\d+), not sent 0\b", out)[1])  # type: ignore[index]
    assert re.search(rf"session mirror \(vxlan {lab.col.ip4} vni 42\): sent {sent} copies", out), out
    wrote = int(re.search(r"wrote (\d+) frames", summary)[1])  # type: ignore[index]
    assert sum(got.values()) <= sent <= wrote, (out, summary)
    # the live counters: a line a second on stderr (not a terminal here)
    assert re.search(r"^\s+\d+ s  matched \d+  copies \d+ \(", err, re.M), err
    assert "Traceback" not in err


def test_sigint_detaches_and_leaves_nothing(lab: Lab, pins: PinScope) -> None:
    before = hook_state(lab)
    with busy_cpu():
        mirror = Mirror(lab, pins, "eth0", "--to", str(lab.col.ip4), "--direction", "ingress")
        status = lab.run(lab.tap, [*BPFTAP, "status"]).stdout
        assert "config bpftap mirror" in status and "eth0" in status, status
        mirror.proc.send_signal(signal.SIGINT)
        code, out, err = mirror.wait(30)
    assert code == 0, err
    assert "copies sent" in out and "Traceback" not in err
    left_behind(lab, pins, before)


@pytest.mark.parametrize("args,message", [
    (["eth0", "--to", "{col}", "--vni", "99999999"], "bpftap mirror: --vni: 99999999 is out of range 0-16777215"),
    (["nope0", "--to", "{col}"], "bpftap mirror: IFACE: 'nope0' matches no interface in this network namespace"),
    (["eth0", "--to", "198.18.2.x"], "bpftap mirror: --to: '198.18.2.x' is not an IP address"),
    (["eth0", "--to", "{col}", "--snaplen", "3"], "bpftap mirror: --snaplen: 3 is out of range 14-65535"),
    (["eth0", "--to", "{col}", "--duration", "soon"], "argument --duration: 'soon' is not a duration"),
])
def test_bad_options_exit_2_naming_the_option(lab: Lab, pins: PinScope, args: list[str], message: str) -> None:
    before = hook_state(lab)
    cmd = in_tap(lab, [*BPFTAP, "mirror", *(a.format(col=lab.col.ip4) for a in args)])
    done = subprocess.run(cmd, env=pins.env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert hook_state(lab) == before


def test_filter_mirrors_only_what_matches(lab: Lab, pins: PinScope) -> None:
    count = 5
    got, rows, _, _, _ = mirrored(lab, pins, count, (7000, 7001), "--filter", "udp dst port 7000")
    want = Counter({k: n for k, n in expected(count, (7000,)).items() if k[0] == "udp"})
    assert got == want, f"with --filter 'udp dst port 7000':\n{rows}"
