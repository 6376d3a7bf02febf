"""The loaded object's maps, and the one way rule sets, sessions and counters go in and out of them.

Used by the agent and by the kernel tests, so what the tests program is what
the agent programs.
"""

from __future__ import annotations

import ctypes
from typing import Any

from bpftap import abi
from bpftap.bpf.libbpf import check, lib, num_possible_cpus
from bpftap.bpf.objects import BpfObject, U64
from bpftap.config import Session
from bpftap.netlink import NextHop

_PERCPU = (abi.MAP_STATS, abi.MAP_RULE_STATS, abi.MAP_SESSION_STATS)
_ALL = (abi.MAP_CONFIG, abi.MAP_RULES, abi.MAP_SESSIONS, *_PERCPU)


class Tables:
    """Handles on every map of a loaded mirror object."""

    def __init__(self, obj: BpfObject) -> None:
        self.maps = {name: obj.map(name, percpu=name in _PERCPU) for name in _ALL}
        self.ncpus = num_possible_cpus()

    def config(self) -> abi.MirrorConfig:
        return self.maps[abi.MAP_CONFIG].lookup(0, abi.MirrorConfig)

    def write_rules(self, rules: list[abi.MirrorRule], v6_sessions: int, encap_ifindex: int) -> int:
        """Fill the inactive rule slot (counters zeroed), then make it live; returns the live slot.

        The count is written before the flip, so no packet sees the new slot
        with a stale count. Raises BpfError if a map write fails.
        """
        cfg = self.config()
        new_slot = 1 - cfg.active_slot if cfg.rule_count[cfg.active_slot] else cfg.active_slot
        base = new_slot * abi.MAX_RULES
        zero = (abi.RuleStats * self.ncpus)()
        for i, rule in enumerate(rules):
            self.maps[abi.MAP_RULES].update(base + i, rule)
            self._update_raw(abi.MAP_RULE_STATS, base + i, zero)
        cfg.encap_ifindex = encap_ifindex
        cfg.v6_sessions = v6_sessions
        cfg.rule_count[new_slot] = len(rules)
        self.maps[abi.MAP_CONFIG].update(0, cfg)
        cfg.active_slot = new_slot
        self.maps[abi.MAP_CONFIG].update(0, cfg)
        return new_slot

    def write_session(self, slot: int, session: Session, hop: NextHop | None) -> None:
        """One session's kernel record; without a next hop its copies count as unresolved."""
        value = abi.MirrorSession(
            vni=session.vni, dst_port=session.port, family=session.remote.version, tunnel=abi.MirrorTunnel.VXLAN
        )
        abi.set_addr(value.outer_dst, session.remote.packed)
        if hop is not None:
            value.ifindex, value.mtu = hop.ifindex, min(hop.mtu, 0xFFFF)
            abi.set_addr(value.outer_src, hop.src.packed)
            value.src_mac[:] = hop.src_mac
            value.dst_mac[:] = hop.dst_mac
        self.maps[abi.MAP_SESSIONS].update(slot, value)

    def _update_raw(self, name: str, index: int, values: ctypes.Array[Any]) -> None:
        key = ctypes.c_uint32(index)
        ret = lib.bpf_map_update_elem(self.maps[name].fd, ctypes.byref(key), ctypes.byref(values), 0)
        check(ret, f"update map {name}[{index}]")

    def rule_stats(self, slot: int, position: int) -> abi.RuleStats:
        return self.maps[abi.MAP_RULE_STATS].sum_percpu(slot * abi.MAX_RULES + position, abi.RuleStats)

    def session_stats(self, slot: int) -> abi.SessionStats:
        return self.maps[abi.MAP_SESSION_STATS].sum_percpu(slot, abi.SessionStats)

    def counters(self) -> dict[str, int]:
        """Global counters by `enum mirror_stat` name (lower case), summed over CPUs."""
        stats = self.maps[abi.MAP_STATS]
        return {m.name.lower(): stats.sum_percpu(m, U64).value for m in abi.MirrorStat}
