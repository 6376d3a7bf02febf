"""The `bpftap` command: one function per subcommand, one `main()` that maps errors to exit codes."""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpftap import __version__, abi
from bpftap.errors import BpfError, BpftapError, ConfigError, NotSupportedError

EPILOG = """\
signals (bpftap run):
  SIGHUP            reload the config file (rules and sessions) without detaching
  SIGTERM, SIGINT   detach everything bpftap attached and exit 0 (--keep-attached: leave it, pinned)
  SIGKILL           mirroring goes on from the pins; the next 'bpftap run' adopts them

examples:
  bpftap check                              what this kernel offers, and the attach mode
  bpftap validate -c bpftap.yaml            check a config without running it (exit 0, or 2 with every mistake)
  bpftap run -c bpftap.yaml                 mirror as the config says, in the foreground
  bpftap run -c bpftap.yaml --attach tc     force clsact instead of tcx
  bpftap status                             attachments and counters of the running agent
  bpftap run -c bpftap.yaml --metrics 127.0.0.1:9477   also serve Prometheus metrics
  bpftap top                                live rule and session rates of the running agent
  bpftap collect --out mirror.pcapng        receive VXLAN copies on 0.0.0.0:4789
  bpftap pause / bpftap resume              kill switch: stop and restart all copying, still attached
  bpftap run -c bpftap.yaml --upgrade       replace the running programs with this build, maps kept
  bpftap detach                             remove everything of bpftap's, in every network namespace
  bpftap demo                               the whole path in a lab of network namespaces
"""


# modules that add subcommands: each has register(subparsers)
COMMAND_MODULES = ("bpftap.collector.cli", "bpftap.top", "bpftap.bench.cli")


class ExitStatus(enum.IntEnum):
    """Exit codes of every bpftap command."""

    OK = 0
    ERROR = 1
    USAGE = 2  # bad arguments or a bad config file: the user's input
    NOT_SUPPORTED = 3
    INTERRUPTED = 130


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and a record's structured `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        return json.dumps(data)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be 1 or more")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from bpftap.agent.run import run
    from bpftap.bpf.tc import Mode

    return run(args.config, Mode(args.attach), args.order == "first", args.priority, args.object,
               metrics=args.metrics, upgrade=args.upgrade, keep_attached=args.keep_attached)


def _metrics_address(text: str) -> tuple[str, int]:
    from bpftap.agent.metrics import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def others_attached() -> dict[str, list[str]]:
    """What else (not bpftap) is on the TC hooks of this namespace's interfaces, by "IFACE DIRECTION"."""
    import socket

    from bpftap.bpf import tc

    found = {}
    for ifindex, ifname in socket.if_nameindex():
        for direction in tc.Direction:
            others = tc.others_on_hook(ifname, ifindex, direction)
            if others:
                found[f"{ifname} {direction.value}"] = others
    return found


def cmd_check(args: argparse.Namespace) -> int:
    from bpftap.bpf.probe import as_dict, probe

    features = probe()
    data = as_dict(features)
    data["others"] = others_attached()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key in ("btf", "sched_cls", "ringbuf", "object_loads", "test_run", "tcx", "clsact"):
            note = features.detail.get(key.replace("object_loads", "object"), "")
            print(f"{key:<13} {'yes' if data[key] else 'no':<4} {note}".rstrip())
        print(f"{'mode':<13} {features.mode}")
        for hook, others in data["others"].items():
            print("\n".join(f"{'other':<13} {hook}: {other}" for other in others))
        if not data["others"]:
            print(f"{'other':<13} none (no other TC program or filter on this namespace's interfaces)")
    return ExitStatus.OK if features.object_loads and (features.tcx or features.clsact) else ExitStatus.NOT_SUPPORTED


def format_status(data: dict[str, Any]) -> str:
    """The human form of `bpftap status`."""
    paused = ", PAUSED (bpftap resume to copy again)" if data.get("paused") else ""
    lines = [f"agent pid {data['pid']}, config {data['config']}{paused}"]
    adopted = data.get("adopted")
    if adopted:
        lines.append(f"adopted the pins at {adopted['pins']} of agent pid {adopted['pid'] or '?'}: "
                     f"{adopted['maps']} maps, {adopted['attachments']} attachments, programs {adopted['programs']}")
    lines.append("attached:")
    lines += [f"  {a}" for a in data["attachments"]]
    lines.append(f"{'rule':>8} {'action':<7} {'packets':>10} {'bytes':>12}  sessions")
    for r in data["rules"]:
        lines.append(f"{r['number']:>8} {r['action']:<7} {r['packets']:>10} {r['bytes']:>12}  {','.join(r['sessions'])}")
    lines.append(f"{'session':<12} {'tunnel, remote, id':<38} {'copies':>10} {'bytes':>12}  not sent")
    for s in data["sessions"]:
        where = f"{s['tunnel']} {s['remote']}" + (f" {s['id_field']} {s['id']}" if s["id"] is not None else "")
        not_sent = ", ".join(f"{k} {s[k]}" for k in abi.SESSION_NOT_SENT if s.get(k)) or "0"
        lines.append(f"{s['name']:<12} {where:<38} {s['packets']:>10} {s['bytes']:>12}  {not_sent}")
        if s.get("problem"):
            lines.append(f"{'':<12} ! {s['problem']}")
    counters = ", ".join(f"{k} {v}" for k, v in data["counters"].items() if v)
    lines.append(f"counters: {counters or 'all zero'}")
    drops = ", ".join(f"{k} {v}" for k, v in data.get("queue_drops", {}).items() if v)
    if drops:
        lines.append(f"internal rings full, copies dropped: {drops}")
    from bpftap.top import link_lines

    lines += link_lines(data.get("links", []))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from bpftap.agent.status import query_status

    try:
        data = query_status()
    except BpftapError as exc:
        if not args.json:
            raise
        # scripts parse stdout: an object with the error, never nothing
        print(json.dumps({"error": str(exc)}, indent=2))
        return ExitStatus.ERROR
    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return ExitStatus.OK


def cmd_pause(args: argparse.Namespace) -> int:
    from bpftap.agent.status import query_status

    data = query_status(command=args.command)
    state = "paused: no copies are made; attachments and originals unchanged" if data["paused"] else "copying"
    print(f"agent pid {data['pid']}: {state}")
    return ExitStatus.OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Run the validation `run` and a SIGHUP reload run, with no kernel; a bad config raises ConfigError (exit 2)."""
    from bpftap.config import load_config

    config = load_config(args.config)
    print(f"{args.config}: ok: {len(config.sources)} sources, {len(config.sessions)} sessions, "
          f"{len(config.rules)} rules")
    return ExitStatus.OK


def cmd_detach(args: argparse.Namespace) -> int:
    from bpftap.agent.detach import detach_everywhere

    done = detach_everywhere()
    print("\n".join(done) if done else "nothing of bpftap's found")
    return ExitStatus.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from bpftap.demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bpftap",
        description="Mirror live traffic from Linux interfaces to remote analysers with eBPF.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bpftap {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv: libbpf and verifier too)")
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback of an error")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="log lines as text, or as JSON objects one a line (kernel records with their fields)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("run", help="attach and mirror in the foreground", formatter_class=fmt, epilog=None)
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("--attach", choices=["auto", "tcx", "tc"], default="auto", help="tcx links or clsact filters")
    p.add_argument("--order", choices=["first", "last"], default="first", help="place among other tcx programs")
    p.add_argument("--priority", type=_positive_int, default=1, help="clsact filter priority (lower runs first)")
    p.add_argument("--object", type=Path, default=None, help="BPF object to load (default: the packaged one; "
                   "'make debug' builds build/bpf/mirror_tc.debug.bpf.o, which logs to the kernel trace pipe)")
    p.add_argument("--metrics", metavar="ADDR:PORT", type=_metrics_address, default=None,
                   help="serve Prometheus metrics on this address (127.0.0.1:9477, [::1]:9477; port 0: any free)")
    p.add_argument("--upgrade", action="store_true", help="when adopting an earlier agent's pins, replace its "
                   "programs with this object's in one step (tcx link update, clsact filter replace), maps kept")
    p.add_argument("--keep-attached", action="store_true", help="on SIGTERM leave everything attached and pinned "
                   "for the next run to adopt (a restart without a gap); 'bpftap detach' removes it")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="report kernel features and the attach mode", formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("validate", help="check a config file as 'run' and a reload would, touching nothing",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit status: 0 the config is valid; 2 it is not (every mistake listed on stderr)\n\n"
                       "examples:\n  bpftap validate -c /etc/bpftap/bpftap.yaml && systemctl reload bpftap\n"
                       "  bpftap validate -c examples/bpftap.yaml")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("status", help="attachments and counters of the running agent", formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pause", help="kill switch: stop all copying at once, without detaching")
    p.set_defaults(func=cmd_pause)
    p = sub.add_parser("resume", help="copy again after 'bpftap pause'")
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("detach", help="remove everything bpftap left attached or pinned, in every network namespace")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("demo", help="run the whole path in a lab of network namespaces", formatter_class=fmt)
    p.add_argument("--keep", action="store_true", help="keep the lab's output folder")
    p.set_defaults(func=cmd_demo)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, map bpftap's errors to exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter("bpftap: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if args.verbose < 2:
        logging.getLogger("bpftap.libbpf").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        if args.traceback:
            raise
        print(str(exc), file=sys.stderr)
        return ExitStatus.USAGE
    except NotSupportedError as exc:
        if args.traceback:
            raise
        print(f"bpftap: not supported: {exc}", file=sys.stderr)
        return ExitStatus.NOT_SUPPORTED
    except (BpfError, BpftapError, PermissionError) as exc:
        if args.traceback:
            raise
        print(f"bpftap: {exc}", file=sys.stderr)
        return ExitStatus.ERROR
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
