"""Sequence numbers of tunnelled copies (GRE, ERSPAN, bpftap's GENEVE option), followed per sender and session.

A jump forward counts the copies between as lost; one of those arriving
after all moves from lost to reordered. A repeat is another segment of one
GSO copy (they share its header, and its number) and counts as neither. A
session that starts again at 1 (the agent restarted) starts a new count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQ_HALF = 1 << 31
SEQ_MISSING_MAX = 4096  # sequence numbers still missing, remembered per session


@dataclass
class _Track:
    """One session's sequence as received: the highest number, and those skipped that may still come."""

    last: int
    missing: dict[int, None] = field(default_factory=dict)  # an ordered set, oldest first


class SequenceFollower:
    """Counts into `lost` and `reordered` (session label -> copies), the collector's own stats dicts."""

    def __init__(self, lost: dict[str, int], reordered: dict[str, int]) -> None:
        self.lost, self.reordered = lost, reordered
        self._tracks: dict[tuple[str, str], _Track] = {}  # (sender, session label) -> its sequence so far

    def follow(self, sender: str, label: str, seq: int) -> None:
        """Take the number `seq` of a copy from `sender` for session `label`.

        The numbers still missing are remembered up to SEQ_MISSING_MAX per
        session, the oldest forgotten first (they stay lost).
        """
        key = (sender, label)
        track = self._tracks.get(key)
        if track is None or (seq == 1 and track.last != 1):
            self._tracks[key] = _Track(seq)  # the first, or the agent started again
            return
        step = (seq - track.last) & 0xFFFFFFFF
        if step == 0:
            return
        if step < SEQ_HALF:
            for n in range(track.last + 1, track.last + min(step, SEQ_MISSING_MAX + 1)):
                track.missing[n & 0xFFFFFFFF] = None
            while len(track.missing) > SEQ_MISSING_MAX:
                del track.missing[next(iter(track.missing))]
            if step > 1:
                self.lost[label] = self.lost.get(label, 0) + step - 1
            track.last = seq
        elif seq in track.missing:
            del track.missing[seq]
            self.lost[label] -= 1
            if not self.lost[label]:
                del self.lost[label]
            self.reordered[label] = self.reordered.get(label, 0) + 1
