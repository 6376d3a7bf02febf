"""Helpers for end-to-end tests: a running agent, sniffers and a frame sender in the lab."""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bpftap.bpf.probe import probe
from bpftap.demo import wait_for_agent
from bpftap.lab import Host, Lab

BPFTAP = [sys.executable, "-m", "bpftap.cli"]
# waits stretch by this factor where everything is slower: the kernel matrix's emulated guests (tools/kernels)
TIME_SCALE = float(os.environ.get("BPFTAP_TIME_SCALE", "1"))
WIRE = [sys.executable, str(Path(__file__).with_name("wire.py"))]
_WORK: list[Path] = []


def work_dir(prefix: str) -> Path:
    """A fresh directory for a test's configs and logs, under one per test run that is removed when the run ends."""
    if not _WORK:
        _WORK.append(Path(tempfile.mkdtemp(prefix="bpftap-tests-")))
        atexit.register(shutil.rmtree, _WORK[0], ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_WORK[0]))


def in_tap(lab: Lab, cmd: list[str]) -> list[str]:
    """`cmd` in the tapped host's network namespace but the host's mounts, so its pins go to the host's bpffs.

    (`ip netns exec` gives each command a /sys of its own, where the agent
    mounts a bpffs that vanishes with it.)
    """
    return ["nsenter", f"--net=/run/netns/{lab.ns(lab.tap)}", *cmd]


def needs_mode(mode: str) -> None:
    """Skip a case of attach mode `mode` where the kernel has none (tcx came in 6.6): found by probing."""
    if mode == "tcx" and not probe().tcx:
        pytest.skip(f"this kernel has no tcx: {probe().detail['tcx']}")


class Agent:
    """`bpftap run` on the lab's tapped host; with `pins` (a PinScope), in the host's bpffs."""

    def __init__(self, lab: Lab, config: str, *args: str, pins: PinScope | None = None) -> None:
        self.lab = lab
        self.dir = work_dir("agent-")
        self.config = self.dir / "bpftap.yaml"
        self.config.write_text(config)
        self.log = self.dir / "agent.log"
        cmd = [*BPFTAP, "run", "-c", str(self.config), *args]
        with self.log.open("w") as out:
            if pins is None:
                self.proc = lab.popen(lab.tap, cmd, stdout=out, stderr=out)
            else:  # lab.close ends it with the namespace's other processes
                self.proc = subprocess.Popen(in_tap(lab, cmd), stdout=out, stderr=out, env=pins.env,
                                             start_new_session=True)
        try:
            wait_for_agent(lab, 15 * TIME_SCALE)
        except Exception:  # noqa: BLE001 - whatever the failure, kill the agent and show its log
            self.proc.kill()
            raise AssertionError(f"agent did not start:\n{self.log.read_text()}") from None

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.lab.run(self.lab.tap, [*BPFTAP, "status", "--json"]).stdout)
        return data

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15 * TIME_SCALE)

    def output(self) -> str:
        return self.log.read_text()


class PinScope:
    """A pin root and state directory of a test's own, so `bpftap detach` there touches no one else's agents."""

    def __init__(self) -> None:
        name = f"bpftap-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.root = Path("/sys/fs/bpf") / name
        self.state = Path("/run") / name
        self.env = {**os.environ, "BPFTAP_PIN_ROOT": str(self.root), "BPFTAP_STATE_DIR": str(self.state)}

    def detach(self, lab: Lab) -> subprocess.CompletedProcess[str]:
        """`bpftap detach` from the tapped host, with this scope."""
        return subprocess.run(in_tap(lab, [*BPFTAP, "detach"]), env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)

    def close(self, lab: Lab) -> None:
        """Remove whatever a failed test left in this scope."""
        if self.root.exists() or self.state.exists():
            self.detach(lab)
        self.remove()

    def remove(self) -> None:
        """Remove its pin root and state directory, whatever is in them."""
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)


@contextmanager
def sniffing(lab: Lab, points: list[tuple[Host, str]],
             seconds: float = 3.0) -> Iterator[dict[str, list[tuple[bool, bytes]]]]:
    """Capture on each (host, iface) for `seconds`; the dict fills in when the block ends.

    Keys are "role.iface"; values (outgoing, frame) in arrival order.
    """
    seconds *= TIME_SCALE
    procs = {}
    for host, iface in points:
        proc = lab.popen(host, [*WIRE, "sniff", iface, str(seconds)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        procs[f"{host.role}.{iface}"] = proc
    result: dict[str, list[tuple[bool, bytes]]] = {}
    yield result
    for key, proc in procs.items():
        out, _ = proc.communicate(timeout=seconds + 15)
        result[key] = [(f["out"], bytes.fromhex(f["hex"])) for f in map(json.loads, out.splitlines())]


def send_frames(lab: Lab, host: Host, iface: str, frames: list[bytes]) -> None:
    lab.run(host, [*WIRE, "send", iface], input="\n".join(f.hex() for f in frames) + "\n")


def received(frames: list[tuple[bool, bytes]]) -> Counter[bytes]:
    return Counter(f for out, f in frames if not out)


def hook_state(lab: Lab) -> dict[str, str]:
    """Everything of the tapped host that bpftap could leave behind: links, qdiscs, filters, tcx programs."""
    snippet = (
        "import json, socket\n"
        "from bpftap.bpf import tc\n"
        "print(json.dumps({n: [tc.tcx_programs(i, d) for d in tc.Direction] for i, n in socket.if_nameindex()}))"
    )
    state = {"links": lab.run(lab.tap, ["ip", "-o", "link", "show"]).stdout.count("\n").__str__()}
    state["link names"] = " ".join(sorted(n for _, n in json.loads(
        lab.run(lab.tap, [sys.executable, "-c", "import json,socket; print(json.dumps(socket.if_nameindex()))"]).stdout
    )))
    state["qdiscs"] = lab.run(lab.tap, ["tc", "qdisc", "show"]).stdout
    state["filters"] = "".join(
        lab.run(lab.tap, ["tc", "filter", "show", "dev", dev, d]).stdout
        for dev in ("eth0", "eth1", "eth2")
        for d in ("ingress", "egress")
    )
    state["tcx"] = lab.run(lab.tap, [sys.executable, "-c", snippet]).stdout
    state["pins"] = lab.run(lab.tap, ["sh", "-c", "ls -R /sys/fs/bpf 2>/dev/null | grep -i bpftap || true"]).stdout
    return state
