"""`bpftap top` in-process: rates from two status samples, the screen, options and `--once`."""

from __future__ import annotations

import argparse
import copy
import re
from typing import Any

import pytest

from bpftap import top
from bpftap.cli import ExitStatus, main

STATUS: dict[str, Any] = {
    "pid": 42,
    "config": "/etc/bpftap/bpftap.yaml",
    "attachments": ["mirror_ingress on eth0 ingress (tcx link)", "mirror_egress on eth0 egress (tcx link)"],
    "rules": [
        {"number": 10, "action": "skip", "sessions": [], "packets": 5, "bytes": 500},
        {"number": 20, "action": "mirror", "sessions": ["ids"], "packets": 100, "bytes": 150_000},
    ],
    "sessions": [
        {"name": "ids", "tunnel": "vxlan", "remote": "198.18.2.1", "id_field": "vni", "id": 42, "via": "eth2",
         "problem": None, "packets": 100, "bytes": 155_000, "unresolved": 0, "oversize": 2, "encap_fail": 0},
    ],
    "counters": {"seen": 1000, "matched": 100, "copy_sent": 100, "oversize": 2, "loop": 0},
}


def later(seconds_of_traffic: int = 2) -> dict[str, Any]:
    """The same agent after 200 packets/s of 1500 bytes on rule 20 for `seconds_of_traffic` s."""
    data = copy.deepcopy(STATUS)
    data["rules"][1]["packets"] += 200 * seconds_of_traffic
    data["rules"][1]["bytes"] += 300_000 * seconds_of_traffic
    data["sessions"][0]["packets"] += 200 * seconds_of_traffic
    data["sessions"][0]["bytes"] += 310_000 * seconds_of_traffic
    data["counters"]["seen"] += 250 * seconds_of_traffic
    return data


def row(lines: list[str], first_word: str) -> list[str]:
    matches = [line.split() for line in lines if line.split()[:1] == [first_word]]
    assert len(matches) == 1, lines
    return matches[0]


def test_rates_between_two_samples() -> None:
    lines = top.render(top.Sample(10.0, STATUS), top.Sample(12.0, later()), 1.0)
    assert row(lines, "20")[:6] == ["20", "mirror", "200", "p/s", "300.0", "kB/s"]
    assert row(lines, "10")[:6] == ["10", "skip", "0", "p/s", "0", "B/s"]
    assert row(lines, "ids")[:9] == ["ids", "vxlan", "198.18.2.1", "vni", "42", "200", "p/s", "310.0", "kB/s"]
    assert row(lines, "ids")[-2:] == ["oversize", "2"]
    assert "seen 1500 (250 /s)" in lines[-1]
    assert "agent pid 42" in lines[0] and "q quits" in lines[0]


def test_first_screen_has_no_rates_yet() -> None:
    lines = top.render(None, top.Sample(1.0, STATUS), 1.0)
    assert row(lines, "20")[2] == "-"
    assert row(lines, "ids")[5] == "-"


def test_a_reload_that_zeroes_counters_reads_as_zero_not_negative() -> None:
    after = copy.deepcopy(STATUS)
    after["rules"][1]["packets"] = 3
    lines = top.render(top.Sample(0.0, STATUS), top.Sample(1.0, after), 1.0)
    assert row(lines, "20")[2] == "0"


def test_a_new_rule_has_no_rate_until_its_second_sample() -> None:
    after = copy.deepcopy(STATUS)
    after["rules"].append({"number": 30, "action": "mirror", "sessions": ["ids"], "packets": 9, "bytes": 900})
    assert row(top.render(top.Sample(0.0, STATUS), top.Sample(1.0, after), 1.0), "30")[2] == "-"


@pytest.mark.parametrize("value,text", [(950, "950 B/s"), (12_345, "12.3 kB/s"), (1_500_000, "1.5 MB/s"),
                                        (7.2e12, "7200.0 GB/s")])
def test_human(value: float, text: str) -> None:
    assert top.human(value, "B/s") == text


def test_once_prints_plain_text(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    samples = iter([STATUS, later(1)])
    monkeypatch.setattr(top, "query_status", lambda: next(samples))
    monkeypatch.setattr(top.time, "sleep", lambda s: None)
    clock = iter([100.0, 101.0])
    monkeypatch.setattr(top.time, "monotonic", lambda: next(clock))
    assert top.run_top(argparse.Namespace(once=True, interval=1.0, bytes=False)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out, "--once is for scripts: no escape sequences"
    assert re.search(r"^\s+20 mirror\s+200 p/s\s+300.0 kB/s", out, re.MULTILINE), out


def test_without_agent_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bpftap.agent import status

    monkeypatch.setattr(status, "ADDRESS", "\0bpftap.status.test-none-here")
    assert main(["top", "--once"]) == ExitStatus.ERROR
    assert "no bpftap agent runs in this network namespace" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "x", "4000"])
def test_interval_is_checked_at_parse_time(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["top", "--interval", value])
    assert exit_info.value.code == ExitStatus.USAGE
    assert "--interval" in capsys.readouterr().err


def test_help_lists_top(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["top", "--help"])
    out = capsys.readouterr().out
    assert "--once" in out and "q or Ctrl-C quits" in out


def test_links_show_capacity_rates_and_shed() -> None:
    link = {"name": "eth1", "capacity": 100_000_000, "headroom_pct": 5.0, "originals_bps": 90_000_000,
            "copies_bps": 4_900_000, "fill_bps": 95_000_000, "factor": 1.0, "queue_cuts": 2, "copies": 10, "shed": 7}
    lines = top.render(None, top.Sample(1.0, {**STATUS, "links": [link]}), 1.0)
    assert lines[-1] == ("link eth1: capacity 100.0 Mbit/s, originals 90.0 Mbit/s, copies 4.9 Mbit/s, "
                         "copy budget 95.0 Mbit/s, shed 7, queue cut it 2 times")
    assert not any(line.startswith("link ") for line in top.render(None, top.Sample(1.0, STATUS), 1.0))


def test_columns_fit_group_members_and_big_counts_and_bytes_have_units() -> None:
    """A group member's name and an 11-digit count keep every column aligned; --bytes gives plain numbers."""
    from bpftap.cli import format_status

    big = 12_345_678_901
    session = {"name": "ids-farm@198.18.2.1", "tunnel": "vxlan", "remote": "198.18.2.1", "id_field": "vni", "id": 43,
               "packets": big, "bytes": 3 * 2**40}
    data = {"pid": 9, "config": "b.yaml", "attachments": [], "counters": {},
            "rules": [{"number": 100, "action": "mirror", "packets": big, "bytes": 1536, "sessions": ["ids-farm"]}],
            "sessions": [session, {**session, "name": "a", "packets": 1, "bytes": 10}]}
    for lines in (format_status(data).splitlines(),
                  top.render(None, top.Sample(0.0, data), 1.0)):
        header = next(i for i, line in enumerate(lines) if line.lower().startswith("session"))
        rows = lines[header:header + 3]
        # right-aligned columns end where their header ends, in every row
        end = rows[0].lower().rindex("bytes") + len("bytes")
        assert "ids-farm@198.18.2.1" in rows[1] and str(big) in rows[1]
        assert rows[1].index("3.0 TiB") + len("3.0 TiB") == rows[2].index("10 B") + len("10 B") == end
    assert "1536" in format_status(data, raw_bytes=True) and "1.5 KiB" in format_status(data)
    assert "3298534883328" in "\n".join(top.render(None, top.Sample(0.0, data), 1.0, raw_bytes=True))
