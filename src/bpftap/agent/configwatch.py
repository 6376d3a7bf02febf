"""Notice a changed config file, so the agent reloads it as on SIGHUP (a Kubernetes ConfigMap update).

A ConfigMap volume is updated by swapping a symlink (`..data`) to a new
directory: the file's path stays, but what it resolves to changes. So the
watch compares what `os.stat` (which follows links) reports: device, inode,
size and mtime. A file edited in place changes its mtime or size, and one
replaced by rename changes its inode: both count.
"""

from __future__ import annotations

import os


class ConfigWatch:
    """Remembers a file's identity; `changed()` says whether it differs since the last call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.last = self._identity()

    def _identity(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # mid-swap or removed: not a change yet; the next look decides
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        """True once after the file changed; a missing file is not a change (never raises)."""
        now = self._identity()
        if now is None or now == self.last:
            return False
        self.last = now
        return True
