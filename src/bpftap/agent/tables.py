"""The loaded object's maps, and the one way rule sets, sessions and counters go in and out of them.

Used by the agent and by the kernel tests, so what the tests program is what
the agent programs. It writes maps only: every value it writes is computed
by bpftap.compile (class tables, session records, flow buckets, ids).
"""

from __future__ import annotations

import array
import ctypes
import ipaddress
import os
import time
from typing import Any

from bpftap import abi
from bpftap.bpf.objects import U64, BpfObject, num_possible_cpus
from bpftap.compile.classifier import PORT_DIMS, CompiledRules, coarse_mask, rule_bits
from bpftap.compile.ids import StableIds, source_ids
from bpftap.compile.sessions import Hop, SessionIdentity, group_buckets, session_identity, session_record
from bpftap.config.model import Session
from bpftap.errors import BpftapError

_PERCPU = (abi.MAP_STATS, abi.MAP_RULE_STATS, abi.MAP_SESSION_STATS, abi.MAP_SESSION_SAMPLES, abi.MAP_FILTER_BITS)
_ALL = (
    abi.MAP_CONFIG,
    abi.MAP_RULES,
    abi.MAP_SESSIONS,
    abi.MAP_ADDR_CLASSES,
    abi.MAP_PORT_CLASSES,
    abi.MAP_META_CLASSES,
    abi.MAP_CLASS_BITS,
    abi.MAP_VLAN_CLASSES,
    abi.MAP_FLAG_CLASSES,
    abi.MAP_IFACE_CLASSES,
    abi.MAP_SESSION_SEQS,
    abi.MAP_SESSION_LIMITS,
    abi.MAP_GROUP_BUCKETS,
    abi.MAP_CLOCK,
    abi.MAP_SOURCE_IDS,
    abi.MAP_SOURCE_IFINDEXES,
    abi.MAP_FILTER_PROGS,
    *_PERCPU,
)
_DIRECTIONS = (abi.MirrorDir.INGRESS, abi.MirrorDir.EGRESS)


class Tables:
    """Handles on every map of a loaded mirror object."""

    def __init__(self, obj: BpfObject, class_capacity: int = abi.CLASS_CAPACITY) -> None:
        """`class_capacity` must be what `class_bits` was sized to (RULE_SLOTS times it) before load."""
        self.maps = {name: obj.map(name, percpu=name in _PERCPU) for name in _ALL}
        # stage 1's entries after a rule set's filters ran (filter_progs, FILTER_RESUME + dir - 1)
        self._resume = {abi.MirrorDir.INGRESS: obj.program(abi.PROG_INGRESS_FILTERED).fd,
                        abi.MirrorDir.EGRESS: obj.program(abi.PROG_EGRESS_FILTERED).fd}
        self.ncpus = num_possible_cpus()
        self.class_capacity = class_capacity
        self._trie_keys: list[list[abi.AddrKey]] = [[], []]
        self._iface_keys: list[list[int]] = [[], []]
        self._tables_written: dict[tuple[str, int], array.array[int]] = {}
        self._rule_ids: StableIds[int] = StableIds(abi.RULE_SLOTS * abi.MAX_RULES)  # rule number -> `rule_stats` key
        self._session_ids: StableIds[SessionIdentity] = StableIds(abi.RULE_SLOTS * abi.MAX_SESSIONS)  # -> stats/seq key
        self._staged: set[SessionIdentity] = set()  # identities of the sessions staged for the next flip
        self._source_ids: dict[int, int] = {}  # ifindex -> source id, as written
        self.links: set[int] = set()  # ifindexes of the listed links (config links:): sessions leaving by one say so

    def bookkeeping(self) -> dict[str, list[list[Any]]]:
        """The counter ids of rules and sessions and the source ids, JSON-able, for adopt() in the next agent."""
        return {
            "rules": [[number, i] for number, i in self._rule_ids.ids.items()],
            # identities are (name, tunnel, remote address, tunnel id)
            "sessions": [[*key[:2], str(key[2]), key[3], i] for key, i in self._session_ids.ids.items()
                         if isinstance(key, tuple)],
            "sources": [[ifindex, i] for ifindex, i in self._source_ids.items()],
        }

    def adopt(self, kept: dict[str, list[list[Any]]] | None) -> None:
        """Take over maps an earlier agent filled (reused from its pins), before the first write.

        The trie and interface keys of both rule slots are read from the maps,
        so the next write_rules deletes the stale ones of its slot. `kept` is
        that agent's bookkeeping(): with it, rules and sessions keep their
        counters and sequence numbers; without it (its state file is gone)
        they start again from zero.
        """
        for key in self.maps[abi.MAP_ADDR_CLASSES].keys(abi.AddrKey):
            self._trie_keys[key.slot].append(key)
        for iface in self.maps[abi.MAP_IFACE_CLASSES].keys(abi.IfaceKey):
            self._iface_keys[iface.slot].append(iface.ifindex)
        if kept is None:
            return
        self._rule_ids.restore({number: i for number, i in kept["rules"]})
        self._session_ids.restore(
            {(name, tunnel, ipaddress.ip_address(remote), tun_id): i
             for name, tunnel, remote, tun_id, i in kept["sessions"]}
        )
        self._source_ids = {ifindex: i for ifindex, i in kept["sources"]}

    def config(self) -> abi.MirrorConfig:
        return self.maps[abi.MAP_CONFIG].lookup(0, abi.MirrorConfig)

    def set_budget(self, pps: int, bps: int) -> None:
        """The node-wide copy budget (0 = none); sessions drain it down to their priority's reserve."""
        cfg = self.config()
        cfg.budget_pps, cfg.budget_bps = pps, bps
        self.maps[abi.MAP_CONFIG].update(0, cfg)

    def set_redirect_chain(self, chain: bool) -> None:
        """Off: stage 2 redirects nothing and puts the copies in `copies` for the daemon to send."""
        cfg = self.config()
        cfg.ring_copies = int(not chain)
        self.maps[abi.MAP_CONFIG].update(0, cfg)

    def set_paused(self, paused: bool) -> None:
        """The kill switch: while paused the source programs copy nothing (counted as `paused`)."""
        cfg = self.config()
        cfg.paused = int(paused)
        self.maps[abi.MAP_CONFIG].update(0, cfg)

    def staging_slot(self) -> int:
        """The rule slot the next write_rules fills: the inactive one (the live one before any rules)."""
        cfg = self.config()
        active: int = cfg.active_slot
        return 1 - active if cfg.rule_count[active] else active

    def write_rules(self, compiled: CompiledRules, encap_ifindex: int) -> int:
        """Fill the staging rule slot, then make it live with its staged sessions; returns the live slot.

        Every table of the slot is rewritten and trie entries of its previous
        rule set are deleted first; the count is written before the flip, so
        no packet sees the new slot half-made. Stage the slot's sessions with
        write_session first. Rules and sessions keep their counters across
        reloads. Raises BpftapError if the rule set has more classes than the
        map was sized for, BpfError if a map write fails.
        """
        if len(compiled.classes) > self.class_capacity:
            raise BpftapError(
                f"this rule set needs {len(compiled.classes)} classifier classes and the running agent has room "
                f"for {self.class_capacity}; restart bpftap to apply it (the running rules stay)"
            )
        slot = self.staging_slot()
        cfg = self.config()
        n = len(compiled.rules)
        if n:
            rules = (abi.MirrorRule * n)(*compiled.rules)
            for rule in rules:
                rule.stats_id = self._stats_id(rule.number)
            self.maps[abi.MAP_RULES].update_batch(slot * abi.MAX_RULES, rules)
        words = compiled.words
        bits = (abi.RuleBits * len(compiled.classes))(*(rule_bits(b, words) for b in compiled.classes))
        self.maps[abi.MAP_CLASS_BITS].update_batch(slot * self.class_capacity, bits)
        coarse = [coarse_mask(b) for b in compiled.classes]
        ports = compiled.ports[PORT_DIMS[0]] + compiled.ports[PORT_DIMS[1]]
        self._write_table(abi.MAP_PORT_CLASSES, slot, slot * 2 * abi.PORT_KEYS, ports, coarse)
        self._write_table(abi.MAP_META_CLASSES, slot, slot * abi.META_KEYS, compiled.meta, coarse)
        self._write_table(abi.MAP_VLAN_CLASSES, slot, slot * abi.VLAN_KEYS, compiled.vlan)
        self._write_table(abi.MAP_FLAG_CLASSES, slot, slot * abi.FLAG_KEYS, compiled.tcp_flags)
        ifaces = self.maps[abi.MAP_IFACE_CLASSES]
        for index in self._iface_keys[slot]:
            ifaces.delete_key(abi.IfaceKey(slot, index))
        for index, class_id in compiled.iface.items():
            ifaces.update_key(abi.IfaceKey(slot, index), ctypes.c_uint32(class_id))
        self._iface_keys[slot] = list(compiled.iface)
        trie = self.maps[abi.MAP_ADDR_CLASSES]
        for key in self._trie_keys[slot]:
            trie.delete_key(key)
        self._trie_keys[slot] = []
        for entry in compiled.addr:
            key = entry.key(slot)
            trie.update_key(key, ctypes.c_uint32(entry.class_id))
            self._trie_keys[slot].append(key)
        self._write_filters(slot, compiled.filters)
        cfg.encap_ifindex = encap_ifindex
        cfg.class_capacity = self.class_capacity
        cfg.rule_count[slot] = n
        self.maps[abi.MAP_CONFIG].update(0, cfg)
        cfg.active_slot = slot
        self.maps[abi.MAP_CONFIG].update(0, cfg)
        # counters of rules and sessions that are gone are free for new ones
        self._rule_ids.keep_only({r.number for r in compiled.rules})
        self._session_ids.keep_only(self._staged)
        self._staged = set()
        return slot

    def _write_filters(self, slot: int, filters: list[tuple[int, str]]) -> None:
        """The slot's filter program for each direction in `filter_progs`, and its verdicts all 1 (mirror_abi.h).

        Every bit of filter_bits[slot] starts at 1 on every CPU: a filter
        program writes only its rules' bits, so a position that held a filter
        rule in an earlier rule set must not stay 0. Raises BpfError (with
        the verifier's log) if the kernel refuses a program.
        """
        ones = abi.RuleBits()
        ctypes.memset(ctypes.addressof(ones), 0xFF, ctypes.sizeof(ones))
        self._update_raw(abi.MAP_FILTER_BITS, slot, (abi.RuleBits * self.ncpus)(*([ones] * self.ncpus)))
        progs = self.maps[abi.MAP_FILTER_PROGS]
        if not filters:
            for direction in _DIRECTIONS:
                progs.delete_key(ctypes.c_uint32(abi.filter_prog(slot, direction)))
            return
        from bpftap.filter import program

        bits_fd = self.maps[abi.MAP_FILTER_BITS].fd
        for direction in _DIRECTIONS:
            progs.update(abi.FILTER_RESUME + direction - 1, ctypes.c_uint32(self._resume[direction]))
            fd = program.load(slot, direction, filters, bits_fd, progs.fd)
            try:
                progs.update(abi.filter_prog(slot, direction), ctypes.c_uint32(fd))
            finally:
                os.close(fd)

    def _stats_id(self, number: int) -> int:
        """The `rule_stats` key of rule `number`: the same across reloads; a new one starts at zero."""
        found, new = self._rule_ids.get(number)
        if new:
            self._update_raw(abi.MAP_RULE_STATS, found, (abi.RuleStats * self.ncpus)())
        return found

    def _write_table(self, name: str, slot: int, first: int, values: list[int],
                     coarse: list[int] | None = None) -> None:
        """Write a whole class table of a slot, unless it already holds exactly these values.

        With `coarse` (each class's coarse mask) the entries are `struct class_ref`, else class ids.
        """
        data = array.array("I", values if coarse is None else [v for c in values for v in (c, coarse[c])])
        if self._tables_written.get((name, slot)) == data:
            return
        kind = ctypes.c_uint32 if coarse is None else abi.ClassRef
        self.maps[name].update_batch(first, (kind * len(values)).from_buffer(data))
        self._tables_written[(name, slot)] = data

    def write_session(
        self, slot: int, session: Session, hop: Hop | None, live: bool = False, member: int = 0
    ) -> None:
        """Write one collector's record (compile.sessions.session_record); without a next hop it is unresolved.

        Written into the staging rule slot's session table (live=False: for
        the next write_rules) or the live one (live=True: a next hop that
        changed). A session keeps its counters and sequence numbers while
        its name, tunnel, remote and id stay; the `clock` map gets the
        current realtime-minus-monotonic offset (ERSPAN III timestamps of
        packets without a receive time use it). For a collector group,
        `member` picks the collector (its record is at `slot` + member, its
        counters under `member_name`); write_buckets spreads the flows.
        Raises BpfError if a map write fails.
        """
        identity = session_identity(session, member)
        stats_id, new = self._session_ids.get(identity)
        if new:
            self._update_raw(abi.MAP_SESSION_STATS, stats_id, (abi.SessionStats * self.ncpus)())
            self.maps[abi.MAP_SESSION_SEQS].update(stats_id, abi.SessionSeq())
            self.maps[abi.MAP_SESSION_LIMITS].update(stats_id, abi.SessionLimit())
            self._update_raw(abi.MAP_SESSION_SAMPLES, stats_id, (ctypes.c_uint64 * self.ncpus)())
        value = session_record(session, hop, stats_id, member, on_link=hop is not None and hop.ifindex in self.links)
        rule_slot = self.config().active_slot if live else self.staging_slot()
        if not live:
            self._staged.add(identity)
        self.maps[abi.MAP_SESSIONS].update(rule_slot * abi.MAX_SESSIONS + slot + member, value)
        self.write_clock()

    def write_buckets(self, slot: int, session: Session, live: bool = False) -> None:
        """Write the flow buckets of a collector group at `slot` (compile.sessions.group_buckets).

        Raises BpfError if the write fails.
        """
        if len(session.members) < 2:
            return
        rule_slot = self.config().active_slot if live else self.staging_slot()
        first = (rule_slot * abi.MAX_SESSIONS + slot) * abi.GROUP_BUCKETS
        table = array.array("I", group_buckets(session))
        self.maps[abi.MAP_GROUP_BUCKETS].update_batch(first, (ctypes.c_uint32 * len(table)).from_buffer(table))

    def write_clock(self) -> None:
        """Store CLOCK_REALTIME minus CLOCK_MONOTONIC in `clock`. Raises BpfError if the write fails."""
        offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.maps[abi.MAP_CLOCK].update(0, abi.MirrorClock(offset))

    def write_sources(self, ifindexes: list[int]) -> dict[int, int]:
        """Give source interfaces the ids that carry them from stage 1 to stage 2; returns ifindex -> id.

        Ids run from 1 in the order given, up to abi.MAX_SOURCES - 1; later
        interfaces get none (their copies say "unknown"). Ids of interfaces
        that stay keep their number; entries of ones gone are removed.
        Raises BpfError if a map write fails.
        """
        ids = source_ids(ifindexes, self._source_ids)
        for ifindex, sid in self._source_ids.items():
            if ids.get(ifindex) != sid:
                self.maps[abi.MAP_SOURCE_IDS].delete_key(ctypes.c_uint32(ifindex))
                self.maps[abi.MAP_SOURCE_IFINDEXES].update(sid, ctypes.c_uint32(0))
        for ifindex, sid in ids.items():
            self.maps[abi.MAP_SOURCE_IFINDEXES].update(sid, ctypes.c_uint32(ifindex))
            self.maps[abi.MAP_SOURCE_IDS].update_key(ctypes.c_uint32(ifindex), ctypes.c_uint32(sid))
        self._source_ids = ids
        return dict(ids)

    def session_name(self, stats_id: int) -> str | None:
        """The session (or group member) whose counters are at `stats_id`, for the kernel log."""
        return next((n for (n, *_), i in self._session_ids.ids.items() if i == stats_id), None)

    def _session_key(self, name: str) -> int | None:
        return next((i for (n, *_), i in self._session_ids.ids.items() if n == name), None)

    def session_seq(self, name: str) -> int:
        """The last sequence number session `name` sent (0: none yet, or no such session)."""
        key = self._session_key(name)
        return 0 if key is None else int(self.maps[abi.MAP_SESSION_SEQS].lookup(key, abi.SessionSeq).seq)

    def _update_raw(self, name: str, index: int, values: ctypes.Array[Any]) -> None:
        self.maps[name].update_percpu(index, values)

    def rule_stats(self, number: int) -> abi.RuleStats:
        """First matches of rule `number` since it appeared (zero for an unknown rule)."""
        found = self._rule_ids.ids.get(number)
        if found is None:
            return abi.RuleStats()
        return self.maps[abi.MAP_RULE_STATS].sum_percpu(found, abi.RuleStats)

    def session_stats(self, name: str) -> abi.SessionStats:
        """Copies of session `name` and why others were not sent (zero for an unknown session)."""
        key = self._session_key(name)
        return abi.SessionStats() if key is None else self.maps[abi.MAP_SESSION_STATS].sum_percpu(key, abi.SessionStats)

    def counters(self) -> dict[str, int]:
        """Global counters by `enum mirror_stat` name (lower case), summed over CPUs."""
        stats = self.maps[abi.MAP_STATS]
        return {m.name.lower(): stats.sum_percpu(m, U64).value for m in abi.MirrorStat}
