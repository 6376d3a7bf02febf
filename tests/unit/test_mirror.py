"""`bpftap mirror` in-process: the config it builds, its mistakes named by option (exit 2), its counters and summary.

Nothing here attaches: the agent's entry point is replaced by one that
fails the test, and every case is refused before it would be reached.
The lab test (tests/integration/test_mirror_cmd.py) runs it for real.
"""

from __future__ import annotations

import argparse
import io

import pytest

from bpftap.cli import ExitStatus, build_parser, main
from bpftap.config import Direction
from bpftap.mirror import LiveLine, build_config, config_data, dropped, format_summary, parse_duration


@pytest.fixture(autouse=True)
def never_attach(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> int:
        raise AssertionError("bpftap mirror reached the agent in a unit test")

    monkeypatch.setattr("bpftap.agent.run.run_config", refuse)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["mirror", *argv])


def test_the_options_become_one_source_per_interface_one_session_one_rule() -> None:
    args = parse("eth0", "eth1", "eth0", "--to", "198.18.2.1", "--direction", "ingress", "--snaplen", "128")
    assert config_data(args) == {
        "sources": [{"interface": "eth0", "direction": "ingress"}, {"interface": "eth1", "direction": "ingress"}],
        "sessions": [{"name": "mirror", "tunnel": "vxlan", "remote": "198.18.2.1", "vni": 42, "snaplen": 128}],
        "rules": [{"number": 1, "sessions": ["mirror"]}],
    }
    config = build_config(args)
    assert [(s.interface, s.direction) for s in config.sources] == [("eth0", Direction.INGRESS),
                                                                     ("eth1", Direction.INGRESS)]
    assert config.path == "bpftap mirror" and config.sessions[0].snaplen == 128
    assert [(r.number, r.sessions) for r in config.rules] == [(1, ("mirror",))]


@pytest.mark.parametrize("argv,session", [
    (["--tunnel", "geneve", "--vni", "7"], {"tunnel": "geneve", "vni": 7}),
    (["--tunnel", "gre"], {"tunnel": "gre"}),
    (["--tunnel", "gre", "--vni", "9"], {"tunnel": "gre", "key": 9}),
    (["--tunnel", "erspan3"], {"tunnel": "erspan3", "session_id": 42}),
])
def test_vni_is_the_tunnels_identifier(argv: list[str], session: dict[str, object]) -> None:
    args = parse("eth0", "--to", "2001:db8:2::1", *argv)
    assert config_data(args)["sessions"][0] == {"name": "mirror", "remote": "2001:db8:2::1", **session}
    assert build_config(args).sessions[0].tunnel == session["tunnel"]


def test_filter_goes_on_the_rule() -> None:
    assert config_data(parse("eth0", "--to", "198.18.2.1", "--filter", "port 53"))["rules"] == [
        {"number": 1, "sessions": ["mirror"], "filter": "port 53"}]


@pytest.mark.parametrize("argv,message", [
    (["eth0", "--to", "198.18.2.1", "--vni", "99999999"], "bpftap mirror: --vni: 99999999 is out of range 0-16777215"),
    (["eth0", "--to", "198.18.2.1", "--tunnel", "erspan2", "--vni", "2000"],
     "bpftap mirror: --vni: 2000 is out of range 0-1023"),
    (["eth0", "--to", "collector"], "bpftap mirror: --to: 'collector' is not an IP address"),
    (["eth0", "--to", "198.18.2.1", "--snaplen", "3"], "bpftap mirror: --snaplen: 3 is out of range 14-65535"),
    (["no-such-if0", "--to", "198.18.2.1"],
     "bpftap mirror: IFACE: 'no-such-if0' matches no interface in this network namespace"),
    (["x" * 16, "--to", "198.18.2.1"], "bpftap mirror: IFACE: "),
])
def test_bad_options_exit_2_naming_the_option(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mirror", *argv]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "sessions[" not in err and "sources[" not in err, err


@pytest.mark.parametrize("argv,message", [
    (["eth0", "--to", "198.18.2.1", "--duration", "soon"], "argument --duration: 'soon' is not a duration"),
    (["eth0", "--to", "198.18.2.1", "--duration", "0s"], "the duration must be more than 0"),
    (["eth0", "--to", "198.18.2.1", "--tunnel", "vxlan4"], "argument --tunnel: invalid choice"),
    (["eth0", "--to", "198.18.2.1", "--vni", "x"], "argument --vni: invalid int value"),
    (["eth0"], "the following arguments are required: --to"),
])
def test_bad_option_values_are_refused_by_the_parser(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["mirror", *argv])
    assert info.value.code == ExitStatus.USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("2m", 120), ("1h", 3600), ("500ms", 0.5), ("45", 45),
                                          ("1.5s", 1.5), (" 10 s ", 10)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


STATUS = {
    "counters": {"seen": 120, "matched": 60, "clone_fail": 1},
    "queue_drops": {"encap": 2, "fragment": 0},
    "sessions": [{"name": "mirror", "tunnel": "vxlan", "remote": "198.18.2.1", "id_field": "vni", "id": 42,
                  "packets": 57, "bytes": 5700, "oversize": 3, "sampled_out": 9, "unresolved": 0}],
}


def test_summary_counts_copies_sent_and_not_sent_per_session() -> None:
    assert dropped(STATUS) == {"oversize": 3, "clone_fail": 1, "encap_ring_full": 2}
    with_no_entry = {**STATUS, "counters": {**STATUS["counters"], "no_entry": 4}}
    assert dropped(with_no_entry)["no_entry"] == 4
    assert format_summary(STATUS, 12.04).splitlines() == [
        "mirrored for 12.0 s: 120 packets seen, 60 matched",
        "session mirror (vxlan 198.18.2.1 vni 42): sent 57 copies (5700 bytes), not sent 3 (oversize 3)",
        "copies sent 57, not sent 6 (oversize 3, clone_fail 1, encap_ring_full 2)",
    ]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_redraws_on_a_terminal_and_appends_elsewhere() -> None:
    tty, pipe = Tty(), io.StringIO()
    for out in (tty, pipe):
        live = LiveLine(out)
        live.show(STATUS)
        live.show({**STATUS, "sessions": [{**STATUS["sessions"][0], "packets": 67}]})  # type: ignore[dict-item]
        live.end()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n") and tty.getvalue().count("\n") == 1
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in pipe.getvalue()
    assert "matched 60  copies 57  not sent 6" in lines[0]
    assert "copies 67 (" in lines[1] and "p/s" in lines[1]


def test_completion_knows_mirror_and_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("    mirror) opts="))
    assert all(opt in line for opt in ("--to", "--tunnel", "--vni", "--filter", "--direction", "--duration",
                                       "--snaplen"))


class FakePods:
    """CoreV1Api.read_namespaced_pod over a few pods; a missing one raises as ApiException does (status 404)."""

    class NotFound(Exception):
        status = 404
        reason = "Not Found"

    def __init__(self, **pods: argparse.Namespace) -> None:
        self.pods = pods

    def read_namespaced_pod(self, name: str, namespace: str) -> argparse.Namespace:
        try:
            return self.pods[f"{namespace}/{name}"]
        except KeyError:
            raise self.NotFound() from None


def pod(node: str | None, ip: str | None, host_network: bool = False) -> argparse.Namespace:
    return argparse.Namespace(spec=argparse.Namespace(node_name=node, host_network=host_network),
                              status=argparse.Namespace(pod_ip=ip))


@pytest.mark.parametrize("target,message", [
    ("pod/shop", "pod/shop: write pod/NAMESPACE/NAME"),
    ("pod/shop/web/1", "write pod/NAMESPACE/NAME"),
    ("pod/shop/gone", "pod/shop/gone: no such pod"),
    ("pod/shop/away", "pod/shop/away: runs on node n2, not on this one (n1); run bpftap mirror there"),
    ("pod/shop/pending", "pod/shop/pending: runs on node (none yet)"),
    ("pod/shop/hostnet", "uses the node's network (hostNetwork)"),
    ("pod/shop/noip", "pod/shop/noip: has no IP yet"),
])
def test_pod_targets_not_here(target: str, message: str) -> None:
    from bpftap.errors import ConfigError
    from bpftap.mirror_pod import pod_source

    api = FakePods(**{"shop/away": pod("n2", "198.18.0.9"), "shop/pending": pod(None, None),
                      "shop/hostnet": pod("n1", "198.18.0.1", host_network=True), "shop/noip": pod("n1", None)})
    with pytest.raises(ConfigError) as err:
        pod_source(target, "both", "auto", api=api, node="n1")
    assert message in str(err.value)


def test_pod_and_netns_targets_in_the_config() -> None:
    args = parse("eth0", "pod/shop/web", "--to", "198.18.2.1", "--attach", "inside")
    args.pod_sources = [{"pods": {"netns": "cni-1234"}, "direction": "both", "attach": "inside"}]
    sources = build_config(args).sources
    assert [s.interface for s in sources] == ["eth0", ""]
    assert sources[1].pods is not None and sources[1].pods.netns == "cni-1234" and sources[1].attach == "inside"
    assert parse("--netns", "web-1", "--netns", "web-2", "--to", "198.18.2.1").netns == ["web-1", "web-2"]
    assert parse("--netns", "web-1", "--to", "198.18.2.1").attach == "auto"


def test_nothing_to_mirror(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mirror", "--to", "198.18.2.1"]) == ExitStatus.USAGE
    assert "IFACE: give an interface, pod/NAMESPACE/NAME or --netns NAME" in capsys.readouterr().err
