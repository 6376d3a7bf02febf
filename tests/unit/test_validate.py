"""`bpftap validate -c FILE`: the config check of `run`, without a kernel (issue 16, gaps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpftap.cli import ExitStatus, main

EXAMPLE = Path(__file__).parents[2] / "examples" / "bpftap.yaml"


def test_the_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", str(EXAMPLE)]) == ExitStatus.OK
    assert capsys.readouterr().out == f"{EXAMPLE}: ok: 1 sources, 1 sessions, 2 rules\n"


def test_the_full_example_is_valid_and_uses_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from bpftap.config import Link, Rule, Source, load_config

    full = EXAMPLE.with_name("bpftap-full.yaml")
    assert main(["validate", "-c", str(full)]) == ExitStatus.OK
    text = full.read_text()
    for model in (Source, Rule, Link):
        for f in fields(model):
            assert f"{f.name}:" in text, f"{model.__name__}.{f.name}"
    assert {t.tunnel for t in load_config(full).sessions} >= {"vxlan", "erspan3", "gre"}
    assert all(f"{k}:" in text for k in ("copy_budget", "links", "redirect_chain", "remotes", "sample", "rate_limit",
                                          "snaplen", "oversize", "gso", "priority", "platform_subheader", "sequence"))


def test_a_bad_config_is_exit_2_with_every_mistake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(EXAMPLE.read_text().replace("vni: 42", "vni: -1").replace("dst_ports: 53", "dst_port: 53"))
    assert main(["validate", "-c", str(path)]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert f"{path}: sessions[0].vni:" in err and f"{path}: rules[1]: unknown field 'dst_port'" in err


def test_status_json_without_an_agent_prints_an_error_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bpftap.agent import status
    from bpftap.errors import BpftapError

    def no_agent(**_: object) -> dict[str, object]:
        raise BpftapError("no bpftap agent runs in this network namespace (start one with 'bpftap run')")

    monkeypatch.setattr(status, "query_status", no_agent)
    assert main(["status", "--json"]) == ExitStatus.ERROR
    assert json.loads(capsys.readouterr().out) == {
        "error": "no bpftap agent runs in this network namespace (start one with 'bpftap run')"}


def test_log_format_json_makes_each_config_mistake_a_json_object(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = tmp_path / "bad.yaml"
    path.write_text(EXAMPLE.read_text().replace("vni: 42", "vni: -1").replace("dst_ports: 53", "dst_port: 53"))
    assert main(["validate", "-c", str(path), "--log-format", "json"]) == ExitStatus.USAGE
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(records) >= 2
    assert {r["level"] for r in records} == {"error"} and {r["kind"] for r in records} == {"config"}
    assert records[0]["message"].startswith(f"{path}: sessions[0].vni:")
    assert all(r["message"].startswith(f"{path}: ") for r in records)


def test_log_format_json_covers_collects_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["collect", "--read", str(tmp_path / "missing.pcap"), "--out", str(tmp_path / "o.pcapng"),
                 "--log-format", "json"]) == ExitStatus.USAGE
    record = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert record["level"] == "error" and record["logger"] == "bpftap.collect" and "missing.pcap" in record["message"]
