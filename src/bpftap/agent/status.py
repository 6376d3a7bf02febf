"""`bpftap status` transport: the agent answers JSON on an abstract unix socket.

Abstract sockets belong to a network namespace, not to a filesystem, so the
agent and `bpftap status` find each other under `ip netns exec` even though
each such command sees its own mounts, and agents in different namespaces
never see each other.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from bpftap.errors import BpftapError

log = logging.getLogger("bpftap.status")

ADDRESS = "\0bpftap.status"


class StatusServer(threading.Thread):
    """Answers one command per connection: the client sends a word and a newline, gets one JSON document.

    `commands` maps each word ("status", "pause", ...) to what answers it.
    """

    def __init__(self, commands: dict[str, Callable[[], dict[str, Any]]]) -> None:
        super().__init__(name="status", daemon=True)
        self.commands = commands
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(ADDRESS)
        except OSError as exc:
            self.sock.close()
            raise BpftapError(f"status socket: {exc}; is another agent running in this namespace?") from exc
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.closing = threading.Event()

    def run(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                try:
                    conn.settimeout(1.0)
                    word = conn.recv(64).decode(errors="replace").strip() or "status"
                    answer = self.commands.get(word)
                    reply = answer() if answer else {"error": f"unknown command {word!r}"}
                    conn.sendall(json.dumps(reply).encode())
                except OSError as exc:
                    log.debug("status client went away: %s", exc)

    def close(self) -> None:
        self.closing.set()
        self.sock.close()
        if self.ident is not None:  # started
            self.join(timeout=2)


def query_status(timeout: float = 3.0, command: str = "status") -> dict[str, Any]:
    """Send `command` to the running agent and return its answer (by default its status).

    Raises BpftapError if no agent runs in this network namespace, or it
    does not know the command.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(ADDRESS)
        except OSError as exc:
            raise BpftapError("no bpftap agent runs in this network namespace (start one with 'bpftap run')") from exc
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data: dict[str, Any] = json.loads(b"".join(chunks))
    if "error" in data:
        raise BpftapError(f"the agent refused {command!r}: {data['error']}")
    return data
