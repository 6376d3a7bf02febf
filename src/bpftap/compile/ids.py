"""Small ids that stay put across reloads: counter keys of rules and sessions, and source interface ids (pure).

The agent keeps these and writes them into maps (bpftap.agent.tables); a
rule, session or interface that stays keeps its id, so its counters and
sequence numbers carry on; one that goes frees its id for the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from bpftap import abi
from bpftap.errors import BpftapError

K = TypeVar("K")


class StableIds(Generic[K]):
    """Stable small ids for things that come and go across reloads (counter keys)."""

    def __init__(self, limit: int) -> None:
        self.ids: dict[K, int] = {}
        self.free: list[int] = []
        self.limit = limit

    def get(self, key: K) -> tuple[int, bool]:
        """The id of `key`, and whether it is new (its counters must be zeroed).

        Raises BpftapError when all `limit` ids are in use.
        """
        found = self.ids.get(key)
        if found is not None:
            return found, False
        found = self.free.pop() if self.free else len(self.ids)
        if found >= self.limit:
            raise BpftapError(f"more than {self.limit} counter ids in use; restart bpftap")
        self.ids[key] = found
        return found, True

    def restore(self, ids: dict[K, int]) -> None:
        """Take over ids given out by an earlier agent; the unused ones below the highest are free."""
        self.ids = dict(ids)
        self.free = sorted(set(range(max(ids.values(), default=-1) + 1)) - set(ids.values()), reverse=True)

    def keep_only(self, live: set[K]) -> None:
        """Free the ids of everything not in `live`."""
        for key in [k for k in self.ids if k not in live]:
            self.free.append(self.ids.pop(key))


def source_ids(ifindexes: Sequence[int], current: Mapping[int, int]) -> dict[int, int]:
    """Ids of source interfaces (ifindex -> id), keeping those in `current` for interfaces that stay.

    Ids run from 1, new interfaces taking the lowest free ones in the order
    given, up to abi.MAX_SOURCES - 1; later interfaces get none (their
    copies say "unknown").
    """
    keep = [i for i in ifindexes if i in current]
    free = sorted(set(range(1, abi.MAX_SOURCES)) - {current[i] for i in keep})
    ids = {i: current[i] for i in keep}
    for ifindex in ifindexes:
        if ifindex not in ids and free:
            ids[ifindex] = free.pop(0)
    return ids
