"""Tier 1: per-packet cost of the kernel programs through BPF_PROG_TEST_RUN.

`run_tier1` (the orchestrator) makes a network namespace with a veth pair
whose peer is DOWN, so every clone the programs make is transmitted and
dropped there: its cost without a receiver. It runs this module as a worker
inside that namespace, pinned to CPU 1 (``taskset -c 1``), and summarises
what the worker measured.

Stage 1 (mirror_ingress) runs with ``repeat`` calibrated to about
`target_ms` per measurement (at most 10^6): the original is never changed,
so every repetition sees the same packet. Stage 2 (mirror_encap) grows the
packet and rewrites its mark, so a repetition would not see a fresh clone:
it is measured with repeat=1, the median over many calls, against an empty
program measured the same way. Rounds interleave every case (A B C A B C);
round 0 is a warm-up and is discarded.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any, ClassVar

from bpftap.bench.stats import RULE_COUNTS_WANTED, clip_rule_counts, ratio_summary, summarize

SIZES = (64, 1500)
FAMILIES = (4, 6)
SESSION_COUNTS = (1, 4)
ENCAP_CALLS = 300
EMPTY_PROG = "bench_empty"
NOMATCH_PORT = 6000
"""First destination port of the rules that must not match (+ up to 16383 stays below 65536, above 5201)."""


def empty_object_path() -> Path:
    """Where `make build` (the bench's rule) puts the empty program."""
    here = Path(__file__).resolve()
    return here.parents[3] / "build" / "bench" / "empty.bpf.o"


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(family: int, size: int, dport: int = 5201) -> bytes:
    """An Ethernet + IPv4/IPv6 + UDP frame of exactly `size` bytes, lab addresses."""
    eth = bytes.fromhex("02b700000200" "02b700000100") + (b"\x08\x00" if family == 4 else b"\x86\xdd")
    l3 = 20 if family == 4 else 40
    payload = b"b" * (size - 14 - l3 - 8)
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    if family == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                          ip_address("198.18.1.1").packed, ip_address("198.18.3.1").packed)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    else:
        hdr = struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64,
                          ip_address("2001:db8:1::1").packed, ip_address("2001:db8:3::1").packed)
    return eth + hdr + udp


FILTER_RULES = 8
FILTER = "udp port 53 or tcp[tcpflags] & tcp-syn != 0"
"""The issue's example expression: the bench packet (UDP to 5201) is not one it takes."""


def rule_config(n_rules: int, match: bool, sessions: int, filters: str = "") -> dict[str, Any]:
    """`n_rules` rules; every one but a matching last one is checked to its last field and fails.

    The non-matching rules are UDP rules for destination ports 6000.. (the
    test packet goes to 5201): family, protocol and addresses match, the
    port does not, so each costs a full rule check. `filters`: the first
    FILTER_RULES rules get FILTER as well; "other": they are TCP rules, never
    a candidate for the UDP packet (what filter rules cost the rest of the
    traffic); "candidate": the first of them takes every UDP packet but for
    its filter (one evaluation of the slot's filters, then no match).
    """
    names = [f"s{i}" for i in range(max(SESSION_COUNTS))]
    rules: list[dict[str, Any]] = [
        {"number": 1 + i, "protocol": "udp", "dst_ports": NOMATCH_PORT + i, "sessions": ["s0"]}
        for i in range(n_rules - (1 if match else 0))
    ]
    for i, rule in enumerate(rules[:FILTER_RULES] if filters else ()):
        rule["filter"] = FILTER
        if filters == "other":
            rule["protocol"] = "tcp"
        elif i == 0:
            del rule["dst_ports"]
    if match:
        rules.append({"number": n_rules + 1, "sessions": names[:sessions]})
    return {"sources": [{"interface": "k0"}],
            "sessions": [{"name": n, "remote": f"198.18.2.{1 + i}", "vni": 42 + i} for i, n in enumerate(names)],
            "rules": rules}


def _class_capacity() -> Callable[[int], int] | None:
    """How this tree sizes `class_bits` for a rule set (None: its object's tables are not sized at load)."""
    try:
        from bpftap.compile.classifier import class_capacity
    except ImportError:  # a tree from before bpftap.compile
        from bpftap.agent import tables

        found: Callable[[int], int] | None = getattr(tables, "class_capacity", None)
        return found
    return class_capacity


class Worker:
    """Runs inside the bench namespace: loads the objects and measures each case."""

    def __init__(self, target_ms: float, largest: int) -> None:
        from bpftap import abi
        from bpftap.agent import tables as tables_mod
        from bpftap.bpf.objects import BpfObject
        from bpftap.netlink import NextHop

        self.abi, self.target_ns = abi, target_ms * 1e6
        self.k0 = socket.if_nametoindex("k0")
        obj = BpfObject.open(abi.object_path())
        # an object whose classifier tables are sized at load (as the agent does it) gets room
        # for the largest rule set measured; an object without them loads as it is
        capacity_of = _class_capacity()
        if capacity_of is not None and hasattr(obj, "set_max_entries"):
            classes = max(self._classes(largest, m, 4) for m in (False, True))
            capacity = capacity_of(classes)
            obj.set_max_entries(abi.MAP_CLASS_BITS, abi.RULE_SLOTS * capacity)
            self.obj = obj.load()
            self.tables = tables_mod.Tables(self.obj, capacity)
        else:
            self.obj = obj.load()
            self.tables = tables_mod.Tables(self.obj)
        self.empty_obj = BpfObject.open(empty_object_path()).load()
        self.hop = NextHop(self.k0, "k0", ip_address("198.18.2.254"), b"\x02\xb7\x00\x00\x02\x02",
                           b"\x02\xb7\x00\x00\x04\x00", 9000)
        self.repeat: dict[str, int] = {}
        self.problems: dict[str, str] = {}
        self._last: dict[str, int] = {}

    _compiled: ClassVar[dict[tuple[int, bool, int, str], Any]] = {}

    @classmethod
    def compile(cls, n_rules: int, match: bool, sessions: int, filters: str = "") -> Any:
        """(config, slots, compiled rules) of a bench rule set, with whichever compiler this tree has."""
        from bpftap.config import parse_config

        try:
            from bpftap.compile.classifier import compile_rules
            from bpftap.compile.slots import assign_session_slots
        except ImportError:  # a tree from before bpftap.compile
            from bpftap.rules import assign_session_slots  # type: ignore[import-not-found,no-redef]

            try:
                from bpftap.classifier import compile_rules  # type: ignore[import-not-found,no-redef]
            except ImportError:
                from bpftap.rules import compile_rules  # type: ignore[no-redef]
        key = (n_rules, match, sessions, filters)
        if key not in cls._compiled:
            cfg = parse_config(rule_config(n_rules, match, sessions, filters), "bench.yaml")
            slots = assign_session_slots(cfg.sessions)
            cls._compiled[key] = (cfg, slots, compile_rules(cfg, slots))
        return cls._compiled[key]

    @classmethod
    def _classes(cls, n_rules: int, match: bool, sessions: int) -> int:
        return len(getattr(cls.compile(n_rules, match, sessions)[2], "classes", ()))

    def program(self, n_rules: int, match: bool, sessions: int, filters: str = "") -> int:
        """Write a rule set into the maps as the agent would; returns the last rule's `rules` map key."""
        cfg, slots, compiled = self.compile(n_rules, match, sessions, filters)
        for sess in cfg.sessions:
            self.tables.write_session(slots[sess.name], sess, self.hop)
        slot = self.tables.write_rules(compiled, self.k0)
        n = len(getattr(compiled, "rules", compiled))
        return int(slot * self.abi.MAX_RULES + n - 1)

    def repeated(self, name: str, prog: Any, data: bytes, ctx: Any = None) -> float:
        """ns per run of `prog` on `data`, repeat calibrated once per case to ~target_ms."""
        if name not in self.repeat:
            probe = prog.test_run(data, ctx=ctx, repeat=1000)
            per = max(probe.duration_ns, 1)
            self.repeat[name] = int(min(1_000_000, max(1000, self.target_ns / per)))
        res = prog.test_run(data, ctx=ctx, repeat=self.repeat[name])
        if res.retval != self.abi.MIRROR_PASS:
            self.problems[name] = f"verdict {res.retval}, expected the neutral {self.abi.MIRROR_PASS}"
        return float(res.duration_ns)

    def single(self, name: str, prog: Any, data: bytes, mark: int, want: int | None) -> float:
        """Median ns of ENCAP_CALLS runs with repeat=1 (each on a fresh skb)."""
        from bpftap.bpf.objects import SkBuff

        times = []
        for _ in range(ENCAP_CALLS):
            res = prog.test_run(data, ctx=SkBuff(mark=mark), out_size=len(data) + 1024)
            if want is not None and res.retval != want:
                self.problems[name] = f"verdict {res.retval}, expected {want}; counters {self.moved()}"
            times.append(res.duration_ns)
        return float(statistics.median(times))

    def cases(self, rule_counts: Sequence[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for fam in FAMILIES:
            for size in SIZES:
                base = {"family": fam, "size": size}
                out.append({**base, "kind": "empty", "stage": 1})
                for n in rule_counts:
                    out.append({**base, "kind": "nomatch", "stage": 1, "rules": n})
                    out.append({**base, "kind": "match", "stage": 1, "rules": n})
                if hasattr(self.abi, "MAX_FILTER_RULES"):  # rule filters (config filter:)
                    for n in (min(rule_counts), max(rule_counts)):
                        out.append({**base, "kind": "nomatch-filters", "stage": 1, "rules": n})
                        out.append({**base, "kind": "filter", "stage": 1, "rules": n})
                if hasattr(self.abi, "PROG_LINK"):  # an original leaving a listed link (config links:)
                    out.append({**base, "kind": "link", "stage": 1})
                out.append({**base, "kind": "empty1", "stage": 2})
                for k in SESSION_COUNTS:
                    out.append({**base, "kind": "encap", "stage": 2, "sessions": k})
        for c in out:
            c["name"] = "-".join(str(c[k]) for k in ("kind", "family", "size", "rules", "sessions") if k in c)
        return out

    def measure(self, case: dict[str, Any]) -> float:
        data = frame(case["family"], case["size"])
        kind = case["kind"]
        if kind == "empty":
            return self.repeated(case["name"], self.empty_obj.program(EMPTY_PROG), data)
        if kind == "empty1":
            return self.single(case["name"], self.empty_obj.program(EMPTY_PROG), data, 0, self.abi.MIRROR_PASS)
        if kind in ("nomatch", "match", "nomatch-filters", "filter"):
            filters = {"nomatch-filters": "other", "filter": "candidate"}.get(kind, "")
            self.program(case["rules"], kind == "match", 1, filters)
            return self.repeated(case["name"], self.obj.program(self.abi.PROG_INGRESS), data)
        if kind == "link":
            from bpftap.agent.links import LinkGovernor, LinkState
            from bpftap.bpf.objects import SkBuff

            LinkGovernor(self.obj.map(self.abi.MAP_LINK_RATES), self.obj.map(self.abi.MAP_LINK_STATE)).set_links(
                [LinkState("k0", self.k0, 10**10, 5.0)])
            return self.repeated(case["name"], self.obj.program(self.abi.PROG_LINK), data, SkBuff(ifindex=self.k0))
        key = self.program(1, True, case["sessions"])
        mark = self.abi.XFER_TAG | key
        return self.single(case["name"], self.obj.program(self.abi.PROG_ENCAP), data, mark, 7)  # TC_ACT_REDIRECT

    def counters(self) -> dict[str, int]:
        return self.tables.counters()

    def moved(self) -> dict[str, int]:
        """Counters that moved since the last call (to say why a run took an unexpected exit)."""
        now = self.counters()
        moved = {k: v - self._last.get(k, 0) for k, v in now.items() if v != self._last.get(k, 0)}
        self._last = now
        return moved


def worker_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bpftap.bench.progcost")
    ap.add_argument("--rules", default=",".join(map(str, RULE_COUNTS_WANTED)))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--target-ms", type=float, default=60.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from bpftap import abi

    rule_counts, clipped = clip_rule_counts([int(x) for x in args.rules.split(",")], abi.MAX_RULES)
    w = Worker(args.target_ms, max(rule_counts))
    cases = w.cases(rule_counts)
    raw: dict[str, list[float]] = {c["name"]: [] for c in cases}
    for rnd in range(args.warmup + args.rounds):
        for case in cases:
            ns = w.measure(case)
            if rnd >= args.warmup:
                raw[case["name"]].append(ns)
    Path(args.out).write_text(json.dumps({
        "cases": cases, "raw": raw, "repeat": w.repeat, "rule_counts": rule_counts, "clipped": clipped,
        "max_rules": abi.MAX_RULES, "cpu": sorted(os.sched_getaffinity(0)), "counters": w.counters(),
        "problems": w.problems,
    }))
    return 0


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    """Medians, spreads and round-paired ratios to the floor of each family and size."""
    raw = data["raw"]
    rows = []
    for c in data["cases"]:
        floor = f"empty-{c['family']}-{c['size']}" if c["stage"] == 1 else f"empty1-{c['family']}-{c['size']}"
        rows.append({**c, "ns": summarize(raw[c["name"]]), "best_ns": min(raw[c["name"]]) if raw[c["name"]] else None,
                     "floor": floor, "ratio": ratio_summary(raw[c["name"]], raw[floor]),
                     "repeat": data["repeat"].get(c["name"], 1),
                     "problem": data.get("problems", {}).get(c["name"])})
    # a matching packet's whole cost: stage 1 with N rules + stage 2 with k sessions, per round
    totals = []
    for c in data["cases"]:
        if c["kind"] != "match":
            continue
        for k in SESSION_COUNTS:
            enc = raw[f"encap-{c['family']}-{c['size']}-{k}"]
            s1, floor = raw[c["name"]], raw[f"empty-{c['family']}-{c['size']}"]
            tot = [a + b for a, b in zip(s1, enc, strict=True)]
            totals.append({"family": c["family"], "size": c["size"], "rules": c["rules"], "sessions": k,
                           "ns": summarize(tot), "ratio": ratio_summary(tot, floor)})
    return {"rows": rows, "match_totals": totals, "rule_counts": data["rule_counts"], "clipped": data["clipped"],
            "max_rules": data["max_rules"], "cpu": data["cpu"], "counters": data["counters"],
            "problems": data.get("problems", {}),
            "method": "BPF_PROG_TEST_RUN; stage 1 repeat calibrated to ~60 ms (<= 1e6), stage 2 repeat=1 "
                      f"median of {ENCAP_CALLS} calls; pinned to CPU 1; round 0 discarded; clone target: "
                      "veth whose peer is DOWN"}


def run_tier1(rounds: int = 5, target_ms: float = 60.0) -> dict[str, Any]:
    """Make the namespace, run the worker in it on CPU 1, summarise, clean up."""
    ns = f"btb-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "k0", "type", "veth", "peer", "name", "k1"],
                    ["link", "set", "k0", "up"]):  # k1 stays DOWN: clones are dropped at k0's xmit
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cpu = "1" if (os.cpu_count() or 1) > 1 else "0"
            cmd = ["ip", "netns", "exec", ns, "taskset", "-c", cpu, sys.executable, "-m", "bpftap.bench.progcost",
                   "--rounds", str(rounds), "--target-ms", str(target_ms), "--out", out.name]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            if res.returncode:
                raise RuntimeError(f"tier 1 worker failed: {res.stderr[-2000:]}")
            return summarise(json.loads(Path(out.name).read_text()))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(worker_main())
