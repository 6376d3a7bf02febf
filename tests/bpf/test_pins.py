"""Pinned maps on the real kernel: a second load of the object reuses them, contents and all; a mismatch is refused.

This is what lets `bpftap run` adopt a killed agent's maps (tests/integration/test_restart.py
runs the whole restart in the lab).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpftap import abi
from bpftap.bpf.objects import BpfObject
from bpftap.errors import BpftapError


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = Path("/sys/fs/bpf") / f"bpftap-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield path / "maps"
    shutil.rmtree(path, ignore_errors=True)


def loaded(pin_dir: Path, class_bits: int = abi.RULE_SLOTS * abi.CLASS_CAPACITY) -> tuple[BpfObject, list[str]]:
    obj = BpfObject.open(abi.object_path())
    obj.set_max_entries(abi.MAP_CLASS_BITS, class_bits)
    found = obj.pin_maps(pin_dir)
    obj.load()
    return obj, found


def test_a_second_load_reuses_every_pinned_map_with_its_contents(pin_dir: Path) -> None:
    first, found = loaded(pin_dir)
    assert found == []
    pinned = sorted(p.name for p in pin_dir.iterdir())
    assert abi.MAP_CONFIG in pinned and abi.MAP_SESSION_STATS in pinned and abi.MAP_EVENTS in pinned
    assert not [name for name in pinned if "." in name], "an internal map (.rodata/.bss) was pinned"
    cfg = first.map(abi.MAP_CONFIG).lookup(0, abi.MirrorConfig)
    cfg.paused, cfg.budget_pps = 1, 12345
    first.map(abi.MAP_CONFIG).update(0, cfg)
    first.close()  # the pins hold the maps

    second, found = loaded(pin_dir)
    try:
        assert sorted(found) == pinned
        kept = second.map(abi.MAP_CONFIG).lookup(0, abi.MirrorConfig)
        assert (kept.paused, kept.budget_pps) == (1, 12345)
    finally:
        second.close()


def test_pins_of_an_incompatible_build_are_refused_naming_the_map(pin_dir: Path) -> None:
    loaded(pin_dir)[0].close()
    obj = BpfObject.open(abi.object_path())
    try:
        obj.set_max_entries(abi.MAP_CLASS_BITS, 4 * abi.RULE_SLOTS * abi.CLASS_CAPACITY)
        with pytest.raises(BpftapError, match=f"map {abi.MAP_CLASS_BITS} pinned at .* incompatible build.*detach"):
            obj.pin_maps(pin_dir)
    finally:
        obj.close()

