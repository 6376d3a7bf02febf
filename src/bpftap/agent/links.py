"""Links (config `links:`): copies use only the room originals leave on a shared egress link.

Each listed link has a token bucket in the kernel (`link_state`). mirror_link,
on the link's egress, takes every original's bytes from it as the original
leaves (never refusing one); stage 2 admits a copy for the link only while
the bucket holds it, down to the priority's reserve. So copies get what the
originals leave, packet by packet, with no delay to measure.

What this thread does, every TICK seconds, is set the bucket's fill rate:

    fill = capacity x (1 - headroom) x factor

`factor` is 1 while the link's queue is calm. Where the link has a queue
the agent can see (its root qdisc: drops and backlog, through netlink), a
new drop, or a backlog over BACKLOG_SECONDS of the link's capacity, halves
it at once; it grows back by STEP a tick, from nothing to whole in about a
second. It cannot see a limit it is not told of (a cloud instance's, in
the hypervisor): that is what `capacity` is for. The rates it reports (of
originals and of copies, over the last WINDOW seconds) come from the
bucket's own counters.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from bpftap import abi
from bpftap.bpf.objects import Map
from bpftap.config import Link
from bpftap.netlink import match_interfaces

log = logging.getLogger("bpftap.agent")

TICK = 0.05
STEP = TICK  # factor growth per tick: 0 to 1 in a second
MIN_FACTOR = 1 / 64
BACKLOG_SECONDS = 0.005
WINDOW = 1.0


@dataclass
class LinkState:
    """One listed link as the governor follows it."""

    name: str
    ifindex: int
    capacity: int  # bits per second
    headroom: float  # percent
    factor: float = 1.0
    fill: int = 0  # the bucket's fill rate now, bits per second
    drops: int | None = None  # the root qdisc's drops at the last tick (None: no qdisc seen)
    cuts: int = 0  # times the queue halved the factor
    failing: bool = False  # the last tick could not read it (logged once)
    samples: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=int(WINDOW / TICK) + 1))
    counters: abi.LinkState = field(default_factory=abi.LinkState)

    def rates(self) -> tuple[float, float]:
        """Originals' and copies' bits per second over the window."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, o0, c0), (t1, o1, c1) = self.samples[0], self.samples[-1]
        dt = max(t1 - t0, 1e-6)
        return (o1 - o0) * 8 / dt, (c1 - c0) * 8 / dt

    def to_json(self) -> dict[str, Any]:
        originals, copies = self.rates()
        c = self.counters
        return {
            "name": self.name,
            "capacity": self.capacity,
            "headroom_pct": self.headroom,
            "originals_bps": round(originals),
            "copies_bps": round(copies),
            "fill_bps": self.fill,
            "factor": round(self.factor, 3),
            "queue_cuts": self.cuts,
            "copies": c.copies,
            "copy_bytes": c.bytes,
            "shed": c.shed,
            "original_bytes": c.orig_bytes,
        }


def link_speed(name: str) -> int:
    """The device's speed as its driver reports it, bits per second; 0 if it reports none."""
    try:
        mbit = int(Path(f"/sys/class/net/{name}/speed").read_text())
    except (OSError, ValueError):
        return 0
    return mbit * 1_000_000 if mbit > 0 else 0


def resolve_links(specs: Sequence[Link], ipr: IPRoute, named: set[str]) -> dict[int, LinkState]:
    """The devices `specs` name here, by ifindex (the first entry naming one wins).

    A pattern that matches nothing is logged; so is, once (its name goes
    into `named`), a device without a capacity: its copies are not limited.
    """
    wanted: dict[int, LinkState] = {}
    for i, spec in enumerate(specs):
        matched = match_interfaces([spec.interface], ipr)
        if not matched:
            log.warning("links[%d]: no interface matches %r; copies leaving elsewhere are not limited",
                        i, spec.interface)
        for name, ifindex in sorted(matched.items()):
            if ifindex in wanted:
                continue
            capacity = spec.capacity or link_speed(name)
            if not capacity:
                if name not in named:
                    named.add(name)
                    log.warning("link %s: its driver reports no speed, so its copies are not limited; "
                                "set its capacity in links[%d], e.g. capacity: 10G", name, i)
                continue
            wanted[ifindex] = LinkState(name, ifindex, capacity, spec.headroom)
    return wanted


class LinkGovernor:
    """Sets each listed link's bucket rate from its queue, every TICK, on a thread of its own."""

    def __init__(self, rates: Map, state: Map) -> None:
        self.rates, self.state = rates, state
        self.links: dict[int, LinkState] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # set_links or close: the thread sleeps on it while no link is listed
        self.thread: threading.Thread | None = None

    def set_links(self, links: list[LinkState]) -> None:
        """Follow exactly `links` from now on: new ones get a bucket (empty, filling), gone ones lose theirs."""
        with self.lock:
            new = {link.ifindex: link for link in links}
            for ifindex in set(self.links) - set(new):
                self._delete(ifindex)
            for ifindex, link in new.items():
                old = self.links.get(ifindex)
                if old is not None:  # keep what was learnt about it
                    link.factor, link.drops, link.samples, link.cuts = old.factor, old.drops, old.samples, old.cuts
                    link.counters, link.failing = old.counters, old.failing
                else:
                    self.state.update(ifindex, abi.LinkState())
                self._set_fill(link)
            self.links = new
        self.wake.set()

    def start(self) -> None:
        """Follow the links' queues from now on (until close)."""
        self.thread = threading.Thread(target=self._run, name="bpftap-links", daemon=True)
        self.thread.start()

    def _delete(self, ifindex: int) -> None:
        key = ctypes.c_uint32(ifindex)
        self.rates.delete_key(key)
        self.state.delete_key(key)

    def _set_fill(self, link: LinkState) -> None:
        link.fill = int(link.capacity * (1 - link.headroom / 100) * link.factor)
        self.rates.update(link.ifindex, abi.LinkRate(link.fill))

    def status(self) -> list[dict[str, Any]]:
        with self.lock:
            return [link.to_json() for link in self.links.values()]

    def close(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(5)
        with self.lock:
            for ifindex in list(self.links):
                self._delete(ifindex)
            self.links = {}

    def _run(self) -> None:
        with IPRoute() as ipr:
            while not self.stop_event.is_set():
                self.wake.wait(TICK if self.links else None)  # (no wake-up 20 times a second for nothing)
                self.wake.clear()
                with self.lock:
                    for link in self.links.values():
                        try:
                            self.tick(link, ipr)
                        except Exception as exc:  # noqa: BLE001 - a vanished device, a netlink error: try again
                            if not link.failing:
                                log.warning("link %s: cannot read its counters or queue (%s); its copy budget "
                                            "stays at %d bit/s until it can", link.name, exc, link.fill)
                            link.failing = True
                        else:
                            if link.failing:
                                log.info("link %s: counters and queue readable again", link.name)
                            link.failing = False

    def tick(self, link: LinkState, ipr: IPRoute) -> None:
        """Read the link's counters and queue; set its bucket's fill rate."""
        link.counters = self.state.lookup(link.ifindex, abi.LinkState)
        link.samples.append((time.monotonic(), link.counters.orig_bytes, link.counters.bytes))
        drops, backlog = root_queue(ipr, link.ifindex)
        congested = (drops is not None and link.drops is not None and drops > link.drops) or \
            backlog * 8 > link.capacity * BACKLOG_SECONDS
        link.drops = drops
        if congested:
            link.factor = max(link.factor / 2, MIN_FACTOR)
            link.cuts += 1
        else:
            link.factor = min(1.0, link.factor + STEP)
        self._set_fill(link)


def root_queue(ipr: IPRoute, ifindex: int) -> tuple[int | None, int]:
    """The root qdisc's (drops, backlog bytes) of a device; (None, 0) where it has none (noqueue)."""
    for msg in ipr.get_qdiscs(index=ifindex):
        if msg["parent"] != 0xFFFFFFFF:
            continue
        stats = msg.get_attr("TCA_STATS2")
        queue = stats.get_attr("TCA_STATS_QUEUE") if stats is not None else None
        if queue is None:
            return None, 0
        return int(queue["drops"]), int(queue["backlog"])
    return None, 0
