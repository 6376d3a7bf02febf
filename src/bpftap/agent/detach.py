"""What bpftap leaves behind, removed: after a dead agent in this namespace, or everywhere (`bpftap detach`).

Only bpftap's own things go: its pins (and with them its tcx and XDP
links), its clsact filters (by handle and program name), the clsact qdiscs
it created and its internal pair.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute
from pyroute2.netns import setns

from bpftap.agent import inside, state
from bpftap.bpf import pins, tc
from bpftap.errors import BpftapError
from bpftap.netlink import INTERNAL_A, INTERNAL_B, delete_internal_pair
from bpftap.netlink import links as netlink_links

log = logging.getLogger("bpftap.agent")


def cleanup_leftovers(old: state.AgentState | None, ipr: IPRoute) -> list[str]:
    """Remove what a dead agent left in this namespace: its filters, qdiscs and internal pair."""
    done = []
    links = netlink_links(ipr)
    names = set(old.interfaces if old else []) | set(links)
    for name in sorted(names):
        if name in links and tc.remove_stale_filters(name, links[name]):
            done.append(f"removed bpftap filters on {name}")
    for name in old.created_clsact if old else []:
        if name in links and not any(tc.tc_filters(name, d) for d in tc.Direction):
            tc.destroy_clsact(name, links[name])
            done.append(f"removed the clsact qdisc bpftap had created on {name}")
    if INTERNAL_A in links:
        delete_internal_pair(INTERNAL_A, ipr)
        done.append(f"removed the internal pair {INTERNAL_A}/{INTERNAL_B}")
    done += inside.prune([])
    for line in done:
        log.info("%s", line)
    return done


@contextmanager
def _in_netns(path: str) -> Iterator[None]:
    """Run the block in the network namespace at `path` (this thread), then come back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        setns(path, flags=0)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def detach_everywhere() -> list[str]:
    """`bpftap detach`: remove what bpftap left in every network namespace, and nothing else.

    Each namespace with pins or a state file (and this one) loses bpftap's
    pins (and with them its tcx and XDP links), its clsact filters and the
    qdiscs it created, and its internal pair. Returns what was done, one
    line each. Raises BpftapError naming the agents still running (their
    namespaces are left alone; they detach themselves on SIGTERM).
    """
    done, running = [], []
    for ino in sorted({state.netns_id(), *pins.pinned_namespaces(), *state.recorded_namespaces()}):
        old = state.AgentState.read(ino)
        if old is not None and old.pid != os.getpid() and state.pid_alive(old.pid):
            running.append(old.pid)
            continue
        path = state.netns_path(ino)
        lines = []
        if path is not None:
            with _in_netns(path), IPRoute() as ipr:
                lines = cleanup_leftovers(old, ipr)
        if pins.netns_dir(ino).exists():
            pins.remove(pins.netns_dir(ino))
            lines.append(f"removed the pins at {pins.netns_dir(ino)} (its links with them)")
        state.AgentState.remove(ino)
        done += [f"netns {ino} ({path or 'gone'}): {line}" for line in lines]
    if running:
        pids = ", ".join(map(str, running))
        raise BpftapError(
            "\n".join([*done, f"agent pid {pids} is running; stop it with SIGTERM (kill {pids}), it detaches itself"])
        )
    return done
