"""The kernel matrix as a test (marker `kernels`, not in the normal run): `pytest -m kernels`.

Boots Debian 12's Linux 6.1 under qemu and runs tools/kernels/guest.py in it
(what `make kernels` runs for that row); the row's files are in build/kernels/6.1/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel matrix needs root (BPF, namespaces, virtiofsd)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu: run 'make kernels' once"),
]


def test_linux_6_1_row_passes_with_clsact_and_a_quiet_kernel() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "kernels" / "matrix.py"), "--rows", "6.1"],
                         capture_output=True, text=True, timeout=3600, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    row = json.loads((ROOT / "build" / "kernels" / "matrix.json").read_text())[0]
    assert row["mode"] == "tc (clsact)" and row["dmesg"] == "clean" and not row["failed"], row
