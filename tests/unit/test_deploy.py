"""deploy/: the Grafana dashboard queries only metrics the collector exports; the systemd unit runs a valid command."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpftap.agent.metrics import MirrorCollector
from bpftap.cli import build_parser

from .test_metrics import FakeSource

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\bbpftap_[a-z0-9_]+")


def exported_names() -> set[str]:
    """Every sample name the collector exports (with _total and _info suffixes), as Prometheus stores them."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MirrorCollector(FakeSource()))
    text = generate_latest(registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def queries(node: Any) -> list[str]:
    """Every PromQL string of a dashboard: panel targets and template variable queries."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            promql = key in ("expr", "definition") or (key == "query" and "(" in str(value))
            if promql and isinstance(value, str):
                found.append(value)
            else:
                found += queries(value)
    elif isinstance(node, list):
        for item in node:
            found += queries(item)
    return found


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    names = exported_names()
    used = {name for q in queries(dashboard) for name in METRIC.findall(q)}
    assert used, "the dashboard queries no bpftap metric"
    assert used <= names, f"queried but not exported: {sorted(used - names)}"
    # every panel shows something of bpftap's
    for panel in dashboard["panels"]:
        assert any(METRIC.search(t["expr"]) for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # the headline families are all on it
    for name in ("bpftap_packets_seen_total", "bpftap_copies_sent_total", "bpftap_not_copied_total",
                 "bpftap_rule_packets_total", "bpftap_session_copies_total", "bpftap_session_not_sent_total"):
        assert name in used


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "bpftap.service")
    return parser


def test_systemd_unit_restarts_on_failure_and_reloads_with_sighup() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    # validated first: a bad config fails the reload and never reaches the agent
    assert service["ExecReload"] == ("/bin/sh -c '/usr/local/bin/bpftap validate -c /etc/bpftap/bpftap.yaml "
                                     "&& exec /bin/kill -HUP ${MAINPID}'")
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}  # bad config, kernel lacks features
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "bpftap"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == "/etc/bpftap/bpftap.yaml"
    assert args.metrics == ("127.0.0.1", 9477)
    assert args.keep_attached  # systemctl restart hands over to the next run without a gap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # systemd checks that ExecStart exists: point it at this checkout's entry point
    exe = Path(sys.executable).with_name("bpftap")
    if not exe.exists():
        pytest.skip(f"{exe} missing (pip install -e .)")
    text = (DEPLOY / "bpftap.service").read_text().replace("/usr/local/bin/bpftap", str(exe))
    (tmp_path / "bpftap.service").write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bpftap.service")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
