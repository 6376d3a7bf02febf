"""What a running agent owns in its network namespace, kept on disk so a restart after SIGKILL can clean up.

One JSON file per network namespace (keyed by the namespace's inode, since
`ip netns exec` shares /run with the host): the agent's pid, the clsact
qdiscs it created, the interfaces it attached to, and the counter ids of its
rules and sessions (for the next agent that adopts its pinned maps).
Unpinned tcx links die with the process; clsact filters, qdiscs, the
internal veth pair and pins do not.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bpftap.errors import BpftapError

log = logging.getLogger("bpftap.state")

STATE_DIR = Path(os.environ.get("BPFTAP_STATE_DIR", "/run/bpftap"))


def netns_id() -> int:
    """The inode of this process's network namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (and is not a zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class AgentState:
    """The record of one agent in one namespace."""

    pid: int
    created_clsact: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    tables: dict[str, Any] | None = None  # Tables.bookkeeping()

    @staticmethod
    def path(ino: int | None = None) -> Path:
        return STATE_DIR / f"netns-{netns_id() if ino is None else ino}.json"

    @classmethod
    def read(cls, ino: int | None = None) -> AgentState | None:
        """The recorded state of this namespace (or of the one with inode `ino`), None if none or unreadable."""
        try:
            data = json.loads(cls.path(ino).read_text())
            return cls(int(data["pid"]), list(data.get("created_clsact", [])), list(data.get("interfaces", [])),
                       data.get("tables"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", cls.path(ino), exc)
            return None

    def write(self) -> None:
        """Save atomically (write then rename)."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path())

    @classmethod
    def remove(cls, ino: int | None = None) -> None:
        cls.path(ino).unlink(missing_ok=True)


def recorded_namespaces() -> list[int]:
    """Inodes of the network namespaces that have a state file."""
    if not STATE_DIR.is_dir():
        return []
    names = (p.name[6:-5] for p in STATE_DIR.glob("netns-*.json"))
    return sorted(int(n) for n in names if n.isdigit())


def netns_path(ino: int) -> str | None:
    """A path that opens the network namespace with inode `ino`: a name in /run/netns, or a process's; None if gone."""
    candidates = sorted(Path("/run/netns").glob("*")) if Path("/run/netns").is_dir() else []
    candidates += [p / "ns" / "net" for p in Path("/proc").iterdir() if p.name.isdigit()]
    for path in candidates:
        try:
            if path.stat().st_ino == ino:
                return str(path)
        except OSError:
            continue  # a process that ended, or a name being deleted
    return None


def claim() -> AgentState | None:
    """Claim this namespace for the current process.

    Returns the state a dead agent left (to be cleaned up), or None.
    Raises BpftapError if a live agent owns the namespace.
    """
    old = AgentState.read()
    if old is not None and old.pid != os.getpid() and pid_alive(old.pid):
        raise BpftapError(
            f"another bpftap agent (pid {old.pid}) runs in this network namespace; "
            "stop it first, or run 'bpftap detach' if it is stuck"
        )
    # what it recorded stays until this agent records its own (a failed start keeps it for the next)
    AgentState(os.getpid(), *((old.created_clsact, old.interfaces, old.tables) if old else ())).write()
    return old
