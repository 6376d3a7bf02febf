"""Config mistakes the table in test_config.py does not reach: rule field parsers (config/fields.py), collector
groups, and the limits on sessions; each is reported at its field with the message the user sees."""

from __future__ import annotations

from typing import Any

import pytest

from bpftap import abi
from bpftap.config import InvalidConfigError, parse_config
from bpftap.config.fields import interface, rate, rate_limit, tcp_flags, vlan

SESSION = {"name": "a", "remote": "198.18.2.1", "vni": 1}


def mistakes(rules: list[dict[str, Any]] | None = None, sessions: list[dict[str, Any]] | None = None,
             **top: Any) -> list[str]:
    data = {"sources": [{"interface": "eth0"}], "sessions": sessions or [SESSION],
            "rules": rules or [{"number": 1, "sessions": ["a"]}], **top}
    with pytest.raises(InvalidConfigError) as err:
        parse_config(data, "c.yaml")
    return err.value.errors


@pytest.mark.parametrize(("field", "value", "says"), [
    ("vlan", 4096, "rules[0].vlan: VLAN id 4096 is out of range 0-4095"),
    ("vlan", "7", "rules[0].vlan: '7' is not a VLAN id; give 0-4095 or 'untagged'"),
    ("tcp_flags", 3, "rules[0].tcp_flags: 3 is not a list of TCP flags"),
    ("tcp_flags", "syn,nope", "rules[0].tcp_flags: unknown TCP flag 'nope'; known: fin, syn"),
    ("tcp_flags", "syn,!syn", "rules[0].tcp_flags: TCP flag 'syn' is given twice"),
    ("interface", "", "rules[0].interface: '' is not an interface name or glob"),
    ("interface", "eth0:1", "rules[0].interface: 'eth0:1' is not an interface name (1-15 characters"),
])
def test_rule_field_mistakes(field: str, value: object, says: str) -> None:
    rule = {"number": 1, "protocol": "tcp", "sessions": ["a"], field: value}
    [found] = mistakes([rule])
    assert found.startswith(f"c.yaml: {says}"), found


def test_tcp_flags_need_protocol_tcp() -> None:
    [found] = mistakes([{"number": 1, "tcp_flags": "syn", "sessions": ["a"]}])
    assert found.startswith("c.yaml: rules[0].tcp_flags: tcp_flags needs protocol: tcp"), found


@pytest.mark.parametrize(("value", "says"), [
    (True, "True is not a rate"),
    ({"pps": 0}, "0 is out of range for pps"),
    ({"bps": "fast"}, "'fast' is not a rate; write e.g. 1000, 10k or 1.5M (bps)"),
    ({"bps": "101G"}, "'101G' is out of range for bps"),
    ({"kbps": 1}, "is not a rate limit; write e.g. {pps: 10k}, {bps: 100M} or both"),
    ({}, "{} is not a rate limit"),
])
def test_rate_limit_mistakes(value: object, says: str) -> None:
    with pytest.raises(ValueError) as err:
        rate_limit(value if isinstance(value, dict) else {"pps": value})
    assert says in str(err.value)


def test_rates_and_fields_parse() -> None:
    assert rate(2000, "pps") == 2000 and rate("1.5M", "pps") == 1_500_000 and rate("10Gbps", "bps") == 10**10
    assert rate_limit({"pps": "10k", "bps": "100M"}) == (10_000, 100_000_000)
    assert vlan("Untagged") == abi.VLAN_KEYS - 1 and vlan(0) == 0
    assert tcp_flags("SYN, !ack") == (0x12, 0x02)
    assert interface("veth*") == "veth*" and interface("a-very-long-glob-*") == "a-very-long-glob-*"


@pytest.mark.parametrize(("remotes", "says"), [
    (["198.18.2.1"], "expected a list of 2 to 16 collector addresses (one collector: use remote)"),
    (["198.18.2.1", "2001:db8::1"], "mixes IPv4 and IPv6; a group's collectors share one address family"),
    (["198.18.2.1", "198.18.2.1"], "lists a collector twice"),
])
def test_collector_group_mistakes(remotes: list[str], says: str) -> None:
    [found] = mistakes(sessions=[{"name": "a", "remotes": remotes, "vni": 1}])
    assert found == f"c.yaml: sessions[0].remotes: {says}", found


def test_remote_and_remotes_together_are_refused() -> None:
    [found] = mistakes(sessions=[{"name": "a", "remote": "198.18.2.1", "remotes": ["198.18.2.1", "198.18.2.2"],
                                  "vni": 1}])
    assert found == "c.yaml: sessions[0]: give remote (one collector) or remotes (a group), not both", found


def test_more_collectors_than_session_slots() -> None:
    groups = [{"name": f"g{i}", "remotes": [f"198.18.{i}.{k}" for k in range(1, 17)], "vni": 1} for i in range(5)]
    found = mistakes(sessions=groups, rules=[{"number": 1, "sessions": ["g0"]}])
    assert found == [f"c.yaml: sessions: 80 collectors in all; at most {abi.MAX_SESSIONS} fit (MAX_SESSIONS)"]


def test_a_truncating_session_needs_one_slot_spare() -> None:
    groups = [{"name": f"g{i}", "remotes": [f"198.18.{i}.{k}" for k in range(1, 17)], "vni": 1} for i in range(4)]
    groups[0]["snaplen"] = 128
    found = mistakes(sessions=groups, rules=[{"number": 1, "sessions": ["g0"]}])
    assert found == [f"c.yaml: sessions: {abi.MAX_SESSIONS} collectors with a truncating session (snaplen or "
                     f"oversize: truncate); at most {abi.MAX_SESSIONS - 1}"]
