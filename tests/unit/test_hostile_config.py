"""Hostile config files (issue 16, defects 1 and 2): alias bombs in a field value and files without end
are refused with exit 2, fast, and no message shows an unbounded value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bpftap.cli import ExitStatus, main
from bpftap.config import InvalidConfigError, load_config

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

BASE = """\
sources: [{interface: eth0}]
sessions:
  - {name: ids, remote: 198.18.2.2, vni: 42%(session)s}
rules:
  - {number: 10, sessions: [ids]%(rule)s}
%(top)s"""

FIELDS = {
    "vlan": {"rule": ", vlan: *i"},
    "interface": {"rule": ", interface: *i"},
    "tcp_flags": {"rule": ", protocol: tcp, tcp_flags: *i"},
    "rate_limit": {"session": ", rate_limit: *i"},
    "copy_budget": {"top": "copy_budget: *i\n"},
}


def _bomb_file(tmp_path: Path, field: str) -> Path:
    parts = {"session": "", "rule": "", "top": ""} | FIELDS[field]
    # the anchors live under an ignored-by-nothing key: put them in a top-level key the
    # validator reports as unknown, as an attacker would
    text = "x-anchors:\n" + "".join("  " + line + "\n" for line in BOMB.splitlines()) + BASE % parts
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("field", FIELDS)
def test_alias_bomb_in_a_field_is_refused_fast(tmp_path: Path, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bomb_file(tmp_path, field)
    start = time.monotonic()
    assert main(["run", "-c", str(path)]) == ExitStatus.USAGE
    assert time.monotonic() - start < 1.0
    err = capsys.readouterr().err
    assert "alias" in err and str(path) in err
    assert len(err) < 2000


def test_aliases_in_moderation_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("x: &s [ids]\n" + BASE % {"session": "", "rule": "", "top": ""})
    # x is unknown, but the anchor itself is no problem
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: top level: unknown key 'x'"]


def test_a_huge_value_is_shown_cut(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(BASE % {"session": "", "rule": ", vlan: '" + "x" * 100_000 + "'", "top": ""})
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    (message,) = info.value.errors
    assert message.startswith(f"{path}: rules[0].vlan: 'xxx")
    assert len(message) < 300


def test_dev_zero_is_refused_by_size(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main(["run", "-c", "/dev/zero"]) == ExitStatus.USAGE
    assert time.monotonic() - start < 1.0
    err = capsys.readouterr().err
    assert err.startswith("/dev/zero: ") and "MiB" in err


def test_a_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "w") as f:
        f.write("# padding\n" * (2 * 1024 * 1024))
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert "larger than" in str(info.value)
