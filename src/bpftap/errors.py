"""Error types: every error names the operation, the object and the errno."""

from __future__ import annotations

import errno as _errno
import os


class BpftapError(Exception):
    """Base of bpftap's own errors; the CLI turns them into a message and an exit code."""


class ConfigError(BpftapError):
    """The user's configuration is wrong; the message names file, entry and field."""


class BpfError(BpftapError):
    """A kernel call failed: `attach tc ingress on eth0: File exists (EEXIST)`."""

    def __init__(self, op: str, target: str = "", errno: int = 0, hint: str = "") -> None:
        self.op, self.target, self.errno, self.hint = op, target, abs(errno), hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" on {self.target}" if self.target else ""
        name = _errno.errorcode.get(self.errno, str(self.errno))
        text = f"{self.op}{where}: {os.strerror(self.errno)} ({name})"
        return f"{text}; {self.hint}" if self.hint else text


class NotSupportedError(BpfError):
    """The kernel lacks a feature (tcx, a helper, a map type)."""
