"""``bpftap top``: the running agent's rules and sessions with packet and byte rates, redrawn in the terminal.

It asks the agent of the current network namespace for its status over the
status socket (`bpftap.agent.status`) every ``--interval`` seconds and shows,
per rule and per session, the counters and their rates since the previous
sample. On a terminal it redraws with plain ANSI escapes on the alternate
screen and reads single keys (q quits; Ctrl-C too); ``--once`` prints one
sample pair as plain text, for scripts. ``register(subparsers)`` adds the
subcommand to the main CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from bpftap import abi
from bpftap.agent.status import query_status
from bpftap.textfmt import size, table

EXAMPLES = """\
examples:
  bpftap top                      rates every second until q or Ctrl-C
  bpftap top --interval 5         rates over 5 s windows
  bpftap top --once               one plain-text sample after --interval seconds, for scripts
  ip netns exec NS bpftap top     the agent of another network namespace

exit status:
  0 quit with q or Ctrl-C (or --once done); 1 no agent runs in this
  network namespace, or it went away.
"""

# ANSI: alternate screen on/off, cursor hidden/shown, home + clear
ENTER, LEAVE, CLEAR = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l", "\x1b[H\x1b[2J"
Status = dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One status answer and when (monotonic seconds) it was taken."""

    at: float
    data: Status


def human(value: float, unit: str) -> str:
    """`value` with an SI prefix: 950 B/s, 12.3 kB/s, 1.5 MB/s."""
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000 or prefix == "G":
            return f"{value:.0f} {prefix}{unit}" if not prefix else f"{value:.1f} {prefix}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def link_lines(links: list[dict[str, Any]]) -> list[str]:
    """config links: one line each, as `bpftap status` reports them (rates over the last second)."""
    return [f"link {x['name']}: capacity {human(x['capacity'], 'bit/s')}, "
            f"originals {human(x['originals_bps'], 'bit/s')}, "
            f"copies {human(x['copies_bps'], 'bit/s')}, copy budget {human(x['fill_bps'], 'bit/s')}, "
            f"shed {x['shed']}" + (f", queue cut it {x['queue_cuts']} times" if x["queue_cuts"] else "")
            for x in links]


def _rate(cur: int, old: int | None, seconds: float) -> float | None:
    """Per-second rate; None without an earlier value. A counter that went down (reload: new rule slot) reads 0."""
    if old is None or seconds <= 0:
        return None
    return max(cur - old, 0) / seconds


def _fmt_rate(rate: float | None, unit: str) -> str:
    return "-" if rate is None else human(rate, unit)


def render(prev: Sample | None, cur: Sample, interval: float, raw_bytes: bool = False) -> list[str]:
    """The screen for `cur`, with rates against `prev` ('-' where there is no earlier value)."""
    data, dt = cur.data, (cur.at - prev.at if prev else 0.0)
    old_rules = {r["number"]: r for r in prev.data["rules"]} if prev else {}
    old_sessions = {s["name"]: s for s in prev.data["sessions"]} if prev else {}
    lines = [
        f"bpftap top (q quits) - agent pid {data['pid']}, every {interval:g} s, {data['config']}",
        f"attached: {len(data['attachments'])} hooks",
        "",
    ]
    rows: list[tuple[object, ...]] = []
    for r in data["rules"]:
        old = old_rules.get(r["number"], {})
        pps = _rate(r["packets"], old.get("packets"), dt)
        bps = _rate(r["bytes"], old.get("bytes"), dt)
        rows.append((r["number"], r["action"], _fmt_rate(pps, "p/s"), _fmt_rate(bps, "B/s"), r["packets"],
                     size(r["bytes"], raw_bytes), " " + (",".join(r["sessions"]) or "-")))
    lines += table(("RULE", "ACTION", "PKT/S", "BYTES/S", "PACKETS", "BYTES", " SESSIONS"), rows, right=(0, 2, 3, 4, 5))
    rows = []
    for s in data["sessions"]:
        old = old_sessions.get(s["name"], {})
        cps = _rate(s["packets"], old.get("packets"), dt)
        bps = _rate(s["bytes"], old.get("bytes"), dt)
        lost = ", ".join(f"{k} {s[k]}" for k in abi.SESSION_NOT_SENT if s.get(k)) or "0"
        where = f"{s['tunnel']} {s['remote']}" + (f" {s['id_field']} {s['id']}" if s.get("id") is not None else "")
        rows.append((s["name"], where, _fmt_rate(cps, "p/s"), _fmt_rate(bps, "B/s"), s["packets"],
                     size(s["bytes"], raw_bytes), " " + lost))
        if s.get("problem"):
            rows.append(("", "", "", "", "", "", f"! {s['problem']}"))
    lines += ["", *table(("SESSION", "REMOTE", "COPIES/S", "BYTES/S", "COPIES", "BYTES", " NOT SENT"), rows,
                         right=(2, 3, 4, 5))]
    counters = data["counters"]
    old_counters = prev.data["counters"] if prev else {}
    shown = [
        f"{k} {v} ({_fmt_rate(_rate(v, old_counters.get(k), dt), '/s')})" if k == "seen" else f"{k} {v}"
        for k, v in counters.items()
        if v or k == "seen"
    ]
    lines += ["", "counters: " + ", ".join(shown)]
    if data.get("links"):
        lines += ["", *link_lines(data["links"])]
    return lines


@contextlib.contextmanager
def _screen(out: TextIO, keys_from: TextIO) -> Iterator[Callable[[float], str]]:
    """Alternate screen and single-key input while inside; yields `wait(seconds) -> keys typed or ''`.

    Without a terminal on stdin, `wait` just sleeps. The terminal is put
    back however the block ends.
    """
    fd = keys_from.fileno() if keys_from.isatty() else -1
    saved = termios.tcgetattr(fd) if fd >= 0 else None

    def wait(seconds: float) -> str:
        if fd < 0:
            time.sleep(seconds)
            return ""
        if not select.select([fd], [], [], seconds)[0]:
            return ""
        typed = os.read(fd, 64)
        return typed.decode(errors="replace") if typed else "q"  # the terminal hung up: quit

    if saved is not None:
        tty.setcbreak(fd)
    out.write(ENTER)
    try:
        yield wait
    finally:
        out.write(LEAVE)
        out.flush()
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _size(out: TextIO) -> os.terminal_size:
    """The terminal's size now (the ioctl, not a stale $COLUMNS), else shutil's guess."""
    try:
        return os.get_terminal_size(out.fileno())
    except (OSError, ValueError):
        return shutil.get_terminal_size()


def run_top(args: argparse.Namespace) -> int:
    """Show the agent's rates until q or Ctrl-C (or once, with --once).

    Raises BpftapError if no agent answers in this network namespace, at
    start or later (the screen is restored first).
    """
    out = sys.stdout
    first = Sample(time.monotonic(), query_status())
    if args.once:
        time.sleep(args.interval)
        out.write("\n".join(render(first, Sample(time.monotonic(), query_status()), args.interval, args.bytes)) + "\n")
        return 0
    prev: Sample | None = None
    cur = first
    try:
        with _screen(out, sys.stdin) as wait:
            while True:
                width, height = _size(out)
                lines = [line[:width] for line in render(prev, cur, args.interval, args.bytes)[: max(height - 1, 1)]]
                out.write(CLEAR + "\n".join(lines))
                out.flush()
                deadline = cur.at + args.interval
                while (left := deadline - time.monotonic()) > 0:
                    if "q" in wait(left).lower():
                        return 0
                prev, cur = cur, Sample(time.monotonic(), query_status())
    except KeyboardInterrupt:
        return 0


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"'{text}': use 0.1 to 3600 seconds")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``top`` subcommand; it sets ``func=run_top``."""
    p = subparsers.add_parser(
        "top",
        help="live rates of the running agent's rules and sessions",
        description="Rules and sessions of the agent in this network namespace, with packet and byte\n"
        "rates, redrawn every --interval seconds. q or Ctrl-C quits.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--interval", metavar="SECONDS", type=_interval, default=1.0,
                   help="seconds between samples (default: %(default)s)")
    p.add_argument("--once", action="store_true",
                   help="print one sample (rates over --interval) as plain text and exit")
    p.add_argument("--bytes", action="store_true", help="byte counts as plain numbers, not with units")
    p.set_defaults(func=run_top)
