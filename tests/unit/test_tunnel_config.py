"""Sessions of every tunnel type in the config: fields per type, defaults, mistakes, and slot order."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from bpftap.compile.slots import assign_session_slots, session_header_len
from bpftap.config import InvalidConfigError, Session, parse_config


def sessions(*entries: dict[str, Any]) -> tuple[Session, ...]:
    data = {"sources": [{"interface": "eth0"}], "sessions": list(entries), "rules": []}
    return parse_config(data, "t.yaml").sessions


def errors(entry: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidConfigError) as info:
        sessions(entry)
    return info.value.errors


V4, V6 = ipaddress.ip_address("198.18.2.1"), ipaddress.ip_address("2001:db8:2::1")


@pytest.mark.parametrize(("entry", "want"), [
    ({"tunnel": "vxlan", "vni": 7}, Session("s", "vxlan", V4, vni=7, port=4789)),
    ({"tunnel": "geneve", "vni": 7}, Session("s", "geneve", V4, vni=7, port=6081)),
    ({"tunnel": "geneve", "vni": 7, "port": 7000}, Session("s", "geneve", V4, vni=7, port=7000)),
    ({"tunnel": "gre"}, Session("s", "gre", V4, port=0)),
    ({"tunnel": "gre", "key": 4294967295, "sequence": False},
     Session("s", "gre", V4, port=0, key=4294967295, sequence=False)),
    ({"tunnel": "erspan2", "session_id": 1023}, Session("s", "erspan2", V4, port=0, session_id=1023)),
    ({"tunnel": "erspan3", "session_id": 0}, Session("s", "erspan3", V4, port=0, session_id=0)),
])
def test_each_type_parses(entry: dict[str, Any], want: Session) -> None:
    assert sessions({"name": "s", "remote": "198.18.2.1", **entry}) == (want,)


@pytest.mark.parametrize(("entry", "message"), [
    ({"tunnel": "geneve"}, "sessions[0]: missing required field 'vni'"),
    ({"tunnel": "erspan2"}, "sessions[0]: missing required field 'session_id'"),
    ({"tunnel": "erspan3", "session_id": 1024}, "sessions[0].session_id: 1024 is out of range 0-1023"),
    ({"tunnel": "gre", "key": -1}, "sessions[0].key: -1 is out of range 0-4294967295"),
    ({"tunnel": "gre", "vni": 1}, ("sessions[0].vni: only vxlan and geneve sessions have vni; "
                                   "a gre session is identified by key")),
    ({"tunnel": "gre", "port": 4789}, "sessions[0].port: only vxlan and geneve sessions have port"),
    ({"tunnel": "erspan2", "session_id": 1, "platform_subheader": False},
     "sessions[0].platform_subheader: only erspan3 sessions have platform_subheader"),
    ({"tunnel": "erspan3", "session_id": 1, "platform_subheader": "no"},
     "sessions[0].platform_subheader: expected true or false, got the string 'no'"),
    ({"tunnel": "vxlan", "vni": 1, "key": 3}, ("sessions[0].key: only gre sessions have key; "
                                               "a vxlan session is identified by vni")),
    ({"tunnel": "erspan3", "session_id": 1, "vni": 3}, ("sessions[0].vni: only vxlan and geneve sessions have "
                                                        "vni; an erspan3 session is identified by session_id")),
    ({"tunnel": "erspan2", "session_id": 1, "sequence": False},
     "sessions[0].sequence: only gre sessions have sequence"),
    ({"tunnel": "gre", "sequence": "yes"}, "sessions[0].sequence: expected true or false, got the string 'yes'"),
    ({"tunnel": "vxlan", "vni": 1, "session": 3}, "sessions[0]: unknown field 'session'; did you mean 'session_id'?"),
])
def test_mistakes_are_named(entry: dict[str, Any], message: str) -> None:
    assert errors({"name": "s", "remote": "198.18.2.1", **entry}) == [f"t.yaml: {message}"]


def test_identifier_and_gre_options() -> None:
    vx, gre_plain, gre_key, ers = sessions(
        {"name": "a", "remote": "198.18.2.1", "vni": 9},
        {"name": "b", "tunnel": "gre", "remote": "198.18.2.1", "sequence": False},
        {"name": "c", "tunnel": "gre", "remote": "198.18.2.1", "key": 5},
        {"name": "d", "tunnel": "erspan2", "remote": "198.18.2.1", "session_id": 3},
    )
    assert [s.tun_id for s in (vx, gre_plain, gre_key, ers)] == [9, 0, 5, 3]
    assert [(s.gre_key, s.gre_seq) for s in (vx, gre_plain, gre_key, ers)] == [
        (False, False), (False, False), (True, True), (False, False)]


def test_slots_ascend_by_header_length() -> None:
    """The encap program only grows a packet's head between copies: slots must ascend by header length."""
    cfg = sessions(
        {"name": "geneve6", "tunnel": "geneve", "remote": "2001:db8:2::1", "vni": 1},   # 86
        {"name": "erspan3v4", "tunnel": "erspan3", "remote": "198.18.2.1", "session_id": 1},  # 62
        {"name": "vxlan4", "remote": "198.18.2.1", "vni": 1},  # 50
        {"name": "gre4", "tunnel": "gre", "remote": "198.18.2.1", "sequence": False},  # 38
        {"name": "erspan2v4", "tunnel": "erspan2", "remote": "198.18.2.1", "session_id": 1},  # 50
        {"name": "gre6", "tunnel": "gre", "remote": "2001:db8:2::1", "key": 1},  # 66
    )
    slots = assign_session_slots(cfg)
    assert sorted(slots, key=slots.__getitem__) == ["gre4", "vxlan4", "erspan2v4", "erspan3v4", "gre6", "geneve6"]
    lengths = [session_header_len(s) for s in sorted(cfg, key=lambda s: slots[s.name])]
    assert lengths == sorted(lengths) == [38, 50, 50, 62, 66, 86]
