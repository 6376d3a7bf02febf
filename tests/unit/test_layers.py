"""The pure layers: bpftap.config and bpftap.compile import and run with no kernel library, netlink or process.

config/ -> compile/ -> agent/: the first two compute, the agent writes maps.
A fresh interpreter imports every module of both packages, validates and
compiles a configuration and makes its session records; then nothing of
libbpf, pyroute2 or the agent may be loaded. A static check of the sources
catches imports inside functions too.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import bpftap

SRC = Path(bpftap.__file__).parent

RUN_THE_PURE_LAYERS = """
import importlib, json, pkgutil, sys
import bpftap.compile, bpftap.config

for package in (bpftap.config, bpftap.compile):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)

from bpftap.compile.classifier import compile_rules
from bpftap.compile.sessions import group_buckets, session_record
from bpftap.compile.slots import assign_session_slots
from bpftap.config import parse_config

config = parse_config({
    "sources": [{"interface": "eth0"}],
    "sessions": [{"name": "ids", "remote": "198.18.2.2", "vni": 1},
                 {"name": "lb", "tunnel": "gre", "remotes": ["2001:db8::1", "2001:db8::2"]}],
    "rules": [{"number": 1, "protocol": "tcp", "dst_ports": [80, 443], "sessions": ["ids", "lb"]},
              {"number": 2, "vlan": 7, "interface": "eth*", "action": "skip"}],
}, "pure.yaml")
slots = assign_session_slots(config.sessions)
compiled = compile_rules(config, slots, {"eth0": 2})
records = [session_record(s, None, i) for i, s in enumerate(config.sessions)]
buckets = group_buckets(config.sessions[1])
with open("/proc/self/maps") as maps:
    libraries = sorted({line.split()[-1] for line in maps if ".so" in line})
print(json.dumps({"modules": sorted(sys.modules), "libraries": libraries, "rules": len(compiled.rules),
                  "records": len(records), "buckets": len(buckets)}))
"""

# not imported by config/ or compile/, not even inside a function
KERNEL_SIDE = ("bpftap.bpf", "bpftap.netlink", "bpftap.agent", "bpftap.filter.program", "pyroute2", "subprocess")


def test_config_and_compile_run_without_libbpf_pyroute2_or_the_agent() -> None:
    out = subprocess.run([sys.executable, "-c", RUN_THE_PURE_LAYERS], capture_output=True, text=True, check=True,
                         timeout=60)
    found = json.loads(out.stdout)
    assert (found["rules"], found["records"]) == (2, 2) and found["buckets"] > 0
    loaded = [m for m in found["modules"] if m.startswith(KERNEL_SIDE) or "libbpf" in m]
    assert loaded == []
    assert [lib for lib in found["libraries"] if "libbpf" in lib] == []
    assert "bpftap.config" in found["modules"] and "bpftap.compile.classifier" in found["modules"]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_pipeline_imports_only_downstream() -> None:
    """compile/ may use config/; config/ uses neither compile/ nor the agent; neither reaches the kernel side."""
    for package, forbidden in (("config", (*KERNEL_SIDE, "bpftap.compile")), ("compile", KERNEL_SIDE)):
        files = sorted((SRC / package).glob("*.py"))
        assert files, package
        for path in files:
            bad = sorted(m for m in imported_modules(path) if m.startswith(forbidden))
            assert bad == [], f"{path.relative_to(SRC)} imports {bad}"


def test_the_readme_layout_names_every_package_folder() -> None:
    """README "Layout" lists the folders of src/bpftap, and names no folder that is not there."""
    readme = (SRC.parents[1] / "README.md").read_text()
    layout = readme.split("### Layout\n", 1)[1].split("\n#", 1)[0]
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    named = set(re.findall(r"(?<![\w/.])([a-z_]+)/(?![\w.])", layout)) - {"tests", "src"}
    assert packages - named == set(), "packages the Layout section does not name"
    assert named - packages - {"bpf"} == set(), "folders the Layout section names that are not packages"
