"""One row of the kernel matrix, run on the kernel under test (in a qemu guest, or on the host).

Writes into --out: check.json (`bpftap check --json`), verifier/ (each program's
verifier log and a summary of its counts), pytest.xml and pytest.log (the
selection below; with --soak, soak.xml, soak.log and soak.json of the soak test
instead), dmesg.txt (what the kernel printed meanwhile), and result.json, which
sums it up for tools/kernels/matrix.py. Exits 1 if a test failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from bpftap import abi
from bpftap.bpf.objects import BpfObject
from bpftap.errors import BpftapError

ROOT = Path(__file__).resolve().parents[2]
SELECTION = [
    "tests/bpf",  # BPF_PROG_TEST_RUN tables, layout, licence, kernel log
    "tests/integration/test_mirror_e2e.py::test_copies_are_the_originals_byte_for_byte",  # a short lab
    "tests/integration/test_mirror_e2e.py::test_detach_leaves_nothing_also_after_sigkill",  # tcx and clsact
    "tests/integration/test_mirror_e2e.py::test_check_reports_features_and_mode",
    "tests/integration/test_mirror_e2e.py::test_auto_attach_takes_tcx_where_the_kernel_has_it_else_clsact",
    "tests/integration/test_coexist.py",  # beside another vendor's program, both attach modes
    # rule filters end to end: the generated program, the tail calls, a VLAN tag held beside the frame
    "tests/integration/test_filters.py::test_filters_see_the_vlan_tag_the_kernel_holds_beside_the_frame",
    "tests/integration/test_tunnels_e2e.py::test_kernel_receiver_decapsulates",  # GENEVE, GRE, ERSPAN receivers
    # which path a super-packet's copy takes on this kernel (its counters: gso.json)
    "tests/integration/test_big_packets.py::test_a_super_packets_copy_is_encapsulated_whole",
    # attach: inside behind a CNI's bpf_redirect_peer, and its adoption by a restarted agent (clsact on 6.1)
    "tests/integration/test_pods_inside.py::test_inside_mirrors_both_directions_and_adds_no_frame_in_the_pod",
    "tests/integration/test_pods_lifecycle.py::test_restarted_agent_adopts_inside_pods_and_no_copy_is_missed",
    "tests/integration/test_pods_inside.py::test_inside_copies_super_packets_whole_and_every_byte_arrives",
]
OBJECTS = [abi.object_path(), ROOT / "build" / "bpf" / "mirror_tc.debug.bpf.o"]
STATS = {
    "insns": r"processed (\d+) insns",
    "max_states_per_insn": r"max_states_per_insn (\d+)",
    "total_states": r"total_states (\d+)",
    "peak_states": r"peak_states (\d+)",
    "usec": r"verification time (\d+) usec",
}
INSN_LIMIT = 1_000_000
SPLAT = re.compile(r"WARNING:|BUG:|Oops|Call Trace|general protection|kernel panic|refcount_t|UBSAN|KASAN|RCU stall",
                   re.IGNORECASE)


def verifier(out: Path) -> list[dict[str, object]]:
    """Load each object with verifier statistics on; each program's log in verifier/<object>/<program>.log."""
    rows: list[dict[str, object]] = []
    for path in OBJECTS:
        where = out / "verifier" / path.name.removesuffix(".bpf.o")
        where.mkdir(parents=True, exist_ok=True)
        error = ""
        with BpfObject.open(path) as obj:
            logs = obj.keep_verifier_logs(level=4)
            try:
                obj.load()
            except BpftapError as exc:
                error = str(exc)
        if error:  # the statistics alone do not say why: load again with the whole log
            with BpfObject.open(path) as obj:
                logs = obj.keep_verifier_logs(level=1 | 4, size=64 << 20)
                with contextlib.suppress(BpftapError):
                    obj.load()
        for name, buf in logs.items():
            text = buf.value.decode(errors="replace")
            (where / f"{name}.log").write_text(text)
            row: dict[str, object] = {"object": path.name, "program": name, "error": error}
            for key, pattern in STATS.items():
                found = re.findall(pattern, text)
                row[key] = int(found[-1]) if found else None
            depth = re.findall(r"stack depth ([\d+]+)", text)
            row["stack_depth"] = depth[-1] if depth else None
            rows.append(row)
    lines = [("| object | program | insns processed | % of limit | total states | peak states | max states/insn "
              "| stack depth | µs | error |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{100 * int(r['insns']) / INSN_LIMIT:.1f}" if r["insns"] is not None else "-"  # type: ignore[call-overload]
        lines.append(f"| {r['object']} | {r['program']} | {r['insns']} | {share} | {r['total_states']} "
                     f"| {r['peak_states']} | {r['max_states_per_insn']} | {r['stack_depth']} | {r['usec']} "
                     f"| {r['error'] or ''} |")
    (out / "verifier" / "summary.md").write_text(f"# Verifier, {platform.release()}\n\n" + "\n".join(lines) + "\n")
    (out / "verifier" / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def gso_path(report: Path) -> str:
    """The path the GSO test's super-packets took here, from the counters it left (README "Big packets")."""
    if not report.exists():
        return "unknown (no report)"
    c = json.loads(report.read_text())
    if c["gso"] and not c["gso_slow"]:
        return f"whole: {c['gso']} super-packets, {c['packets']} segments"
    return f"per segment: {c['gso']} whole, {c['gso_slow']} per segment"


def pytest(out: Path, name: str, args: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run pytest on `args`; passed, failed and skipped counts, skip reasons and failures from its JUnit XML."""
    junit = out / f"{name}.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "--durations=15",
           f"--junitxml={junit}", *args]
    with (out / f"{name}.log").open("w") as log:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - written by our own pytest run
            test = f"{case.get('classname')}::{case.get('name')}"
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            counts[{"failure": "failed", "error": "failed"}.get(outcome, outcome)] += 1
            if outcome == "skipped":
                reasons[next(c for c in case if c.tag == "skipped").get("message", "")[:200]] += 1
            elif outcome != "passed":
                failures.append(test)
    return {"exit": code, "passed": counts["passed"], "failed": counts["failed"], "skipped": counts["skipped"],
            "skip_reasons": dict(reasons), "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--soak", type=int, default=0,
                    help="run only tests/integration/test_soak.py, for this many seconds (0: the selection)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="stretch the tests' waits (emulated guests)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_start = len(subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout.splitlines())
    env = {**os.environ, "BPFTAP_REQUIRE_KERNEL": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "BPFTAP_TIME_SCALE": str(args.time_scale),
           # the classifier's differential test: 1,000 random rule sets take ten minutes emulated, 100 one
           "DIFF_SETS": os.environ.get("DIFF_SETS", "100" if args.time_scale > 1 else "1000")}

    check = subprocess.run([sys.executable, "-m", "bpftap.cli", "check", "--json"], cwd=ROOT, capture_output=True,
                           text=True, check=False)
    (out / "check.json").write_text(check.stdout + check.stderr)
    mode = json.loads(check.stdout)["mode"] if check.returncode == 0 else f"check failed: {check.stderr.strip()}"
    programs = verifier(out)
    if args.soak:  # the soak alone
        (out / "soak.json").unlink(missing_ok=True)
        result: dict[str, object] = {
            "kernel": platform.release(), "mode": mode, "selection": ["tests/integration/test_soak.py"],
            **pytest(out, "soak", ["-m", "soak", "tests/integration/test_soak.py"],
                     {**env, "BPFTAP_SOAK_SECONDS": str(args.soak), "BPFTAP_SOAK_REPORT": str(out / "soak.json")})}
        result["soak"] = json.loads((out / "soak.json").read_text()) if (out / "soak.json").exists() else {}
    else:
        (out / "gso.json").unlink(missing_ok=True)
        result = {"kernel": platform.release(), "mode": mode, "selection": SELECTION,
                  **pytest(out, "pytest", SELECTION, {**env, "BPFTAP_GSO_REPORT": str(out / "gso.json")})}
        result["gso_path"] = gso_path(out / "gso.json")
    new_lines = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout.splitlines()[log_start:]
    splats = [line for line in new_lines if SPLAT.search(line)]
    (out / "dmesg.txt").write_text("\n".join(new_lines) + "\n")
    result["dmesg"] = "clean" if not splats else f"{len(splats)} warning lines"
    result["dmesg_splats"] = splats[:50]
    result["verifier"] = programs
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['kernel']}: {result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped;"
          f" mode {mode}; dmesg {result['dmesg']}")
    return 0 if not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
