"""``bpftap collect``: receive tunnelled copies and record the inner frames as pcapng.

``register(subparsers)`` adds the subcommand to the main CLI's parser;
``run_collect(args)`` runs it and returns the exit status. Options validate
at parse time; ``run_collect`` still maps a bad ``--listen``, a busy port and
an unwritable ``--out`` to exit status 2 with a message naming the culprit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from bpftap.collector.pcapng import STDOUT
from bpftap.collector.reassembly import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DATAGRAMS,
    DEFAULT_TIMEOUT,
    Limits,
)
from bpftap.collector.server import (
    Collector,
    CollectorError,
    format_summary,
    parse_listen,
)
from bpftap.errors import BpftapError
from bpftap.exitstatus import ExitStatus
from bpftap.filter.pcap import CompiledFilter, FilterError, compile_filter
from bpftap.tunnels import TUNNELS
from bpftap.tunnels.geneve import GENEVE_PORT
from bpftap.tunnels.vxlan import VNI_MAX, VXLAN_PORT

MB = 1_000_000  # --rotate-mb counts decimal megabytes, as tcpdump -C does

EXAMPLES = f"""\
examples:
  bpftap collect --out mirror.pcapng
      every tunnel type on 0.0.0.0 (VXLAN udp/{VXLAN_PORT}, GENEVE udp/{GENEVE_PORT}, GRE and
      ERSPAN as IP protocol 47) until Ctrl-C
  bpftap collect --listen [::] --out mirror.pcapng --rotate-mb 100
      IPv6 and IPv4 senders; start mirror-0001.pcapng, mirror-0002.pcapng, ...
      every 100 MB
  bpftap collect --listen 198.18.2.254 --tunnel vxlan --vni 42 --vni 43 --count 1000 --out t.pcapng
      VXLAN only, keep VNIs 42 and 43, stop after 1000 frames
  bpftap collect --tunnel erspan3 --out t.pcapng --duration 60 && tshark -r t.pcapng -e frame.comment -T fields
      ERSPAN III for a minute; each comment reads like
      "tunnel=erspan3 session=7 seq=12 dir=egress if=3 ts=1700000000.123456789 from=198.18.2.254"
  bpftap collect --interface eth1 --out span.pcapng
      a SPAN/TAP port: read every frame eth1 receives (AF_PACKET), reassemble outer IPv4
      and IPv6 fragments, keep VXLAN udp/{VXLAN_PORT}, GENEVE udp/{GENEVE_PORT} and GRE/ERSPAN to any address
  bpftap collect --interface eth1 --listen 198.18.2.254 --tunnel vxlan --out t.pcapng
      the same, only VXLAN copies sent to 198.18.2.254
  bpftap collect --out - | tshark -r -
      stream pcapng to another tool; the summary and log go to stderr
  bpftap collect --filter 'port 53' --out dns.pcapng
      keep only the inner frames that match a pcap-filter expression (as tcpdump's);
      the summary counts the others as filtered
  tcpdump -i eth1 -w underlay.pcap 'udp or ip proto gre or ip6'
  bpftap collect --read underlay.pcap --out inner.pcapng
      decapsulate a capture of the underlay (classic pcap of Ethernet frames)

capture inputs (--interface, --read):
  the kernel reassembles IP fragments for the sockets but not for frames read
  from an interface or a file, so the collector does: at most --reasm-max-bytes
  of fragments and --reasm-max-datagrams datagrams in flight (the oldest go first),
  --reasm-timeout seconds per datagram (in capture time for --read), duplicates
  ignored, a datagram with overlapping fragments discarded (RFC 5722; Linux does
  the same for IPv4). The summary counts captured and ignored frames and every
  reassembly drop by reason. --listen's address then filters the outer destination
  (0.0.0.0 or [::]: any) and its port is VXLAN's; frames the interface sends are ignored.

signals:
  SIGINT (Ctrl-C) and SIGTERM stop the collector: it closes the capture and
  prints the summary (frames per session and sender, sequence gaps,
  malformed per reason, files).

exit status:
  0 done; 2 bad option, a --filter expression libpcap refuses, bad or busy
  --listen address, unknown --interface, unreadable or non-pcap --read file,
  unwritable --out, or --out naming the --read file; 1 writing the capture failed while running (disk full, ...) or
  the --read file is cut short (inside a record header or frame).
"""


def _listen_arg(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(kind: type[int] | type[float], what: str) -> Callable[[str], float]:
    def check(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{what} must be > 0, got {text}")
        return value

    return check


def _vni_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > VNI_MAX:
        raise argparse.ArgumentTypeError(f"VNI {text!r} is not 0..{VNI_MAX}")
    return int(text)


def _port_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not 0..65535")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``collect`` subcommand; it sets ``func=run_collect``."""
    p = subparsers.add_parser(
        "collect",
        help="receive mirror copies (VXLAN, GENEVE, GRE, ERSPAN) and write them to pcapng",
        description="Receive tunnelled copies sent by bpftap (or any VXLAN, GENEVE, GRE or\n"
        "ERSPAN source), strip the outer headers and write the inner Ethernet frames to\n"
        "pcapng, with the tunnel type, VNI/key/session id, sequence number, direction,\n"
        "source interface and sender in each packet's comment.",
        epilog=EXAMPLES,
        # Raw keeps EXAMPLES as written; defaults are spelled out in the help
        # texts that have one (ArgumentDefaultsHelpFormatter adds "None" noise).
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", metavar="ADDR[:PORT]", type=_listen_arg,
                   default=f"0.0.0.0:{VXLAN_PORT}",
                   help="address to receive on; PORT is VXLAN's UDP port; IPv6 as "
                   "[ADDR]:PORT; [::] takes IPv4 too; port 0 picks a free one "
                   "(default: %(default)s)")
    p.add_argument("--geneve-port", metavar="PORT", type=_port_arg, default=GENEVE_PORT,
                   help="GENEVE's UDP port (default: %(default)s)")
    p.add_argument("--tunnel", metavar="TYPE", choices=TUNNELS, action="append",
                   help=f"accept only this tunnel type (repeatable; {', '.join(TUNNELS)}); "
                   "others are counted as malformed 'tunnel' and dropped. Default: all "
                   "(GRE and ERSPAN need a raw socket, i.e. CAP_NET_RAW)")
    p.add_argument("--out", metavar="FILE.pcapng", type=Path, required=True,
                   help="capture file (overwritten); - writes pcapng to stdout (the summary then goes "
                   "to stderr), e.g. for 'tshark -r -' or 'wireshark -k -i -'")
    p.add_argument("--rotate-mb", metavar="N", type=_positive(float, "--rotate-mb"),
                   help="start FILE-0001.pcapng, FILE-0002.pcapng, ... each time the "
                   "current file would exceed N MB (10^6 bytes)")
    p.add_argument("--count", metavar="N", type=_positive(int, "--count"),
                   help="stop after writing N frames")
    p.add_argument("--duration", metavar="SECONDS", type=_positive(float, "--duration"),
                   help="stop after SECONDS (--read stops at the end of the file)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--interface", metavar="IFACE",
                        help="read the frames IFACE receives (AF_PACKET; root or CAP_NET_RAW) instead "
                        "of opening sockets, and reassemble outer fragments: for a SPAN/TAP port or "
                        "copies not addressed to this host. IFACE is in this network namespace")
    source.add_argument("--read", metavar="FILE.pcap", type=Path,
                        help="decapsulate a classic pcap of underlay Ethernet frames (tcpdump -w) "
                        "instead of receiving; ends at the end of the file")
    p.add_argument("--reasm-timeout", metavar="SECONDS", type=_positive(float, "--reasm-timeout"),
                   default=DEFAULT_TIMEOUT,
                   help="capture inputs: drop a datagram not reassembled SECONDS after its first "
                   "fragment (default: %(default)s, as the kernel's ipfrag_time)")
    p.add_argument("--reasm-max-bytes", metavar="N", type=_positive(int, "--reasm-max-bytes"),
                   default=DEFAULT_MAX_BYTES,
                   help="capture inputs: fragment bytes held at most (default: %(default)s, as the "
                   "kernel's ipfrag_high_thresh)")
    p.add_argument("--reasm-max-datagrams", metavar="N", type=_positive(int, "--reasm-max-datagrams"),
                   default=DEFAULT_MAX_DATAGRAMS,
                   help="capture inputs: datagrams in reassembly at most (default: %(default)s)")
    p.add_argument("--vni", metavar="N", type=_vni_arg, action="append",
                   help="keep only this VXLAN/GENEVE VNI (repeatable); others are counted "
                   "as malformed 'vni' and dropped")
    p.add_argument("--filter", metavar="EXPR",
                   help="keep only the inner (decapsulated) frames that match this pcap-filter "
                   "expression, e.g. 'port 53' or 'icmp or arp' (libpcap's own matcher, as tcpdump's); "
                   "the summary counts the others as filtered")
    p.set_defaults(func=run_collect)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Make SIGINT/SIGTERM set ``stop``; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda _signum, _frame: stop.set()) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of `path`, "-" meaning stdout; None if it does not exist (yet) or cannot be read."""
    try:
        st = os.fstat(1) if path == STDOUT else os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_stdout(path: Path) -> bool:
    """Whether `path` is "-" or names the file standard output is (/dev/stdout, /proc/self/fd/1, ...)."""
    return path == STDOUT or (_file_id(path) is not None and _file_id(path) == _file_id(STDOUT))


def _out_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with --out given the other options, or None."""
    out = Path(args.out)
    if out == STDOUT and args.rotate_mb is not None:
        return "--rotate-mb needs a file: --out - is stdout, which cannot be rotated"
    if args.read is not None:
        read_id = _file_id(Path(args.read))
        if read_id is not None and read_id == _file_id(out):
            # another name, a hard link or stdout redirected into it: one inode either way
            return f"--out {out} is the --read file {args.read}; writing would overwrite the input"
    return None


def _say(args: argparse.Namespace, err: TextIO, level: str, message: str) -> None:
    """A line on stderr: `bpftap collect: error: ...`, or with --log-format json a JSON object."""
    if getattr(args, "log_format", "text") == "json":
        print(json.dumps({"ts": round(time.time(), 6), "level": level, "logger": "bpftap.collect",
                          "message": message}), file=err, flush=True)
    elif level == "info":
        print(message, file=err, flush=True)
    else:
        print(f"bpftap collect: {level}: {message}", file=err, flush=True)


def run_collect(args: argparse.Namespace, *, stdout: TextIO | None = None,
                stderr: TextIO | None = None, stop: threading.Event | None = None) -> int:
    """Run ``bpftap collect`` with parsed ``args``; return the exit status.

    Returns 2 with a message on ``stderr`` for a bad ``--listen``, a port
    already in use or an unwritable ``--out``; 1 if writing fails mid-run
    (the summary is still printed). ``stdout``/``stderr``/``stop`` default to
    the process's streams and a fresh event; tests inject their own.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    stop = stop if stop is not None else threading.Event()
    inner_filter: CompiledFilter | None = None
    if args.filter is not None:  # before anything is opened
        try:
            inner_filter = compile_filter(args.filter)
        except FilterError as exc:
            _say(args, err, "error", f"--filter: {exc}")
            return ExitStatus.USAGE
        except BpftapError as exc:  # no libpcap
            _say(args, err, "error", f"--filter: {exc}")
            return ExitStatus.ERROR
    try:
        addr, port = parse_listen(args.listen)
    except ValueError as exc:
        _say(args, err, "error", f"{exc}")
        return ExitStatus.USAGE
    problem = _out_problem(args)
    if problem:
        _say(args, err, "error", f"{problem}")
        return ExitStatus.USAGE
    if _is_stdout(args.out):
        out = err  # the capture is the stream: the summary must not land in it
    rotate = None if args.rotate_mb is None else max(1, int(args.rotate_mb * MB))
    limits = Limits(args.reasm_timeout, int(args.reasm_max_bytes), int(args.reasm_max_datagrams))
    collector = Collector(addr, port, Path(args.out), rotate, args.vni, tunnels=args.tunnel,
                          geneve_port=args.geneve_port, interface=args.interface, read=args.read, limits=limits,
                          inner_filter=inner_filter)
    try:
        collector.bind()
    except CollectorError as exc:
        _say(args, err, "error", f"{exc}")
        return ExitStatus.USAGE
    with _stop_on_signals(stop):
        rotating = f", new file every {args.rotate_mb:g} MB" if rotate else ""
        vnis = f", VNIs {','.join(map(str, sorted(set(args.vni))))}" if args.vni else ""
        vnis += f", frames matching {args.filter!r}" if inner_filter is not None else ""
        for warning in collector.warnings:
            _say(args, err, "warning", f"{warning}")
        verb = "reading" if args.read is not None else "listening on"
        _say(args, err, "info", f"{verb} {collector.describe()}, writing {args.out}{rotating}{vnis}")
        try:
            stats = collector.serve(stop, max_packets=args.count, duration=args.duration)
        except CollectorError as exc:
            _say(args, err, "error", f"{exc}")
            print(format_summary(collector.stats), file=out)
            return ExitStatus.ERROR
    print(format_summary(stats), file=out)
    return ExitStatus.OK
