"""`ExitStatus`: the exit codes of every bpftap command (bpftap, bpftap-collect), defined once."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes of every bpftap command."""

    OK = 0
    ERROR = 1
    USAGE = 2  # bad arguments or a bad config file: the user's input
    NOT_SUPPORTED = 3
    INTERRUPTED = 130
