"""The agent: loads the programs, attaches them, keeps sessions resolved, applies rule sets, reports.

Life of `bpftap run`: claim the namespace, create the internal veth pair,
load the object with its maps pinned, write sessions and rules, attach the
encap stage then the sources (tcx and XDP links pinned); `bpftap.agent.run`
then serves until SIGTERM/SIGINT (detach everything and unpin, exit 0; or, with
--keep-attached, leave it all for the next run) or SIGHUP (reload the
config without detaching). Routes and neighbours are re-resolved every
second.

Restart without a gap: a run that finds an earlier agent's pins (it was
killed, or handed over) adopts them: load reuses the pinned maps, the
attachments stay (their programs kept, or swapped in one step with
--upgrade), the rules are rewritten through the staging slot. Nothing is
detached, so mirroring never stops. Without pins (the earlier agent ran
with a private bpffs, as under `ip netns exec`) it cleans up what a dead
agent left, as before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from bpftap import abi
from bpftap.agent import inside, state
from bpftap.agent.copies import CopySender
from bpftap.agent.detach import cleanup_leftovers
from bpftap.agent.kernel_log import KernelLog
from bpftap.agent.links import LinkGovernor, resolve_links
from bpftap.agent.pods import PodFollower, agent_prog
from bpftap.agent.tables import Tables
from bpftap.bpf import pins, tc
from bpftap.bpf.objects import BpfObject
from bpftap.compile.classifier import CompiledRules, class_capacity, compile_rules
from bpftap.compile.sessions import member_name
from bpftap.compile.slots import assign_session_slots
from bpftap.config import Config, Direction, IPAddress, Session
from bpftap.errors import BpfError, ConfigError
from bpftap.netlink import (
    INTERNAL_A,
    INTERNAL_B,
    NextHop,
    ResolveError,
    RouteWatch,
    delete_internal_pair,
    ensure_internal_pair,
    link_index,
    match_interfaces,
    resolve,
    tx_dropped,
)
from bpftap.netlink import (
    links as netlink_links,
)
from bpftap.tunnels import TUNNEL_ID_FIELDS

log = logging.getLogger("bpftap.agent")
REFRESH_SECONDS = 1.0


@dataclass
class SessionState:
    """One collector of a session (the only one, or a group's member): its slot and next hop."""

    slot: int  # the session's first slot; the collector's record is at slot + member
    session: Session
    member: int = 0
    nexthop: NextHop | None = None
    problem: str = ""

    @property
    def remote(self) -> IPAddress:
        return self.session.members[self.member]


@dataclass
class Plan:
    """A config compiled for the kernel."""

    config: Config
    slots: dict[str, int]
    rules: CompiledRules
    sessions: dict[str, SessionState] = field(default_factory=dict)


class Agent:
    """Owns the loaded object and every attachment in this network namespace."""

    def __init__(self, config: Config, mode: tc.Mode = tc.Mode.AUTO, first: bool = True, priority: int = 1,
                 object_path: Path | None = None, upgrade: bool = False) -> None:
        self.config, self.mode, self.first, self.priority = config, mode, first, priority
        self.object_path = object_path or abi.object_path()
        self.upgrade = upgrade  # replace the programs of adopted attachments with this object's
        self.keep = False  # stop() leaves everything attached and pinned for the next agent (a handover)
        self.pin_dir = pins.netns_dir(state.netns_id())
        self.adopted: list[tc.Adopted] = []  # the earlier agent's attachments not yet taken over
        self.adoption: dict[str, Any] | None = None  # what was adopted, for status
        self.ipr, self.watch = IPRoute(), RouteWatch()
        self.stack = ExitStack()
        self.attachments: list[tc.Attachment] = []
        self.created_clsact: list[str] = []
        self.lock = threading.Lock()
        self.plan: Plan | None = None
        self.active_slot = 0
        self.encap_ifindex = 0
        self.source_ifindex: dict[str, int] = {}
        self.tables: Tables
        self.pods: PodFollower | None = None  # attaches to pod sources as pods come and go
        self.governor: LinkGovernor
        self.link_attachments: dict[int, tc.Adopted] = {}  # mirror_link on each listed link, by ifindex
        self.unknown_capacity: set[str] = set()  # links already named in the log for it

    # --- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        """Load, configure and attach, adopting an earlier agent's pins if there are any.

        On any error, undo what was done and raise; after adopting, leave
        everything as it was found instead, for the next run or 'bpftap detach'.
        """
        try:
            self._start()
        except BaseException:
            self.keep = self.adoption is not None
            self.stop()
            raise

    def _start(self) -> None:
        if pins.ensure_bpffs():
            log.warning("no bpffs at /sys/fs/bpf (as under 'ip netns exec'): mounted one of this process's own; "
                        "its pins vanish with the process, so a run after a crash cannot adopt them")
        leftover = state.claim()
        self._undo(state.AgentState.remove)
        maps_dir, links_dir = self.pin_dir / "maps", self.pin_dir / "links"
        adopting = maps_dir.is_dir() and any(maps_dir.iterdir())
        if adopting:  # from here on a failed start leaves what it found (see start())
            self.adoption = {"pins": str(self.pin_dir)}
        if leftover is not None and not adopting:
            log.warning("a previous agent (pid %d) died without cleaning up; removing what it left", leftover.pid)
            cleanup_leftovers(leftover, self.ipr)
        sources = self._resolve_sources()
        self.source_ifindex = {name: index for name, index in sources}
        self.encap_ifindex, peer_ifindex = self._internal_pair(adopting)
        self._undo(delete_internal_pair, INTERNAL_A, self.ipr)
        # the classifier's bitmap map is sized to the rule set, with room to grow (or as the pinned one is)
        compiled = self.compile(self.config)
        capacity = class_capacity(len(compiled[1].classes))
        if adopting and (maps_dir / abi.MAP_CLASS_BITS).exists():
            capacity = pins.map_info(maps_dir / abi.MAP_CLASS_BITS).max_entries // abi.RULE_SLOTS
        self.obj = self.stack.enter_context(BpfObject.open(self.object_path))
        self.obj.set_max_entries(abi.MAP_CLASS_BITS, abi.RULE_SLOTS * capacity)
        reused = self.obj.pin_maps(maps_dir)
        self.obj.load()
        self._undo(pins.remove, self.pin_dir)
        self.tables = Tables(self.obj, capacity)
        if adopting:
            self._adopt(leftover, links_dir, reused)
        klog = KernelLog(
            self.obj.map(abi.MAP_EVENTS), self.tables.session_name, lambda: self.tables.counters()["log_lost"]
        )
        klog.start()
        self.stack.callback(klog.close)
        sender = CopySender(self.obj.map(abi.MAP_COPIES))
        sender.start()
        self.stack.callback(sender.close)
        self.governor = LinkGovernor(self.obj.map(abi.MAP_LINK_RATES), self.obj.map(abi.MAP_LINK_STATE))
        self.governor.start()
        self.stack.callback(self.governor.close)
        self.apply(self.config, compiled)
        # before the first source is attached, so every copy names its interface
        self.tables.write_sources([ifindex for (_, ifindex) in sources])
        # the encap stage first, so the first clone has somewhere to go
        # (and on bpftap0 too: the fragments of copies over the MTU come back that way)
        for ifname, ifindex in ((INTERNAL_B, peer_ifindex), (INTERNAL_A, self.encap_ifindex)):
            try:
                self._attach(self.obj.program(abi.PROG_NAPI), ifname, ifindex, None)
            except BpfError as exc:
                log.warning("%s: clones share the CPU backlog with veth traffic "
                            "(copies may cost originals under overload)", exc)
            self._attach(self.obj.program(abi.PROG_ENCAP), ifname, ifindex, tc.Direction.INGRESS)
        # super-packets of GSO sessions leave from bpftap0's egress, before it segments them
        self._attach(self.obj.program(abi.PROG_GSO), INTERNAL_A, self.encap_ifindex, tc.Direction.EGRESS)
        for (ifname, ifindex), direction in sources.items():
            for hook in (tc.Direction.INGRESS, tc.Direction.EGRESS):
                if direction & (Direction.INGRESS if hook is tc.Direction.INGRESS else Direction.EGRESS):
                    others = tc.others_on_hook(ifname, ifindex, hook)
                    if others:
                        log.info("also on %s %s: %s", ifname, hook.value, "; ".join(others))
                    prog = abi.PROG_INGRESS if hook is tc.Direction.INGRESS else abi.PROG_EGRESS
                    self._attach(self.obj.program(prog), ifname, ifindex, hook)
        follower = self.pods = PodFollower(self, self.ipr, self.source_ifindex)
        self.stack.callback(lambda: follower.close(detach=not self.keep))  # a handover keeps them attached
        follower.start()
        for line in inside.prune(follower.inside_pods(), self.pin_dir):
            log.info("%s", line)
        # what the earlier agent had attached and this config no longer asks for
        for att in self.adopted:
            att.close()
            log.info("detached %s (adopted, not in this config)", att.describe())
        self.adopted = []
        self._record()

    def _undo(self, fn: Callable[..., object], *args: Any) -> None:
        """Register a step of stop() that a handover (keep=True) skips, leaving the thing for the next agent."""
        self.stack.callback(lambda: None if self.keep else fn(*args))

    def _internal_pair(self, adopting: bool) -> tuple[int, int]:
        """The internal pair's ifindexes: the earlier agent's when adopting (its programs stay on it), else a new
        pair."""
        if adopting:
            indexes = [link_index(name, self.ipr) for name in (INTERNAL_A, INTERNAL_B)]
            if indexes[0] is not None and indexes[1] is not None:
                return indexes[0], indexes[1]
        return ensure_internal_pair(INTERNAL_A, INTERNAL_B, self.ipr)

    def _adopt(self, leftover: state.AgentState | None, links_dir: Path, reused: list[str]) -> None:
        """Take over the maps (already reused by load), attachments and counter ids of an earlier agent."""
        links = netlink_links(self.ipr)
        self.adopted = tc.adopt(links_dir, {index: name for name, index in links.items()})
        self.tables.adopt(leftover.tables if leftover else None)
        for name in leftover.created_clsact if leftover else []:
            if name in links:  # the qdisc it made goes when this agent detaches
                self.created_clsact.append(name)
                self._undo(tc.destroy_clsact, name, links[name])
        self.adoption = {**(self.adoption or {}), "pid": leftover.pid if leftover else None, "maps": len(reused),
                         "attachments": len(self.adopted), "programs": "replaced" if self.upgrade else "kept"}
        log.info("adopting the pins at %s of an earlier agent (pid %s): %d maps, %d attachments; programs %s, "
                 "no detach",
                 self.pin_dir, self.adoption["pid"] or "?", len(reused), len(self.adopted),
                 "replaced by " + self.object_path.name if self.upgrade else "kept")

    def place(self, prog: Any, ifname: str, ifindex: int, hook: tc.Direction | None,
              priority: int | None = None) -> tc.Adopted:
        """Put `prog` on a TC hook of `ifname` (hook None: its XDP hook), links pinned; the caller owns the result.

        An attachment the earlier agent left there with a program of the same
        name is taken over as it is, or, with upgrade, given `prog` in one
        step. Raises BpfError (NotSupportedError for tcx on a kernel without it).
        """
        where = "xdp" if hook is None else hook.value
        for old in self.adopted:
            if (old.ifindex, old.hook) == (ifindex, where) and old.program == prog.name[: len(old.program)]:
                self.adopted.remove(old)
                if self.upgrade:
                    old.replace(prog)
                log.info("%s %s", "upgraded" if self.upgrade else "adopted", old.describe())
                return old
        att = tc.attach_xdp(prog, ifname, ifindex) if hook is None else tc.attach(
            prog, ifname, ifindex, hook, self.mode, self.first, self.priority if priority is None else priority
        )
        tc.pin_link(att, self.pin_dir / "links")
        log.info("attached %s", att.describe())
        return att

    def _attach(self, prog: Any, ifname: str, ifindex: int, hook: tc.Direction | None,
                priority: int | None = None) -> tc.Adopted:
        att = self.place(prog, ifname, ifindex, hook, priority)
        if isinstance(att, tc.Attachment):
            self.attachments.append(att)
            if att.owns_qdisc and ifname not in self.created_clsact:
                self.created_clsact.append(ifname)
                self._undo(tc.destroy_clsact, ifname, ifindex)
        self._undo(att.close)
        return att

    # --- PodHost: what the PodFollower asks of the agent ------------------------------------------
    def set_sources(self, ifindexes: dict[str, int]) -> None:
        """Make these the source interfaces: the next compile uses them, copies name them from now on."""
        with self.lock:
            self.source_ifindex = dict(ifindexes)
            self.tables.write_sources(list(ifindexes.values()))

    def attach_source(self, ifname: str, ifindex: int, hook: tc.Direction) -> tc.Attachment:
        """Attach the source program of `hook` to a pod's interface (the follower owns it). Raises BpftapError."""
        att = self.place(self.obj.program(agent_prog(hook)), ifname, ifindex, hook)
        assert isinstance(att, tc.Attachment)
        with self.lock:
            self.attachments.append(att)
        return att

    def detach_sources(self, attachments: list[tc.Attachment]) -> None:
        """Forget and close attachments the follower made."""
        with self.lock:
            self.attachments[:] = [a for a in self.attachments if a not in attachments]
        for att in attachments:
            att.close()

    def attach_inside(self, netns: str, host_ifindex: int, ingress: bool, egress: bool) -> inside.InsidePod:
        """Attach inside a pod (bpftap.agent.inside); the follower owns the result."""
        return inside.attach(self, netns, host_ifindex, ingress, egress)

    def reapply(self) -> None:
        """Apply the live config against the current sources; record the state even if that raises BpftapError."""
        try:
            self.apply(self.config)
        finally:
            self._record()

    def _sync_links(self, config: Config) -> None:
        """Follow the links of `config`: each matching device gets a bucket and mirror_link on its egress."""
        wanted = resolve_links(config.links, self.ipr, self.unknown_capacity)
        self.governor.set_links(list(wanted.values()))
        self.tables.links = set(wanted)
        for ifindex, link in wanted.items():
            if ifindex not in self.link_attachments:
                # after the source programs on a shared hook (clsact: one priority further on)
                self.link_attachments[ifindex] = self._attach(
                    self.obj.program(abi.PROG_LINK), link.name, ifindex, tc.Direction.EGRESS, self.priority + 1)
                log.info("link %s: capacity %s bit/s, headroom %g %%: copies get what originals leave",
                         link.name, f"{link.capacity:,}", link.headroom)
        for ifindex in set(self.link_attachments) - set(wanted):
            att = self.link_attachments.pop(ifindex)
            att.close()
            if att in self.attachments:
                self.attachments.remove(att)
            log.info("detached %s (no longer a listed link)", att.describe())

    def _record(self) -> None:
        ifnames = sorted({a.ifname for a in self.attachments})
        state.AgentState(os.getpid(), list(self.created_clsact), ifnames, self.tables.bookkeeping()).write()

    def _resolve_sources(self) -> dict[tuple[str, int], Direction]:
        """Interfaces to attach to, with the union of directions asked for each."""
        found: dict[tuple[str, int], Direction] = {}
        egress_devs = set()
        for i, src in enumerate(self.config.sources):
            if src.pods is not None:
                continue  # self.pods attaches to these, as pods come and go
            matched = match_interfaces([src.interface], self.ipr)
            if not matched:
                raise ConfigError(
                    f"{self.config.path}: sources[{i}].interface: '{src.interface}' matches no interface here"
                )
            for name, index in matched.items():
                found[(name, index)] = found.get((name, index), Direction(0)) | src.direction
        for sess in self.config.sessions:
            with suppress(ResolveError):
                egress_devs.add(resolve(sess.remote, self.ipr).ifname)
        for name, _ in found:
            if name in egress_devs:
                log.warning(
                    "%s is both a source and the way to a collector: its copies are marked and not mirrored again, "
                    "but a capture on %s will show them",
                    name,
                    name,
                )
        return found

    def stop(self) -> None:
        """Detach everything this agent attached and remove what it created, pins too (idempotent).

        With `keep` set, leave it all attached and pinned: the next agent adopts it.
        """
        self.stack.close()
        self.attachments.clear()
        self.ipr.close()
        self.watch.close()

    # --- rule sets and sessions -------------------------------------------------------------
    def compile(self, config: Config) -> tuple[dict[str, int], CompiledRules]:
        """Session slots and the compiled rules of `config`, against the attached sources (pure)."""
        slots = assign_session_slots(config.sessions)
        return slots, compile_rules(config, slots, self.source_ifindex)

    def apply(self, config: Config, compiled: tuple[dict[str, int], CompiledRules] | None = None) -> None:
        """Compile `config` (unless `compiled` is given) and make it live in one step.

        The inactive rule slot is filled, then flipped. Raises BpftapError if
        the rule set needs more classifier classes than this run's maps hold
        (the running rules then stay).
        """
        slots, rules = compiled or self.compile(config)
        collectors = {
            member_name(s, m): SessionState(slots[s.name], s, m) for s in config.sessions for m in range(len(s.members))
        }
        plan = Plan(config, slots, rules, collectors)
        with self.lock:
            self._sync_links(config)  # before the sessions: a session leaving by a listed link says so
            self._write_sessions(plan, force=True)
            self.active_slot = self.tables.write_rules(rules, self.encap_ifindex)
            self.tables.set_budget(*config.copy_budget)
            self.tables.set_redirect_chain(config.redirect_chain)
            self.plan, self.config = plan, config
            self._record()
        log.info(
            "rules applied: %d rules (%d classifier classes), %d sessions (slot %d)",
            len(rules.rules),
            len(rules.classes),
            len(config.sessions),
            self.active_slot,
        )

    def refresh_sessions(self) -> None:
        """Re-resolve every session's next hop when due (RouteWatch); write the ones that changed."""
        with self.lock:
            if self.plan is not None and self.watch.due(any(st.problem for st in self.plan.sessions.values())):
                self._write_sessions(self.plan, force=False)

    def _write_sessions(self, plan: Plan, force: bool) -> None:
        if force:
            for sess in plan.config.sessions:
                self.tables.write_buckets(plan.slots[sess.name], sess)
        for name, st in plan.sessions.items():
            try:
                hop: NextHop | None = resolve(st.remote, self.ipr)
                problem = ""
            except ResolveError as exc:
                hop, problem = None, str(exc)
            if not force and hop == st.nexthop and problem == st.problem:
                continue
            if problem and problem != st.problem:
                log.warning("session %s: %s; its copies are counted as unresolved", name, problem)
            elif hop is not None and hop != st.nexthop:
                log.info("session %s: %s via %s (next hop %s, mtu %d)", name, st.remote, hop.ifname,
                         hop.dst_mac.hex(":"), hop.mtu)
            st.nexthop, st.problem = hop, problem
            # a full write stages the next rule slot's table; a refresh rewrites the live one
            self.tables.write_session(st.slot, st.session, hop, live=not force, member=st.member)

    # --- the kill switch ----------------------------------------------------------------
    def pause(self) -> dict[str, Any]:
        """Stop all copying at once, attachments and maps untouched; originals flow as before."""
        with self.lock:
            self.tables.set_paused(True)
        log.warning("paused: no copies until 'bpftap resume'")
        return self.status()

    def resume(self) -> dict[str, Any]:
        """Copy again after pause()."""
        with self.lock:
            self.tables.set_paused(False)
        log.info("resumed")
        return self.status()

    # --- reporting ------------------------------------------------------------------------
    def queue_drops(self) -> dict[str, int]:
        """Copies the internal pair's rings dropped (the kernel's tx drop counts of the sending ends).

        `encap`: stage 1's clones that found bpftap1's ring full; `fragment`:
        the fragment clones that found bpftap0's full (fragment.bpf.h).
        """
        drops = tx_dropped((INTERNAL_A, INTERNAL_B))
        return {"encap": drops[INTERNAL_A], "fragment": drops[INTERNAL_B]}

    def status(self) -> dict[str, Any]:
        """Attachments, and per-rule, per-session and global counters, as JSON-able data."""
        with self.lock:
            plan = self.plan
            assert plan is not None
            rules = [
                {"number": r.number, "action": r.action.value, "sessions": list(r.sessions), "packets": rs.packets,
                 "bytes": rs.bytes}
                for r in plan.config.rules
                for rs in (self.tables.rule_stats(r.number),)
            ]
            sessions = []
            for name, st in plan.sessions.items():
                sess = st.session
                ss = self.tables.session_stats(name)
                sessions.append(
                    {
                        "name": name,
                        "tunnel": sess.tunnel,
                        "remote": str(st.remote),
                        # the tunnel's identifier: vni, key or session_id (None: a gre session without a key)
                        "id_field": TUNNEL_ID_FIELDS[sess.tunnel],
                        "id": getattr(sess, TUNNEL_ID_FIELDS[sess.tunnel]),
                        "via": st.nexthop.ifname if st.nexthop else None,
                        "problem": st.problem or None,
                        **{f[0]: getattr(ss, f[0]) for f in abi.SessionStats._fields_},
                    }
                )
            counters = self.tables.counters()
            return {
                "pid": os.getpid(),
                "config": str(plan.config.path),
                "paused": bool(self.tables.config().paused),
                "redirect_chain": not self.tables.config().ring_copies,
                "attachments": [a.describe() for a in self.attachments],
                "pins": str(self.pin_dir),
                "adopted": self.adoption,
                "rules": rules,
                "sessions": sessions,
                "counters": counters,
                "queue_drops": self.queue_drops(),
                "links": self.governor.status(),
            }
