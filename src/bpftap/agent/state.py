"""What a running agent owns in its network namespace, kept on disk so a restart after SIGKILL can clean up.

One JSON file per network namespace (keyed by the namespace's inode, since
`ip netns exec` shares /run with the host): the agent's pid, the clsact
qdiscs it created and the interfaces it attached to. tcx links die with the
process; clsact filters, qdiscs and the internal veth pair do not.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    @staticmethod
    def path() -> Path:
        return STATE_DIR / f"netns-{netns_id()}.json"

    @classmethod
    def read(cls) -> AgentState | None:
        """The recorded state of this namespace, None if there is none (or it is unreadable)."""
        try:
            data = json.loads(cls.path().read_text())
            return cls(int(data["pid"]), list(data.get("created_clsact", [])), list(data.get("interfaces", [])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", cls.path(), exc)
            return None

    def write(self) -> None:
        """Save atomically (write then rename)."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(self.path())

    @classmethod
    def remove(cls) -> None:
        cls.path().unlink(missing_ok=True)


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
    AgentState(os.getpid()).write()
    return old
