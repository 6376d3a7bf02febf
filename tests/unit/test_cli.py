"""The CLI in-process: help, and bad configs refused with exit code 2 before anything touches the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpftap.cli import ExitStatus, main

GOOD = """
sources: [{interface: eth0}]
sessions: [{name: ids, remote: 198.18.2.1, vni: 42}]
rules: [{number: 10, protocol: udp, dst_ports: 53, sessions: [ids]}]
"""

BAD = [
    ("sources: [{interface: eth0}]\nrules: [{number: 1, src: 10.0.0.0/33, sessions: [ids]}]\n"
     "sessions: [{name: ids, remote: 198.18.2.1, vni: 1}]", "rules[0].src: '10.0.0.0/33' is not a CIDR"),
    ("sources: []\nsessions: []\nrules: []", "sources: no sources"),
    (GOOD.replace("vni: 42", "vni: 99999999"), "sessions[0].vni: 99999999 is out of range"),
    (GOOD.replace("sessions: [ids]}", "sessions: [idz]}"), "rules[0].sessions[0]: unknown session 'idz'"),
    (GOOD.replace("dst_ports: 53", "dst_port: 53"), "rules[0]: unknown field 'dst_port'; did you mean 'dst_ports'?"),
    (GOOD.replace("protocol: udp", "protocol: gre"), "rules[0].protocol: unknown protocol 'gre'"),
    (GOOD.replace("remote: 198.18.2.1", "remote: collector"), "sessions[0].remote: 'collector' is not an IP address"),
    (GOOD.replace("protocol: udp", "protocol: icmp"), "rules[0].dst_ports: protocol icmp has no ports"),
    (GOOD.replace("dst_ports: 53", "dst_ports: 2000-1000"), "range 2000-1000 is backwards"),
    (GOOD.replace("{number: 10,", "{number: 10, action: skip,"), "a skip rule mirrors nothing"),
    (GOOD.replace("[ids]}]", "[ids]}, {number: 10, sessions: [ids]}]"), "rules[1].number: 10 is already used by rules[0]"),
    (GOOD + "redirect_chain: maybe\n", "redirect_chain: expected true or false, got the string 'maybe'"),
    ("sources: [{interface: eth0", "line"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_config_exits_2_naming_file_entry_and_field(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bpftap.yaml"
    path.write_text(text)
    assert main(["run", "-c", str(path)]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: "), err
    assert message in err, err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", str(tmp_path / "nope.yaml")]) == ExitStatus.USAGE
    assert "No such file" in capsys.readouterr().err


def test_help_lists_commands_signals_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ("run", "check", "status", "collect", "detach", "demo", "SIGHUP", "examples:"):
        assert word in out


def test_status_says_which_pins_it_adopted() -> None:
    from bpftap.cli import format_status

    data = {"pid": 9, "config": "b.yaml", "attachments": [], "rules": [], "sessions": [], "counters": {},
            "adopted": {"pins": "/sys/fs/bpf/bpftap/netns-7", "pid": 8, "maps": 21, "attachments": 4,
                        "programs": "kept"}}
    assert "adopted the pins at /sys/fs/bpf/bpftap/netns-7 of agent pid 8: 21 maps, 4 attachments, programs kept" in (
        format_status(data)
    )
    assert "adopted" not in format_status({**data, "adopted": None})
