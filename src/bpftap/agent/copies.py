"""The sender of copies when `redirect_chain` is off: no packet is redirected twice.

Stage 2 then writes each finished copy (outer headers included, the bytes the
egress device would have sent) into the `copies` ring buffer as a `struct
mirror_copy`, and this thread sends it from an AF_PACKET socket on the egress
device. The socket marks what it sends MIRROR_COPY_MARK, so a copy leaving
through a source interface is not mirrored again. A full ring buffer is
counted by the kernel (`ring_full`); a send the kernel refuses is counted here
and logged every REPORT_SECONDS.
"""

from __future__ import annotations

import ctypes
import logging
import socket

from bpftap import abi
from bpftap.agent.kernel_log import RingReader
from bpftap.bpf.objects import Map

log = logging.getLogger("bpftap.copies")


class CopySender(RingReader):
    """Reads `copies` until close() and sends each copy on its egress device."""

    def __init__(self, copies: Map) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, abi.MIRROR_COPY_MARK)
            super().__init__(copies, "copies")
        except BaseException:
            self.sock.close()
            raise
        self.sent = 0
        self.failed = 0
        self._errors: dict[str, int] = {}
        self._names: dict[int, str] = {}

    def _sample(self, data: int, size: int) -> int:
        ifindex, length = (ctypes.c_uint32 * 2).from_address(data)
        if length + abi.COPY_HDR_LEN > size:
            self._failed(f"a {size}-byte record for a {length}-byte copy (object from another build?)")
            return 0
        frame = ctypes.string_at(data + abi.COPY_HDR_LEN, length)
        try:
            name = self._names.get(ifindex) or self._names.setdefault(ifindex, socket.if_indextoname(ifindex))
            self.sock.sendto(frame, (name, 0))
        except OSError as exc:
            self._names.pop(ifindex, None)  # the device may be gone or renamed
            self._failed(f"ifindex {ifindex}: {exc.strerror or exc}")
        else:
            self.sent += 1
        return 0

    def _failed(self, why: str) -> None:
        self.failed += 1
        self._errors[why] = self._errors.get(why, 0) + 1

    def report(self) -> None:
        """Log the copies the kernel refused to send since the last report."""
        errors, self._errors = self._errors, {}
        for why, n in errors.items():
            log.warning("copies: %d not sent: %s", n, why, extra={"fields": {"not_sent": n}})

    def close(self) -> None:
        """Stop, send what is left, report, free the ring buffer and the socket."""
        super().close()
        self.sock.close()
