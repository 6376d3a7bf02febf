"""Capability probes shared by tests."""

from __future__ import annotations

import socket


def has_ipv6_loopback() -> bool:
    """True if this namespace can bind ::1 (IPv6 present and lo up)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
