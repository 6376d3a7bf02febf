"""deploy/Dockerfile: its steps work in a fresh virtualenv, and build the BPF object `make` builds.

Not a unit test: it needs root (bpftap check probes BPF), clang, and the
package registry (pip installs the wheel's dependencies).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpftap import abi

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# the network namespace at collection time: tests/bpf moves the test thread into a
# namespace of its own for the rest of the session, where PyPI is out of reach
HOME_NETNS = f"/proc/{os.getpid()}/fd/{os.open('/proc/thread-self/ns/net', os.O_RDONLY)}"


def disassembly(obj: Path) -> str:
    """The object's instructions (no debug info: it names the directory it was built in)."""
    out = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    return out.split("\n", 2)[2]  # past the file name


def dockerfile_stages() -> list[list[str]]:
    """Each stage's RUN commands, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages.append([])
        elif line.startswith("RUN "):
            stages[-1].append(line[4:].strip())
    return stages


@pytest.mark.skipif(shutil.which("clang") is None, reason="no clang: the build stage compiles the BPF object")
@pytest.mark.skipif(os.geteuid() != 0, reason="bpftap check needs root to probe BPF (and nsenter to reach PyPI)")
def test_dockerfile_steps_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    build, runtime = dockerfile_stages()
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    # COPY pyproject.toml README.md bpf/ src/ (no build output, no caches)
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "data")
    for name in ("bpf", "src"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv}/bin:{os.environ['PATH']}", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    steps = [(cmd, src) for cmd in build] + [(cmd, tmp_path) for cmd in runtime]
    for step, cwd in steps:
        if step.startswith("apt-get"):
            continue  # the packages are the image's; this machine has them (make deps)
        cmd = step.replace("/dist", str(dist))
        res = subprocess.run(
            ["nsenter", f"--net={HOME_NETNS}", "sh", "-c", cmd],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
    # the image's object is the one the suite tests: same flags (Linux 6.1's verifier needs one of them)
    assert disassembly(src / "src/bpftap/data" / abi.OBJECT_NAME) == disassembly(abi.object_path())
    probe = "import bpftap.abi as a; p = a.object_path(); print(p, p.exists())"
    where = subprocess.run([f"{venv}/bin/python", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                           check=True)
    assert where.stdout.startswith(str(venv)) and where.stdout.strip().endswith("True"), where.stdout
    check = subprocess.run([f"{venv}/bin/bpftap", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "tcx" in check.stdout
