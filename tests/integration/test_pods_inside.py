"""Pods behind an eBPF CNI's redirects: what host-side attach misses, and what `attach: inside` sees.

The lab (podlab.PodLab with add_outside) puts an outside host behind the
node's uplink; tests/bpf_progs/cni_redirect.bpf.c, on tc ingress of the
uplink and of each pod's host-side veth, routes the way Cilium's and
Calico's eBPF host routing do: traffic for a pod is handed straight to the
pod's eth0 with bpf_redirect_peer (the host-side veth's hooks never see
it), traffic from a pod leaves by bpf_redirect to the uplink, past the host
stack. The node itself does not forward, so every packet that crosses did
so by those redirects. A CPU is kept busy meanwhile.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bpftap import abi

from .agent_lab import BPFTAP, WIRE, work_dir
from .podlab import BRIDGE_MAC, COL4, EXT4, EXT6, EXT_MAC, UPLINK, UPLINK_MAC, VNI, PodLab, wait_for
from .test_big_packets import busy_cpu

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

CNI = [sys.executable, str(Path(__file__).resolve().parents[1] / "bpf_progs" / "cni.py")]
CONFIG = """
sources: [{{pods: {{{select}}}{attach}}}]
sessions: [{{name: ids, remote: "{col}", vni: {vni}}}]
rules: [{{number: 100, sessions: [ids]}}]
"""
PINGS = 20  # per family


@pytest.fixture
def lab() -> Iterator[PodLab]:
    with PodLab() as lab:
        for pod in ("web-1", "db-1"):
            lab.add_pod(pod)
        lab.add_outside()
        yield lab


@contextmanager
def cni(lab: PodLab) -> Iterator[subprocess.Popen[str]]:
    """cni_redirect on the uplink's and every pod veth's ingress, routing the pods and the outside host."""
    args = ["--on", UPLINK]
    for pod, n in lab.pods.items():
        args += ["--on", f"vp-{pod}"]
        mac = lab.mac(lab.ns(pod))
        for addr in (f"198.18.10.{n}", f"2001:db8:10::{n:x}"):
            args += ["--route", f"{addr},vp-{pod},peer,{mac},{BRIDGE_MAC}"]
    for addr in (EXT4, EXT6):
        args += ["--route", f"{addr},{UPLINK},redirect,{EXT_MAC},{UPLINK_MAC}"]
    proc = lab.popen(lab.node, [*CNI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def cni_counts(proc: subprocess.Popen[str]) -> dict[str, int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("counts\n")
    proc.stdin.flush()
    return dict(json.loads(proc.stdout.readline()))


def status(lab: PodLab) -> dict[str, Any]:
    res = lab.run(lab.node, [*BPFTAP, "status", "--json"])
    return json.loads(res.stdout) if res.returncode == 0 else {}


def echo_kind(frame: bytes) -> str | None:
    """`request` or `reply` for an ICMP/ICMPv6 echo frame (decapsulated, untagged), else None."""
    kind = frame[12:14]
    if kind == b"\x08\x00" and len(frame) > 34 and frame[23] == 1:
        ihl = (frame[14] & 0xF) * 4
        return {8: "request", 0: "reply"}.get(frame[14 + ihl])
    if kind == b"\x86\xdd" and len(frame) > 54 and frame[20] == 58:
        return {128: "request", 129: "reply"}.get(frame[54])
    return None


def ping_outside_to_pod(lab: PodLab, pod: str) -> Counter[str]:
    """The outside host pings `pod` PINGS times per family; the echo frames the collector got copies of, by kind."""
    sniffer = lab.popen(lab.col, [*WIRE, "sniff", "vx0", "6"], stdout=subprocess.PIPE, text=True)
    assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
    n = lab.pods[pod]
    pingers = [lab.popen(lab.ext, ["ping", "-c", str(PINGS), "-i", "0.05", "-W", "1", addr], stdout=subprocess.PIPE,
                         text=True)
               for addr in (f"198.18.10.{n}", f"2001:db8:10::{n:x}")]
    for p in pingers:
        out, _ = p.communicate(timeout=20)
        assert p.returncode == 0, out
        assert f"{PINGS} received" in out, out
    out, _ = sniffer.communicate(timeout=20)
    return Counter(k for line in out.splitlines() if (k := echo_kind(bytes.fromhex(json.loads(line)["hex"]))))


def netns(lab: PodLab, glob: str) -> str:
    """A `pods:` selector's body for the namespaces of the pods `glob`."""
    return f'netns: "{lab.prefix}-{glob}"'


@contextmanager
def agent(lab: PodLab, attach: str = "", select: str = "web-1", env: dict[str, str] | None = None) -> Iterator[Path]:
    """The agent in the node namespace, selecting the namespaces `select` (web-1 present), or Kubernetes pods if
    `select` is a selector's body; yields its log file."""
    work = work_dir("inside-")
    config = work / "bpftap.yaml"
    config.write_text(CONFIG.format(col=COL4, vni=VNI, select=select if ":" in select else netns(lab, select),
                                    attach=f", attach: {attach}" if attach else ""))
    log = work / "agent.log"
    with log.open("w") as out:
        proc = lab.popen(lab.node, [*BPFTAP, "run", "-c", str(config)], stdout=out, stderr=out, env=env)
    try:
        wait_for("the agent", lambda: status(lab).get("sessions") and all(s["via"] for s in status(lab)["sessions"]))
        wait_for("the pod", lambda: any(f"pod {lab.ns('web-1')}" in line for line in log.read_text().splitlines()))
        yield log
        proc.terminate()
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_host_side_attach_misses_redirect_peer_ingress(lab: PodLab) -> None:
    """With the programs on the host-side veth, copies miss every packet the CNI redirected into the pod."""
    with cni(lab) as proc, agent(lab) as log, busy_cpu():
        before = cni_counts(proc)
        seen = ping_outside_to_pod(lab, "web-1")
        after = cni_counts(proc)
    peer = after["peer"] - before["peer"]
    sent = 2 * PINGS  # per kind: v4 + v6
    print(f"\nhost-side attach, ingress by bpf_redirect_peer: {peer} packets redirected into the pod; "
          f"copies of echo requests (pod ingress) {seen['request']} of {sent} (missed {sent - seen['request']}), "
          f"of echo replies (pod egress) {seen['reply']} of {sent}")
    assert "attached" in log.read_text()
    assert peer >= sent and after["redirect"] - before["redirect"] >= sent  # the CNI carried both directions
    assert seen["request"] == 0  # the host-side veth never saw them
    assert seen["reply"] == sent  # bpftap runs ahead of the CNI on the veth's ingress


def links(lab: PodLab, ns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(lab.run(ns, ["ip", "-j", "link", "show"]).stdout)]


def test_inside_mirrors_both_directions_and_adds_no_frame_in_the_pod(lab: PodLab) -> None:
    """`attach: inside`: every echo both ways is mirrored; the pod's eth0 carries exactly the pings, nothing else."""
    pod = lab.ns("web-1")
    with cni(lab), agent(lab, "inside") as log, busy_cpu():
        assert "bpftapi" in links(lab, pod) and any(n.startswith("bpi") for n in links(lab, lab.node))
        sniffer = lab.popen(pod, [*WIRE, "sniff", "eth0", "8"], stdout=subprocess.PIPE, text=True)
        assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
        seen = ping_outside_to_pod(lab, "web-1")
        out, _ = sniffer.communicate(timeout=20)
        counters = status(lab)["counters"]
    frames = [bytes.fromhex(json.loads(line)["hex"]) for line in out.splitlines()]
    on_eth0 = Counter(echo_kind(f) for f in frames)
    udp = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 17]
    # the rest: the pod's own housekeeping (ARP; ICMPv6 neighbour discovery, MLD after a hop-by-hop header)
    rest = [f for f in frames if echo_kind(f) is None and not (
        f[12:14] == b"\x08\x06" or (f[12:14] == b"\x86\xdd" and (f[20] == 0 or (f[20] == 58 and f[54] >= 130))))]
    sent = 2 * PINGS
    print(f"\nattach: inside: copies of echo requests (pod ingress) {seen['request']} of {sent}, of echo replies "
          f"(pod egress) {seen['reply']} of {sent}; frames on the pod's eth0: {len(frames)} "
          f"({on_eth0['request']} requests, {on_eth0['reply']} replies, {len(udp)} UDP); "
          f"stage 2 refused {counters.get('xfer_bad', 0)}")
    assert seen["request"] == sent and seen["reply"] == sent
    # what the pod's eth0 carries: the pings and their replies, once each; no copy (no UDP at all)
    assert on_eth0["request"] == sent and on_eth0["reply"] == sent and not udp and not rest, [f.hex() for f in rest]
    assert counters.get("xfer_bad", 0) == 0
    text = log.read_text()
    assert "(in the pod)" in text and "Traceback" not in text, text
    # nothing left: no pair on either side, no program on the pod's eth0
    assert not [n for n in links(lab, lab.node) if n.startswith("bpi")]
    assert "bpftapi" not in links(lab, pod)
    snippet = ("import json, socket\nfrom bpftap.bpf import tc\ni = socket.if_nametoindex('eth0')\n"
               "print(json.dumps([d.value for d in tc.Direction if tc.tcx_programs(i, d)]))")
    res = lab.run(pod, [BPFTAP[0], "-c", snippet])
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stderr


def vx0_stats(lab: PodLab) -> dict[str, int]:
    data = json.loads(lab.run(lab.col, ["ip", "-s", "-j", "link", "show", "vx0"], check=True).stdout)[0]["stats64"]
    return {k: int(v) for k, v in data["rx"].items()}


def test_inside_copies_super_packets_whole_and_every_byte_arrives(lab: PodLab) -> None:
    """A bulk TCP flow into the pod, mirrored inside with a CPU kept busy: the pod's pair carries super-packets
    whole, bpftap0's GSO path encapsulates them whole, and the collector's VXLAN device gets all the payload."""
    server = lab.popen(lab.ns("web-1"), ["iperf3", "-s", "-1", "-p", "5298"], stdout=subprocess.DEVNULL)
    with cni(lab), agent(lab, "inside"), busy_cpu():
        before, whole = vx0_stats(lab), status(lab)["counters"].get("gso_sent", 0)
        out = lab.run(lab.ext, ["iperf3", "-c", "198.18.10.1", "-p", "5298", "-t", "2", "-J"], check=True, timeout=40)
        after, counters = vx0_stats(lab), status(lab)["counters"]
    server.wait(timeout=10)
    moved = json.loads(out.stdout)["end"]["sum_received"]["bytes"]
    # payload in copies: the device counts from the inner IP header (IPv4 20 + TCP with timestamps 32 per copy)
    payload = after["bytes"] - before["bytes"] - 52 * (after["packets"] - before["packets"])
    whole = counters.get("gso_sent", 0) - whole
    print(f"\ninside, bulk TCP into the pod: {moved} bytes moved, {payload / moved * 100:.2f} % of them in copies; "
          f"{whole} super-packets encapsulated whole; encap_fail {counters.get('encap_fail', 0)}")
    assert whole > 100 and counters.get("encap_fail", 0) == 0 and counters.get("xfer_bad", 0) == 0
    assert payload >= 0.999 * moved


def test_auto_goes_inside_behind_a_cni_and_follows_pods(lab: PodLab) -> None:
    """`attach: auto`: inside for a pod whose veth carries the CNI's program, host for one without; a deleted pod's
    pair goes with it."""
    with cni(lab), agent(lab, "auto", select="web-*") as log:
        wait_for("web-1 inside", lambda: "(in the pod)" in log.read_text())
        bpi = [n for n in links(lab, lab.node) if n.startswith("bpi")]
        assert len(bpi) == 1
        seen = ping_outside_to_pod(lab, "web-1")
        assert seen["request"] == seen["reply"] == 2 * PINGS
        lab.add_pod("web-2")  # no CNI program on its veth
        wait_for("web-2 on its host side", lambda: "attached mirror_ingress on vp-web-2" in log.read_text())
        lab.del_pod("web-1")
        wait_for("web-1's pair to go", lambda: not [n for n in links(lab, lab.node) if n.startswith("bpi")])
        wait_for("web-1 forgotten", lambda: "vp-web-1 is gone" in log.read_text())
    text = log.read_text()
    assert "attaching inside the pod" in text and "Traceback" not in text and "not attached" not in text, text
    assert not [n for n in links(lab, lab.node) if n.startswith("bpi")]


def test_kubernetes_selector_finds_the_pod_by_its_ip_and_goes_inside(lab: PodLab) -> None:
    """Pods selected by labels from an API server: web-1 is the namespace that holds its IP (and a stale namespace
    that holds it too is passed over: its eth0 is no veth to here), `attach: auto` goes inside it (the CNI's program
    is on its veth), and every echo both ways is mirrored; db-1 (app: db) not at all."""
    lab.add_stale("web-1")
    with cni(lab), apiserver(lab) as env, busy_cpu(), \
            agent(lab, "auto", select="namespace: shop, labels: {app: web}", env=env) as log:
        web, db = ping_outside_to_pod(lab, "web-1"), ping_outside_to_pod(lab, "db-1")
    text = log.read_text()
    print(f"\nkubernetes selector app=web, auto: copies of web-1's requests/replies {web['request']}/{web['reply']} "
          f"of {2 * PINGS}; of db-1's {db['request']}/{db['reply']}")
    assert web["request"] == web["reply"] == 2 * PINGS and not db
    assert "attaching inside the pod" in text and f"pod {lab.ns('web-1')}: attached mirror_ingress" in text, text
    assert "Traceback" not in text and "cannot be attached inside" not in text, text


def inner_addresses(frame: bytes) -> set[str]:
    kind = frame[12:14]
    if kind == b"\x08\x00":
        return {str(ipaddress.IPv4Address(frame[26:30])), str(ipaddress.IPv4Address(frame[30:34]))}
    if kind == b"\x86\xdd":
        return {str(ipaddress.IPv6Address(frame[22:38])), str(ipaddress.IPv6Address(frame[38:54]))}
    return set()


@contextmanager
def apiserver(lab: PodLab) -> Iterator[dict[str, str]]:
    """A Kubernetes API server (tests/integration/apiserver.py) in the node namespace, knowing web-1 and db-1 as
    pods of namespace shop on node lab-node; yields the environment that points bpftap at it."""
    work = work_dir("k8s-")
    pods = [{"namespace": "shop", "name": pod, "ip": f"198.18.10.{n}", "labels": {"app": pod[:-2]},
             "node": "lab-node"} for pod, n in lab.pods.items()]
    proc = lab.popen(lab.node, [sys.executable, "-m", "tests.integration.apiserver", str(work / "kubeconfig"),
                                json.dumps(pods)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                     cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield {**os.environ, "KUBECONFIG": str(work / "kubeconfig"), "NODE_NAME": "lab-node"}
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.mark.parametrize("how", ["netns", "kubernetes"])
def test_mirror_one_pod(lab: PodLab, how: str) -> None:
    """`bpftap mirror --netns NAME` and `bpftap mirror pod/NAMESPACE/NAME` (read from an API server): the
    collector gets that pod's traffic, all of it and nothing else; at the end nothing of bpftap is left (auto goes
    inside here: the CNI's program is on the pod's veth, and the pod's IP names its namespace)."""
    web, db = lab.ns("web-1"), lab.ns("db-1")
    with cni(lab), busy_cpu(), apiserver(lab) as env:
        target = ["--netns", web] if how == "netns" else ["pod/shop/web-1"]
        if how == "kubernetes":
            lab.add_stale("web-1")  # bpftap must pick the namespace whose eth0's peer is here
        proc = lab.popen(lab.node, [*BPFTAP, "mirror", *target, "--to", COL4, "--duration", "9s"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        with proc:  # (closes its pipes however the test ends)
            try:
                wait_for("the pod attached", lambda: "bpftapi" in links(lab, web)
                         and all(s["via"] for s in status(lab).get("sessions", [{"via": None}])))
                sniffer = lab.popen(lab.col, [*WIRE, "sniff", "vx0", "4"], stdout=subprocess.PIPE, text=True)
                assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
                pingers = [lab.popen(lab.ext, ["ping", "-c", str(PINGS), "-i", "0.05", "-W", "1", addr],
                                     stdout=subprocess.DEVNULL)
                           for n in (lab.pods["web-1"], lab.pods["db-1"])
                           for addr in (f"198.18.10.{n}", f"2001:db8:10::{n:x}")]
                assert all(p.wait(timeout=20) == 0 for p in pingers)
                out, _ = sniffer.communicate(timeout=20)
                summary, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
    frames = [bytes.fromhex(json.loads(line)["hex"]) for line in out.splitlines()]
    kinds = Counter(echo_kind(f) for f in frames)
    addresses = set().union(*(inner_addresses(f) for f in frames if not f[0] & 1))
    web_addrs = {"198.18.10.1", "2001:db8:10::1"}
    print(f"\nbpftap mirror {' '.join(target)}: {len(frames)} copies, {kinds['request']} echo requests, "
          f"{kinds['reply']} replies; unicast inner addresses {sorted(addresses)}\n{summary}")
    assert proc.returncode == 0, err
    assert kinds["request"] == kinds["reply"] == 2 * PINGS
    # every unicast copy is to or from web-1 (multicast that the bridge floods to every port, such as db-1's
    # neighbour solicitations for the gateway, rightly reaches web-1's eth0 too)
    unicast = [f for f in frames if not f[0] & 1 and inner_addresses(f)]
    assert unicast and all(web_addrs & inner_addresses(f) for f in unicast)
    assert len([f for f in frames if f[0] & 1]) < 20
    assert "copies sent" in summary
    assert not [n for n in links(lab, lab.node) if n.startswith(("bpi", "bpftap"))]
    assert "bpftapi" not in links(lab, web) and "bpftapi" not in links(lab, db)
    assert "clsact" not in lab.run(lab.node, ["tc", "qdisc", "show"]).stdout


def test_mirror_netns_mistakes(lab: PodLab) -> None:
    for args, message in (
        (["--netns", "no-such-ns"], "--netns: 'no-such-ns': no such network namespace"),
        (["--netns", lab.node], "has no eth0 whose veth peer is in this network namespace"),
        ([], "give an interface, pod/NAMESPACE/NAME or --netns NAME"),
    ):
        res = lab.run(lab.node, [*BPFTAP, "mirror", *args, "--to", COL4, "--duration", "1s"], timeout=30)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
