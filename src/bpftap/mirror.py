"""``bpftap mirror IFACE... --to ADDR``: mirror now, without a config file, until Ctrl-C or ``--duration``.

A thin front on the agent of ``bpftap run``: the options become the same
config data a YAML file gives (one source per interface, one session
``mirror``, one rule), checked by the same ``config.parse_config``, and
served by the same ``agent.run.run_config`` (same pins, state, status
socket and exit codes). Mistakes are reported with the option that holds
them (``bpftap mirror: --vni: 99999999 is out of range 0-16777215``), exit
2. While it runs, one line of counters is redrawn on stderr every second;
at the end a summary (copies sent and not sent, per session) goes to
stdout. ``register(subparsers)`` adds the subcommand to the main CLI.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from typing import Any, TextIO

from bpftap import abi, mirror_pod
from bpftap.config import Config, parse_config
from bpftap.errors import ConfigError
from bpftap.top import human
from bpftap.tunnels import TUNNEL_ID_FIELDS, TUNNELS
from bpftap.tunnels.vxlan import VXLAN_PORT

SESSION = "mirror"
RULE_NUMBER = 1
DEFAULT_ID = 42  # the VNI (or ERSPAN session id) of the README's and the examples' sessions
ORIGIN = "bpftap mirror"  # the config's name in messages and in `bpftap status`

EPILOG = f"""\
signals:
  SIGINT (Ctrl-C), SIGTERM  detach everything, print the summary and exit 0
                            (as at the end of --duration)
exit status:
  0 stopped by a signal or --duration; 1 an error (BPF, netlink, permission, another
  agent in this network namespace); 2 a bad option (named in the message); 3 the kernel
  lacks what bpftap needs

examples:
  bpftap mirror eth0 --to 198.18.2.1
      both directions of eth0, VXLAN VNI {DEFAULT_ID} to 198.18.2.1:{VXLAN_PORT}, until Ctrl-C
  bpftap mirror eth0 eth1 --to 2001:db8::7 --tunnel geneve --vni 7 --duration 30s
      two interfaces for 30 seconds, GENEVE over IPv6
  bpftap mirror eth0 --to 198.18.2.1 --direction ingress --snaplen 128 --filter 'tcp port 443'
      what arrives on eth0 for TLS, the first 128 bytes of each frame
  bpftap mirror 'veth*' --to 198.18.2.1 --tunnel erspan3 --vni 5
      every veth (a glob), ERSPAN III session 5
  bpftap mirror pod/shop/web-7d9f --to 198.18.2.1
      one Kubernetes pod of this node, both directions, for as long as it runs
  bpftap mirror --netns web-1 --to 198.18.2.1 --attach inside
      the pod in network namespace web-1, attached to its own eth0
  bpftap collect --out - | tshark -r -
      the other end, on 198.18.2.1 (see 'bpftap collect --help')

The counters line goes to stderr (redrawn in place on a terminal, a line a second
otherwise); the summary goes to stdout. For rules, sampling, rate limits and
several collectors use 'bpftap run -c FILE': this is one rule to one collector.
"""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# a config location -> the option it came from (first match wins)
_OPTIONS = (
    (re.compile(r"sources\[\d+\]\.direction"), "--direction"),
    (re.compile(r"sources\[\d+\](\..*)?"), "IFACE"),
    (re.compile(r"sessions\[0\]\.(vni|key|session_id)"), "--vni"),
    (re.compile(r"sessions\[0\]\.remote"), "--to"),
    (re.compile(r"sessions\[0\]\.tunnel"), "--tunnel"),
    (re.compile(r"sessions\[0\]\.snaplen"), "--snaplen"),
    (re.compile(r"rules\[0\](\..*)?"), "--filter"),
)


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``1h``, ``500ms`` or plain seconds (``45``, ``0.5``) as seconds; > 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 30s, 2m, 1h or 500ms")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the duration must be more than 0")
    return seconds


def config_data(args: argparse.Namespace) -> dict[str, Any]:
    """The config, as YAML would give it, for the parsed options (pure)."""
    session: dict[str, Any] = {"name": SESSION, "tunnel": args.tunnel, "remote": args.to}
    id_field = TUNNEL_ID_FIELDS.get(args.tunnel, "vni")
    if args.vni is not None or id_field != "key":  # gre: a key only when asked for
        session[id_field] = DEFAULT_ID if args.vni is None else args.vni
    if args.snaplen is not None:
        session["snaplen"] = args.snaplen
    rule: dict[str, Any] = {"number": RULE_NUMBER, "sessions": [SESSION]}
    if args.filter is not None:
        rule["filter"] = args.filter
    # an interface named twice is one source (the config would refuse the second)
    sources = [{"interface": name, "direction": args.direction} for name in dict.fromkeys(args.interfaces)
               if not mirror_pod.is_pod(name)]
    sources += getattr(args, "pod_sources", [])  # resolve_pods() made them
    return {"sources": sources, "sessions": [session], "rules": [rule]}


def resolve_pods(args: argparse.Namespace) -> None:
    """Find the pods of `pod/NS/NAME` targets and --netns on this node; their sources go to args.pod_sources.

    Raises ConfigError naming the target of a pod that is not here.
    """
    if not args.interfaces and not args.netns:
        raise ConfigError(f"{ORIGIN}: IFACE: give an interface, pod/NAMESPACE/NAME or --netns NAME")
    args.pod_sources = [mirror_pod.pod_source(t, args.direction, args.attach)
                        for t in dict.fromkeys(args.interfaces) if mirror_pod.is_pod(t)]
    args.pod_sources += [mirror_pod.netns_source(name, args.direction, args.attach)
                         for name in dict.fromkeys(args.netns)]


def name_options(error: ConfigError) -> ConfigError:
    """`error` (from the config or the agent) with each config location replaced by its option."""
    lines = []
    for line in str(error).splitlines():
        where, _, what = line.removeprefix(f"{ORIGIN}: ").partition(": ")
        option = next((opt for pattern, opt in _OPTIONS if pattern.fullmatch(where)), None)
        lines.append(f"{ORIGIN}: {option}: {what}" if option and what else line)
    return ConfigError("\n".join(lines))


def build_config(args: argparse.Namespace) -> Config:
    """The validated Config for the options; raises ConfigError naming the option of each mistake."""
    try:
        return parse_config(config_data(args), ORIGIN)
    except ConfigError as exc:
        raise name_options(exc) from None


def check_interfaces(patterns: list[str]) -> None:
    """Raise ConfigError (IFACE) for a name or glob that matches no interface here, before anything is made."""
    from bpftap.netlink import match_interfaces

    missing = [p for p in dict.fromkeys(patterns) if not match_interfaces([p])]
    if missing:
        raise ConfigError("\n".join(f"{ORIGIN}: IFACE: {p!r} matches no interface in this network namespace"
                                    for p in missing))


def dropped(status: dict[str, Any]) -> dict[str, int]:
    """Copies not sent, by reason, over every session (sampling is no loss: mirror has none), clones and rings."""
    out: dict[str, int] = {}
    for s in status["sessions"]:
        for reason in abi.SESSION_NOT_SENT:
            if reason != "sampled_out" and s.get(reason):
                out[reason] = out.get(reason, 0) + s[reason]
    for counter in ("clone_fail", "no_entry"):
        if status["counters"].get(counter):
            out[counter] = status["counters"][counter]
    for queue, n in status.get("queue_drops", {}).items():
        if n:
            out[f"{queue}_ring_full"] = n
    return out


def _reasons(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total} ({', '.join(f'{k} {v}' for k, v in counts.items())})" if total else "0"


class LiveLine:
    """One line of counters on `out`: redrawn in place on a terminal, else a line each time."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.start: float | None = None  # the first show(): mirroring began
        self.prev: tuple[float, int, int] | None = None  # (when, copies, bytes)
        self.drawn = False

    def line(self, status: dict[str, Any], now: float) -> str:
        if self.start is None:
            self.start = now
        copies = sum(s["packets"] for s in status["sessions"])
        nbytes = sum(s["bytes"] for s in status["sessions"])
        rate = ""
        if self.prev is not None and now > self.prev[0]:
            dt = now - self.prev[0]
            rate = f" ({human((copies - self.prev[1]) / dt, 'p/s')}, {human((nbytes - self.prev[2]) / dt, 'B/s')})"
        self.prev = (now, copies, nbytes)
        return (f"{now - self.start:6.0f} s  matched {status['counters'].get('matched', 0)}  "
                f"copies {copies}{rate}  not sent {sum(dropped(status).values())}")

    def show(self, status: dict[str, Any]) -> None:
        text = self.line(status, time.monotonic())
        self.out.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.out.flush()
        self.drawn = True

    def end(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()


def format_summary(status: dict[str, Any], seconds: float) -> str:
    """What was mirrored: copies sent and not sent, in all and per session."""
    lines = [f"mirrored for {seconds:.1f} s: {status['counters'].get('seen', 0)} packets seen, "
             f"{status['counters'].get('matched', 0)} matched"]
    for s in status["sessions"]:
        one = dropped({"sessions": [s], "counters": {}})
        where = f"{s['tunnel']} {s['remote']}" + (f" {s['id_field']} {s['id']}" if s.get("id") is not None else "")
        lines.append(f"session {s['name']} ({where}): sent {s['packets']} copies ({s['bytes']} bytes), "
                     f"not sent {_reasons(one)}" + (f"; {s['problem']}" if s.get("problem") else ""))
    sent = sum(s["packets"] for s in status["sessions"])
    lines.append(f"copies sent {sent}, not sent {_reasons(dropped(status))}")
    return "\n".join(lines)


def run_mirror(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Mirror as the options say until SIGINT/SIGTERM or --duration; print the summary; return 0.

    Raises ConfigError (exit 2) naming the option of every mistake, before
    anything is attached; otherwise what `bpftap run` raises.
    """
    from bpftap.agent.run import run_config

    out, err = stdout or sys.stdout, stderr or sys.stderr
    resolve_pods(args)
    config = build_config(args)
    check_interfaces([source.interface for source in config.sources if source.pods is None])
    session = config.sessions[0]
    ident = getattr(session, TUNNEL_ID_FIELDS[session.tunnel])
    names = ", ".join(s.interface or f"the pod in netns {s.pods.netns if s.pods else '?'} (attach {s.attach})"
                      for s in config.sources)
    print(f"{ORIGIN}: {names} ({args.direction}) to {session.remote}, {session.tunnel}"
          + (f" {TUNNEL_ID_FIELDS[session.tunnel]} {ident}" if ident is not None else "")
          + (f", for {args.duration:g} s" if args.duration else "") + "; Ctrl-C stops", file=err, flush=True)
    live = LiveLine(err)
    # the agent's step-by-step log is for -v; warnings and errors still show
    quiet = logging.getLogger("bpftap")
    level = quiet.level
    if not getattr(args, "verbose", 0):
        quiet.setLevel(logging.WARNING)

    def done(status: dict[str, Any]) -> None:
        live.end()
        now = time.monotonic()
        print(format_summary(status, now - (live.start or now)), file=out, flush=True)

    try:
        return run_config(config, duration=args.duration, tick=lambda agent: live.show(agent.status()), done=done)
    except ConfigError as exc:
        live.end()
        raise name_options(exc) from None
    finally:
        quiet.setLevel(level)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``mirror`` subcommand; it sets ``func=run_mirror``."""
    from bpftap.cli import HelpFormatter

    p = subparsers.add_parser(
        "mirror",
        help="mirror interfaces to a collector now, without a config file (until Ctrl-C)",
        formatter_class=HelpFormatter,
        epilog=EPILOG,
        description="Mirror every packet of the interfaces to one collector at once, with no config file:\n"
        "the agent of 'bpftap run' with one source per interface, one session and one rule.\n"
        "A line of counters is redrawn every second; Ctrl-C or the end of --duration detaches\n"
        "everything and prints what was sent.",
    )
    p.add_argument("interfaces", metavar="IFACE", nargs="*",
                   help="interface to mirror (a name or a glob such as 'veth*'), or pod/NAMESPACE/NAME: a "
                   "Kubernetes pod on this node")
    p.add_argument("--netns", metavar="NAME", action="append", default=[],
                   help="mirror the pod whose network namespace is /run/netns/NAME (pods without a cluster)")
    p.add_argument("--attach", choices=("auto", "inside", "host"), default="auto",
                   help="pods: inside the pod (its eth0), on its host-side veth, or auto: inside when an eBPF "
                   "data path's program is on the veth (README \"Pods behind an eBPF data path\")")
    p.add_argument("--to", metavar="ADDR", required=True,
                   help="the collector's IPv4 or IPv6 address (next hop and source from the routing table)")
    p.add_argument("--tunnel", choices=TUNNELS, default="vxlan", help="the tunnel copies travel in")
    p.add_argument("--vni", metavar="N", type=int, default=None,
                   help=f"the tunnel's identifier: VXLAN/GENEVE VNI or ERSPAN session id (default: {DEFAULT_ID}), "
                   "GRE key (default: none)")
    p.add_argument("--direction", choices=("both", "ingress", "egress"), default="both",
                   help="which packets of each interface: arriving, leaving or both")
    p.add_argument("--filter", metavar="EXPR", default=None,
                   help="mirror only packets matching this pcap-filter expression (as tcpdump's), e.g. 'port 53'")
    p.add_argument("--duration", metavar="TIME", type=parse_duration, default=None,
                   help="stop after this long: 30s, 5m, 1h, 500ms (default: until Ctrl-C)")
    p.add_argument("--snaplen", metavar="N", type=int, default=None,
                   help="keep the first N bytes of each frame (default: the whole frame)")
    p.set_defaults(func=run_mirror)
