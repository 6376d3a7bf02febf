"""A rule's `filter:` (issue 15): libpcap decides what compiles; a broken expression is exit 2 naming the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpftap import abi
from bpftap.cli import ExitStatus, main
from bpftap.compile.classifier import compile_rules, match_compiled
from bpftap.compile.reference import PacketInfo, reference_match
from bpftap.config import Direction, load_config

HEAD = """\
sources: [{interface: eth0}]
sessions: [{name: a, remote: 198.18.0.9, vni: 7}]
rules:
"""

# (expression, what libpcap says about it)
BROKEN = [
    ("tcp port", "syntax error"),
    ("port 1-", "syntax error"),
    ("host 198.18.0.999", "invalid IPv4 address"),
    ("net 198.18.0.0/33", "mask length must be <= 32"),
    ("net 2001:db8::/129", "mask length must be <= 128"),
    ("vlan 5000", "VLAN tag 5000 greater than maximum 4095"),
    ("port 70000", "illegal port number 70000 > 65535"),
    ("portrange 10-70000", "illegal port number 70000 > 65535"),
    ("ether host 00:11:22:33:44", "bogus ethernet address 00:11:22:33"),
    ("tcp[tcpflags] & tcp-bogus != 0", "syntax error"),
    ("ip[0] & ", "syntax error"),
    ("(udp", "syntax error"),
    ("udp)", "syntax error"),
    ("and udp", "syntax error"),
    ("proto nosuchproto", "unknown ip proto 'nosuchproto'"),
    ("ip6 and ip[0] = 1", "expression rejects all packets"),
    ("tcp and udp", "expression rejects all packets"),
    ("len > ", "syntax error"),
    ("host nosuchhost.invalid", "unknown host 'nosuchhost.invalid'"),
    ("ether proto \\nosuch", "unknown ether proto 'nosuch'"),
]


def rule(number: int, expression: str) -> str:
    quoted = expression.replace("'", "''")
    return f"  - {{number: {number}, sessions: [a], filter: '{quoted}'}}\n"


def test_twenty_broken_expressions_are_exit_2_with_libpcaps_message_and_the_rule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(HEAD + "".join(rule(10 * (i + 1), e) for i, (e, _) in enumerate(BROKEN)))
    assert main(["validate", "-c", str(path)]) == ExitStatus.USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(BROKEN), lines
    for i, ((expression, says), line) in enumerate(zip(BROKEN, lines, strict=True)):
        assert line.startswith(f"{path}: rules[{i}].filter: {expression!r}: libpcap: "), line
        assert says in line, line


@pytest.mark.parametrize("value, says", [
    ("''", "is empty"),
    ("5", "got the integer 5"),
    ("[udp]", "got a list"),
    ("'" + "udp or " * 700 + "udp'", "characters; at most 4096"),
])
def test_a_filter_that_is_not_an_expression_is_named(tmp_path: Path, value: str, says: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + f"  - {{number: 1, sessions: [a], filter: {value}}}\n")
    with pytest.raises(Exception) as err:
        load_config(path)
    assert "rules[0].filter: " in str(err.value) and says in str(err.value)


def test_more_filter_rules_than_the_kernel_takes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(HEAD + "".join(rule(i + 1, f"udp port {i + 1}") for i in range(abi.MAX_FILTER_RULES + 1)))
    with pytest.raises(Exception, match=f"at most {abi.MAX_FILTER_RULES} \\(MAX_FILTER_RULES\\): rule "
                                        f"{abi.MAX_FILTER_RULES + 1} is one too many"):
        load_config(path)


def udp_frame(dport: int) -> bytes:
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2])
    return bytes(12) + b"\x08\x00" + ip + (1234).to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)


def test_the_reference_matchers_take_a_filter_rule_only_when_its_expression_accepts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + rule(1, "udp port 53") + "  - {number: 2, sessions: [a]}\n")
    config = load_config(path)
    compiled = compile_rules(config, {"a": 0})
    assert compiled.filters == [(0, "udp port 53")]
    assert compiled.rules[0].flags & abi.MIRROR_RF_FILTER and not compiled.rules[1].flags & abi.MIRROR_RF_FILTER
    for dport, first in ((53, 1), (54, 2)):
        pkt = PacketInfo(Direction.INGRESS, 4, 17, *(__import__("ipaddress").ip_address(a)
                                                       for a in ("198.18.0.1", "198.18.0.2")),
                         sport=1234, dport=dport, frame=udp_frame(dport))
        assert reference_match(config, pkt).number == first
        assert match_compiled(compiled, pkt) == first - 1
