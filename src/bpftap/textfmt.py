"""Plain-text tables and sizes for `bpftap status` and `bpftap top`: columns as wide as their content."""

from __future__ import annotations

from collections.abc import Sequence


def size(n: int, raw: bool = False) -> str:
    """A byte count with an IEC unit (0 B, 999 B, 1.2 KiB, 3.4 GiB); `raw`: the plain number."""
    if raw:
        return str(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = (),
          indent: str = "") -> list[str]:
    """`header` and `rows` as lines, each column as wide as its widest cell; columns in `right` align right.

    The last column is not padded (it holds free text: session lists, reasons).
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        parts[-1] = row[-1]
        lines.append((indent + " ".join(parts)).rstrip())
    return lines
