"""The CLI in-process: help, and bad configs refused with exit code 2 before anything touches the kernel."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bpftap.cli import ExitStatus, _unwind_on_sigterm, main

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
    (GOOD.replace("[ids]}]", "[ids]}, {number: 10, sessions: [ids]}]"),
     "rules[1].number: 10 is already used by rules[0]"),
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


def _subparsers() -> dict[str, Any]:
    import argparse

    from bpftap.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_a_description_and_two_examples_and_no_empty_defaults() -> None:
    for name, sp in _subparsers().items():
        text = sp.format_help()
        examples = text.split("examples:\n", 1)[1] if "examples:\n" in text else ""
        assert sp.description, f"bpftap {name}: no description"
        assert sum(line.strip().startswith(("bpftap ", "ip netns exec", "systemctl", "source <(bpftap"))
                   for line in examples.splitlines()) >= 2, f"bpftap {name} --help: fewer than two examples"
        assert "(default: None)" not in text and "(default: False)" not in text, f"bpftap {name} --help"


def test_run_help_lists_signals_and_exit_status() -> None:
    text = _subparsers()["run"].format_help()
    assert all(word in text for word in ("SIGHUP", "SIGTERM", "exit status:", "examples/bpftap.yaml"))


@pytest.mark.parametrize("argv", [["-v", "--log-format", "json", "status"], ["status", "-v", "--log-format", "json"],
                                  ["status", "--log-format=json", "--verbose"]])
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    from bpftap.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.command, args.verbose, args.log_format, args.traceback) == ("status", 1, "json", False)


def test_version_names_the_objects_build(capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import json

    from bpftap import __version__, abi
    from bpftap.cli import main

    assert main(["version", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["version"] == __version__ and got["object"]["path"] == str(abi.object_path())
    assert got["object"]["sha256"] == hashlib.sha256(abi.object_path().read_bytes()).hexdigest()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_knows_every_command_and_option(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil
    import subprocess

    from bpftap.cli import main

    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert all(f"    {name}) opts=" in script for name in _subparsers())
    assert "--keep-attached" in script and "--listen" in script
    if shell == "bash" and shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        out = subprocess.run(["bash", "-c", script + "\nCOMP_WORDS=(bpftap ru); COMP_CWORD=1; _bpftap; "
                              "echo ${COMPREPLY[@]}"], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["run"]


def test_sigterm_unwinds_only_the_process_that_asked() -> None:
    """demo and bench: SIGTERM raises KeyboardInterrupt; a child forked without exec (as pyroute2 enters a
    namespace, then ends it with SIGTERM) dies of it as by default instead of running on in our code."""
    undo = _unwind_on_sigterm()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(3)  # only if the handler raised or returned
        status = os.waitpid(pid, 0)[1]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        undo()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
