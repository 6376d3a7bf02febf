"""bpf/ headers: each compiles on its own (it includes what it uses), each file stays under 500 lines, and the
stage-1 headers include no stage-2 header."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BPF = Path(__file__).resolve().parents[2] / "bpf"
STAGE1 = ("parse.bpf.h", "classify.bpf.h")
STAGE2 = ("copy.bpf.h", "group.bpf.h", "admit.bpf.h", "limits.bpf.h", "csum.bpf.h", "outer.bpf.h", "send.bpf.h",
          "fragment.bpf.h", "ring.bpf.h", "encap.bpf.h", "gso.bpf.h", "stage2.bpf.h", "inside.bpf.h")


@pytest.mark.parametrize("header", sorted(p.name for p in BPF.glob("*.h")))
def test_header_compiles_alone(header: str) -> None:
    if shutil.which("clang") is None:
        pytest.skip("clang missing")
    flags = (BPF / "cflags").read_text().split()
    cmd = ["clang", *flags, f"-I{BPF}", f"-I/usr/include/{platform.machine()}-linux-gnu", "-fsyntax-only",
           "-x", "c", "-"]
    done = subprocess.run(cmd, input=f'#include "{header}"\n', capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_files_stay_under_500_lines() -> None:
    lines = {p.name: len(p.read_text().splitlines()) for p in BPF.iterdir() if p.suffix in (".h", ".c")}
    assert {name: n for name, n in lines.items() if n >= 500} == {}


@pytest.mark.parametrize("header", STAGE1)
def test_stage1_headers_include_no_stage2_header(header: str) -> None:
    included = re.findall(r'^#include "([^"]+)"', (BPF / header).read_text(), re.M)
    assert not set(included) & set(STAGE2)
