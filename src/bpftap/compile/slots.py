"""Session slots: where each session sits in the `sessions` map and in a rule's session mask (pure, no kernel)."""

from __future__ import annotations

from collections.abc import Sequence

from bpftap import abi
from bpftap.config.model import Session
from bpftap.tunnels.outer import header_len


def session_header_len(session: Session) -> int:
    """Bytes of outer headers `session`'s copies gain, outer Ethernet included (its `hdr_len`)."""
    return header_len(session.tunnel, session.remote.version, key=session.gre_key, seq=session.gre_seq,
                      platform=session.erspan_platform)


def assign_session_slots(sessions: Sequence[Session]) -> dict[str, int]:
    """Give each session a slot (its key in the `sessions` map and its bit in rules).

    Slots go by ascending outer header length (session_header_len), in
    config order among equal lengths: the encap program walks a rule's
    sessions in slot order and may only grow the packet's head between
    copies, never shrink it (that would cut the inner frame). A collector
    group takes one slot per member, from its own slot on (all members
    share the header length).

    Raises ValueError if the members need more than abi.MAX_SESSIONS slots
    or a name repeats; a validated Config has neither.
    """
    slots: dict[str, int] = {}
    nxt = 0
    for session in sorted(sessions, key=session_header_len):
        if session.name in slots:
            raise ValueError("session names repeat")
        slots[session.name] = nxt
        nxt += len(session.members)
    if nxt > abi.MAX_SESSIONS:
        raise ValueError(f"{nxt} collectors in sessions; at most {abi.MAX_SESSIONS} fit")
    return slots
