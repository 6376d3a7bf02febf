"""Config validation: one row per kind of mistake, plus load, defaults and round trip."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from bpftap import abi
from bpftap.config import (
    Action,
    Config,
    Direction,
    InvalidConfigError,
    Rule,
    Session,
    Source,
    load_config,
    parse_config,
)
from bpftap.errors import ConfigError

GOOD_YAML = """\
sources:
  - interface: eth0
    direction: ingress
  - interface: "veth*"
sessions:
  - name: ids
    remote: 198.18.2.2
    vni: 42
  - name: archive.v6
    tunnel: vxlan
    remote: 2001:db8::2
    vni: 16777215
    port: 8472
rules:
  - number: 200
    protocol: udp
    src: 198.18.1.0/24
    src_ports: 1024-65535
    dst_ports: 53
    sessions: [ids]
  - number: 100
    direction: egress
    action: skip
    protocol: icmpv6
    dst: 2001:db8:1::/48
  - number: 300
    protocol: 47
    src: 198.18.0.7
    sessions: [ids, archive.v6]
"""

BASE: dict[str, Any] = {
    "sources": [{"interface": "eth0"}],
    "sessions": [{"name": "ids", "remote": "198.18.2.2", "vni": 42}],
    "rules": [{"number": 100, "protocol": "udp", "sessions": ["ids"]}],
}


DELETE = object()


def config_with(path: str, value: Any) -> dict[str, Any]:
    """BASE with one field set (or deleted, for value DELETE); path like 'rules.0.src'."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return data


BAD = [
    # (what is set, value, expected message after "bpftap.yaml: ")
    ("rule", [], "top level: unknown key 'rule'; did you mean 'rules'?"),
    ("redirect_chain", "no", "redirect_chain: expected true or false, got the string 'no'"),
    ("redirect_chain", 0, "redirect_chain: expected true or false, got the integer 0"),
    ("rules.0.dst_port", 53, "rules[0]: unknown field 'dst_port'; did you mean 'dst_ports'?"),
    ("sessions.0.vni", DELETE, "sessions[0]: missing required field 'vni'"),
    ("sessions.0.vni", "abc", "sessions[0].vni: expected an integer, got the string 'abc'"),
    ("sessions.0.vni", True, "sessions[0].vni: expected an integer, got the boolean true"),
    ("sessions.0.vni", 2**24, "sessions[0].vni: 16777216 is out of range 0-16777215"),
    ("sessions.0.port", 0, "sessions[0].port: 0 is out of range 1-65535"),
    ("sessions.0.tunnel", "nvgre", "sessions[0].tunnel: unknown tunnel 'nvgre'; did you mean 'gre'? "
     "supported: vxlan, geneve, gre, erspan2, erspan3"),
    ("sessions.0.remote", "collector", "sessions[0].remote: 'collector' is not an IP address"),
    ("sessions.0.remote", "ff02::1", "sessions[0].remote: ff02::1 is a multicast address"),
    ("sessions.0.remote", "0.0.0.0", "sessions[0].remote: 0.0.0.0 is the unspecified address"),
    ("sessions.0.name", "my ids", "sessions[0].name: 'my ids' is not a session name"),
    ("sources", [], "sources: no sources; list at least one interface to mirror from"),
    ("sources.0.interface", "", "sources[0].interface: is empty"),
    (
        "sources.0.interface",
        "eth0.vlan100.long",
        "sources[0].interface: 'eth0.vlan100.long' has 17 characters; interface names have at most 15",
    ),
    (
        "sources.0.direction",
        "in",
        "sources[0].direction: unknown direction 'in'; supported: ingress, egress, both",
    ),
    ("rules.0.direction", "inbound", "rules[0].direction: unknown direction 'inbound'"),
    (
        "rules.0.action",
        "skp",
        "rules[0].action: unknown action 'skp'; did you mean 'skip'? supported: mirror, skip",
    ),
    ("rules.0.protocol", "gre", "rules[0].protocol: unknown protocol 'gre'; supported: any, tcp"),
    ("rules.0.protocol", 256, "rules[0].protocol: protocol number 256 is out of range 1-255"),
    ("rules.0.protocol", 0, "rules[0].protocol: protocol 0 cannot be matched"),
    ("rules.0.src", "198.18.0.0/33", "rules[0].src: '198.18.0.0/33' is not a CIDR"),
    ("rules.0.src", 10, "rules[0].src: expected a CIDR or 'any', got the integer 10; put it in quotes"),
    (
        "rules.0.src",
        "198.18.1.1/24",
        "rules[0].src: '198.18.1.1/24' has host bits set; did you mean 198.18.1.0/24?",
    ),
    ("rules.0.number", 0, "rules[0].number: 0 is out of range 1-2147483647"),
    ("rules.0.number", DELETE, "rules[0]: missing required field 'number'"),
    ("rules.0.dst_ports", 70000, "rules[0].dst_ports: port 70000 is out of range 0-65535"),
    ("rules.0.dst_ports", "2000-1000", "rules[0].dst_ports: range 2000-1000 is backwards; write 1000-2000"),
    ("rules.0.dst_ports", "http", "rules[0].dst_ports: 'http' is not a port, a range such as 1024-65535"),
    ("rules.0.dst_ports", [], "rules[0].dst_ports: is an empty list; give ports such as [53, 5353, 8000-8080]"),
    ("rules.0.dst_ports", [53, 70000], "rules[0].dst_ports: item 1: port 70000 is out of range 0-65535"),
    ("rules.0.dst_ports", [53, [54]], "rules[0].dst_ports: item 1 is a list"),
    ("rules.0.sessions", DELETE, "rules[0].sessions: a mirror rule needs at least one session"),
    ("rules.0.sessions", [], "rules[0].sessions: a mirror rule needs at least one session"),
    ("rules.0.sessions", "ids", "rules[0].sessions: expected a list of session names, got the string"),
    ("rules.0.sessions", ["idz"], "rules[0].sessions[0]: unknown session 'idz'; did you mean 'ids'?"),
    ("rules.0.sessions", ["ids", "ids"], "rules[0].sessions[1]: session 'ids' is listed twice"),
    ("rules.0", "all", "rules[0]: expected a mapping, got the string 'all'"),
    ("rules", {"number": 1}, "rules: expected a list, got a mapping"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_value_is_named(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(field, value), "bpftap.yaml")
    errors = info.value.errors  # type: ignore[attr-defined]
    assert errors[0].startswith("bpftap.yaml: " + message), errors
    assert len(errors) == 1 or field == "sessions.0.name", errors  # a bad name is no name


BAD_RULES = [
    (
        {"src": "198.18.0.0/16", "dst": "2001:db8::/32"},
        "rules[0].dst: 2001:db8::/32 is IPv6 but src 198.18.0.0/16 is IPv4; a rule matches one address family",
    ),
    (
        {"protocol": "icmp", "src": "2001:db8::/32"},
        "rules[0].src: icmp is IPv4 only but 2001:db8::/32 is IPv6",
    ),
    (
        {"protocol": "icmpv6", "dst": "198.18.0.0/15"},
        "rules[0].dst: icmpv6 is IPv6 only but 198.18.0.0/15 is IPv4",
    ),
    ({"protocol": "icmp", "dst_ports": 22}, "rules[0].dst_ports: protocol icmp has no ports"),
    ({"protocol": 47, "src_ports": "1-2"}, "rules[0].src_ports: protocol 47 has no ports"),
    ({"action": "skip"}, "rules[0].sessions: a skip rule mirrors nothing; remove sessions"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_RULES, ids=[m.split(":")[0] for _, m in BAD_RULES])
def test_bad_rule_combination_is_named(fields: dict[str, Any], message: str) -> None:
    data = copy.deepcopy(BASE)
    data["rules"][0].update(fields)
    with pytest.raises(InvalidConfigError) as info:
        parse_config(data, "bpftap.yaml")
    assert len(info.value.errors) == 1, info.value.errors
    assert info.value.errors[0].startswith("bpftap.yaml: " + message), info.value.errors[0]


def test_duplicates_name_the_first_use() -> None:
    data = copy.deepcopy(BASE)
    data["sessions"].append({"name": "ids", "remote": "198.18.2.3", "vni": 1})
    data["rules"].append({"number": 100, "action": "skip"})
    data["sources"].append({"interface": "eth0", "direction": "egress"})
    with pytest.raises(InvalidConfigError) as info:
        parse_config(data, "bpftap.yaml")
    assert info.value.errors == [
        "bpftap.yaml: sources[1].interface: 'eth0' is already used by sources[0]; "
        "list each interface once (direction: both covers both ways)",
        "bpftap.yaml: sessions[1].name: 'ids' is already used by sessions[0]",
        "bpftap.yaml: rules[1].number: 100 is already used by rules[0] (rule 100)",
    ]


def test_a_files_mistakes_give_their_line_and_rule_number(tmp_path: Path) -> None:
    path = tmp_path / "bpftap.yaml"
    path.write_text("""\
sources:
  - interface: eth0
sessions:
  - name: ids
    remote: 198.18.2.2
rules:
  - number: 10
    sessions: [ids]
  - number: 20
    protocol: udp

    dst_ports: 70000
    sessions: [ids]
  - {number: 30, src: 198.18.0.0/33, sessions: [nope]}
""")
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        f"{path}: sessions[0]: missing required field 'vni' (line 4)",
        f"{path}: rules[1].dst_ports: port 70000 is out of range 0-65535 (line 12, rule 20)",
        f"{path}: rules[2].src: '198.18.0.0/33' is not a CIDR (line 14, rule 30)",
        f"{path}: rules[2].sessions[0]: unknown session 'nope' (line 14, rule 30)",
    ]


def test_limits_follow_the_abi() -> None:
    data = copy.deepcopy(BASE)
    data["sessions"] = [
        {"name": f"s{i}", "remote": "198.18.2.2", "vni": i} for i in range(abi.MAX_SESSIONS + 1)
    ]
    data["rules"] = [{"number": i + 1, "action": "skip"} for i in range(abi.MAX_RULES + 1)]
    with pytest.raises(InvalidConfigError) as info:
        parse_config(data, "bpftap.yaml")
    assert info.value.errors == [
        f"bpftap.yaml: sessions: {abi.MAX_SESSIONS + 1} sessions; at most {abi.MAX_SESSIONS} fit (MAX_SESSIONS)",
        f"bpftap.yaml: rules: {abi.MAX_RULES + 1} rules; at most {abi.MAX_RULES} fit (MAX_RULES)",
    ]


def test_long_glob_is_allowed() -> None:
    cfg = parse_config(config_with("sources.0.interface", "tenant-a-vlan-*-uplink"), "x")
    assert cfg.sources[0].interface == "tenant-a-vlan-*-uplink"


def test_all_errors_are_collected_in_one_config_error() -> None:
    data = {
        "sources": [{"interface": "eth0", "direction": "sideways"}],
        "sessions": [{"name": "ids", "remote": "198.18.2.2", "vni": -1}],
        "rules": [
            {"number": 1, "src": "198.18.0.0/33", "sessions": ["ids"]},
            {"number": 2, "action": "skip", "protocol": "icmp", "dst_ports": 7},
        ],
    }
    with pytest.raises(InvalidConfigError) as info:
        parse_config(data, "bpftap.yaml")
    assert [e.split(": ")[1] for e in info.value.errors] == [
        "sources[0].direction",
        "sessions[0].vni",
        "rules[0].src",
        "rules[1].dst_ports",
    ]
    assert str(info.value) == "\n".join(info.value.errors)
    # a session with a bad field still exists for references: no "unknown session 'ids'"
    assert "unknown session" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            None,
            "bpftap.yaml: top level: the file is empty; "
            "expected a mapping with keys sources, sessions, rules, copy_budget, redirect_chain, links",
        ),
        (
            [1, 2],
            "bpftap.yaml: top level: got a list; "
            "expected a mapping with keys sources, sessions, rules, copy_budget, redirect_chain, links",
        ),
    ],
)
def test_top_level_must_be_a_mapping(data: object, message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        parse_config(data, "bpftap.yaml")
    assert info.value.errors == [message]


def test_good_config_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bpftap.yaml"
    path.write_text(GOOD_YAML)
    cfg = load_config(path)
    v4, v6 = ipaddress.ip_network, ipaddress.ip_network
    assert cfg == Config(
        path=str(path),
        sources=(Source("eth0", Direction.INGRESS), Source("veth*", Direction.BOTH)),
        sessions=(
            Session("ids", "vxlan", ipaddress.ip_address("198.18.2.2"), 42, 4789),
            Session("archive.v6", "vxlan", ipaddress.ip_address("2001:db8::2"), 16777215, 8472),
        ),
        rules=(
            Rule(100, Direction.EGRESS, Action.SKIP, 58, None, v6("2001:db8:1::/48")),
            Rule(
                200,
                protocol=17,
                src=v4("198.18.1.0/24"),
                src_ports=((1024, 65535),),
                dst_ports=((53, 53),),
                sessions=("ids",),
            ),
            Rule(300, protocol=47, src=v4("198.18.0.7/32"), sessions=("ids", "archive.v6")),
        ),
    )
    assert [r.family for r in cfg.rules] == [6, 4, 4]


def test_defaults() -> None:
    cfg = parse_config(
        {
            "sources": [{"interface": "eth0"}],
            "sessions": [{"name": "ids", "remote": "2001:db8::2", "vni": 0}],
            "rules": [{"number": 1, "sessions": ["ids"]}],
        },
        "x.yaml",
    )
    assert cfg.sources == (Source("eth0", Direction.BOTH),)
    assert cfg.sessions[0].tunnel == "vxlan" and cfg.sessions[0].port == 4789
    rule = cfg.rules[0]
    assert (rule.direction, rule.action, rule.protocol, rule.src, rule.dst) == (
        Direction.BOTH,
        Action.MIRROR,
        None,
        None,
        None,
    )
    assert rule.src_ports == rule.dst_ports == ((0, 65535),)
    assert rule.family is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(53, ((53, 53),)), ("53", ((53, 53),)), ("1024 - 2048", ((1024, 2048),)), ("any", ((0, 65535),)), (0, ((0, 0),)),
     ([53, "5353", "8000-8080"], ((53, 53), (5353, 5353), (8000, 8080))), ("53, 5353", ((53, 53), (5353, 5353))),
     ([100, "90-100", 101, 200], ((90, 101), (200, 200))), ([53, "any"], ((0, 65535),))],
)
def test_port_spellings(value: object, expected: tuple[tuple[int, int], ...]) -> None:
    assert parse_config(config_with("rules.0.dst_ports", value), "x").rules[0].dst_ports == expected


def test_empty_sessions_and_rules_are_allowed() -> None:
    cfg = parse_config({"sources": [{"interface": "eth0"}], "sessions": None, "rules": None}, "x")
    assert cfg.sessions == () and cfg.rules == ()


def test_directions_reuse_abi_values() -> None:
    assert int(Direction.INGRESS) == int(abi.MirrorDir.INGRESS)
    assert int(Direction.EGRESS) == int(abi.MirrorDir.EGRESS)
    assert int(Direction.BOTH) == int(abi.MirrorDir.INGRESS | abi.MirrorDir.EGRESS)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bpftap.yaml"
    path.write_text("sources:\n  - interface: eth0\n    direction: [both\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line 4, column 1: ")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bpftap.yaml"
    path.write_text("sources:\n  - interface: eth0\n    interface: eth1\n")
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        f"{path}: line 3, column 5: duplicate key 'interface'; each key may appear once"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: cannot read: No such file or directory (ENOENT)"]


@pytest.mark.parametrize(("value", "chain"), [(DELETE, True), (True, True), (False, False)])
def test_redirect_chain(value: object, chain: bool) -> None:
    data = config_with("redirect_chain", value) if value is not DELETE else BASE
    assert parse_config(data, "x").redirect_chain is chain


def test_links_default_to_the_drivers_speed_and_5_percent_headroom() -> None:
    from bpftap.config import Link

    links = [{"interface": "eth1", "capacity": "200M"}, {"interface": "bond*", "headroom": "10%"},
             {"interface": "eth9", "headroom": 0}]
    cfg = parse_config({**BASE, "links": links}, "x")
    assert cfg.links == (Link("eth1", 200_000_000, 5.0), Link("bond*", 0, 10.0), Link("eth9", 0, 0.0))
    assert parse_config(BASE, "x").links == ()


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ("eth1", "x: links: expected a list, got the string 'eth1'"),
        (["eth1"], "x: links[0]: expected a mapping, got the string 'eth1'"),
        ([{"capacity": "1G"}], "x: links[0]: missing required field 'interface'"),
        ([{"interface": "eth1", "capacity": "fast"}],
         "x: links[0].capacity: 'fast' is not a capacity; write bits per second, e.g. 10G or 200M"),
        ([{"interface": "eth1", "capacity": "1000G"}], "x: links[0].capacity: '1000G' is out of range for bps"),
        ([{"interface": "eth1", "headroom": "100%"}],
         "x: links[0].headroom: '100%' is not a headroom; write a percent of the capacity from 0 to 99, e.g. 5%"),
        ([{"interface": "eth1", "headroom": True}],
         "x: links[0].headroom: True is not a headroom; write a percent of the capacity from 0 to 99, e.g. 5%"),
        ([{"interface": "eth1", "speed": 1}], "x: links[0]: unknown field 'speed'"),
        ([{"interface": "eth1"}, {"interface": "eth1"}],
         "x: links[1].interface: 'eth1' is already used by links[0]; list each link once"),
        ([{"interface": f"e{i}"} for i in range(abi.MAX_LINKS + 1)], f"x: links: {abi.MAX_LINKS + 1} links; at most "
         f"{abi.MAX_LINKS} fit (MAX_LINKS)"),
    ],
)
def test_bad_links_are_named(links: object, message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        parse_config({**BASE, "links": links}, "x")
    assert info.value.errors == [message]


def test_a_bad_session_name_is_one_message_not_one_per_rule(tmp_path: Path) -> None:
    path = tmp_path / "bpftap.yaml"
    path.write_text('sources: [{interface: eth0}]\n'
                    'sessions: [{name: "bad name", remote: 198.18.2.2, vni: 1}]\n'
                    'rules:\n  - {number: 1, sessions: ["bad name"]}\n  - {number: 2, sessions: ["bad name"]}\n')
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 1 and "sessions[0].name: 'bad name' is not a session name" in info.value.errors[0]


def test_libyamls_parser_reads_the_config_where_pyyaml_has_it() -> None:
    import yaml

    from bpftap.config.values import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, yaml.CSafeLoader) == bool(yaml.__with_libyaml__)
