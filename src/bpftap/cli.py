"""The `bpftap` command: one function per subcommand, one `main()` that maps errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bpftap import __version__, abi
from bpftap.errors import BpfError, BpftapError, ConfigError, NotSupportedError
from bpftap.exitstatus import ExitStatus

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
  bpftap mirror eth0 --to 198.18.2.1        mirror eth0 now, no config file, until Ctrl-C (VXLAN VNI 42)
  bpftap status                             attachments and counters of the running agent
  bpftap run -c bpftap.yaml --metrics 127.0.0.1:9477   also serve Prometheus metrics
  bpftap top                                live rule and session rates of the running agent
  bpftap collect --out mirror.pcapng        receive VXLAN copies on 0.0.0.0:4789
  bpftap pause / bpftap resume              kill switch: stop and restart all copying, still attached
  bpftap run -c bpftap.yaml --upgrade       replace the running programs with this build, maps kept
  bpftap detach                             remove everything of bpftap's, in every network namespace
  bpftap demo                               the whole path in a lab of network namespaces
  bpftap version                            this bpftap and the build of its BPF object
  bpftap completion bash > /etc/bash_completion.d/bpftap    shell completion (bash or zsh)

Each command has its own --help, with examples; -v, --traceback and --log-format go before or after it.
"""


# modules that add subcommands: each has register(subparsers)
COMMAND_MODULES = ("bpftap.mirror", "bpftap.collector.cli", "bpftap.top", "bpftap.bench.cli")


RUN_EPILOG = """\
signals:
  SIGHUP            reload the config file (a bad one is refused and the running rules stay)
  SIGTERM, SIGINT   detach everything and exit 0 (--keep-attached: leave it attached, pinned)
  SIGKILL           mirroring goes on from the pins; the next 'bpftap run' adopts them
exit status:
  0 stopped by a signal; 1 an error (BPF, netlink, permission); 2 a bad config or option
  (e.g. --metrics on an address it cannot bind); 3 the kernel lacks what bpftap needs

examples:
  bpftap run -c /etc/bpftap/bpftap.yaml
  bpftap run -c bpftap.yaml --metrics 127.0.0.1:9477 --log-format json
  bpftap run -c bpftap.yaml --attach tc --priority 5      clsact, after filters of priority < 5
  bpftap run -c bpftap.yaml --keep-attached               a restart without a gap: SIGTERM leaves it all
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and examples as written; a default shown only where there is one to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
    data["others"] = attached = others_attached()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key in ("btf", "sched_cls", "ringbuf", "object_loads", "test_run", "tcx", "clsact"):
            note = features.detail.get(key.replace("object_loads", "object"), "")
            print(f"{key:<13} {'yes' if data[key] else 'no':<4} {note}".rstrip())
        print(f"{'mode':<13} {features.mode}")
        for hook, others in attached.items():
            print("\n".join(f"{'other':<13} {hook}: {other}" for other in others))
        if not attached:
            print(f"{'other':<13} none (no other TC program or filter on this namespace's interfaces)")
    return ExitStatus.OK if features.object_loads and (features.tcx or features.clsact) else ExitStatus.NOT_SUPPORTED


def format_status(data: dict[str, Any], raw_bytes: bool = False) -> str:
    """The human form of `bpftap status` (bytes with units unless `raw_bytes`)."""
    from bpftap.textfmt import size, table

    paused = ", PAUSED (bpftap resume to copy again)" if data.get("paused") else ""
    lines = [f"agent pid {data['pid']}, config {data['config']}{paused}"]
    adopted = data.get("adopted")
    if adopted:
        lines.append(f"adopted the pins at {adopted['pins']} of agent pid {adopted['pid'] or '?'}: "
                     f"{adopted['maps']} maps, {adopted['attachments']} attachments, programs {adopted['programs']}")
    lines.append("attached:")
    lines += [f"  {a}" for a in data["attachments"]]
    lines += table(("rule", "action", "packets", "bytes", " sessions"),
                   [(r["number"], r["action"], r["packets"], size(r["bytes"], raw_bytes), " " + ",".join(r["sessions"]))
                    for r in data["rules"]], right=(0, 2, 3))
    rows: list[tuple[object, ...]] = []
    for s in data["sessions"]:
        where = f"{s['tunnel']} {s['remote']}" + (f" {s['id_field']} {s['id']}" if s["id"] is not None else "")
        not_sent = ", ".join(f"{k} {s[k]}" for k in abi.SESSION_NOT_SENT if s.get(k)) or "0"
        rows.append((s["name"], where, s["packets"], size(s["bytes"], raw_bytes), " " + not_sent))
        if s.get("problem"):
            rows.append(("", "", "", "", f"! {s['problem']}"))
    lines += table(("session", "tunnel, remote, id", "copies", "bytes", " not sent"), rows, right=(2, 3))
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
    print(json.dumps(data, indent=2) if args.json else format_status(data, args.bytes))
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

    fmt = HelpFormatter
    p = sub.add_parser("run", help="attach and mirror in the foreground", formatter_class=fmt, epilog=RUN_EPILOG,
                       description="Load bpftap's programs, attach them to the config's sources and mirror "
                       "until SIGTERM or Ctrl-C, which detach everything.\nThe config's keys: README "
                       "\"bpftap run\", and examples/bpftap.yaml, a commented minimal config.")
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

    p = sub.add_parser("check", help="report kernel features and the attach mode", formatter_class=fmt,
                       description="What this kernel offers bpftap (tcx, clsact, the object loading) and the attach "
                       "mode 'run' would pick,\nand the other TC programs on this namespace's interfaces.",
                       epilog="exit status: 0 bpftap can run here; 3 it cannot (the reason is printed)\n\n"
                       "examples:\n  bpftap check\n  bpftap check --json | jq .mode\n"
                       "  ip netns exec ns1 bpftap check        another network namespace")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("validate", help="check a config file as 'run' and a reload would, touching nothing",
                       formatter_class=fmt,
                       description="Parse and check a config file exactly as 'run' and a SIGHUP reload do, "
                       "with no kernel and nothing attached.",
                       epilog="exit status: 0 the config is valid; 2 it is not (every mistake listed on stderr)\n\n"
                       "examples:\n  bpftap validate -c /etc/bpftap/bpftap.yaml && systemctl reload bpftap\n"
                       "  bpftap validate -c examples/bpftap.yaml")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("status", help="attachments and counters of the running agent", formatter_class=fmt,
                       description="Ask the agent of this network namespace for its attachments, rules, sessions, "
                       "links and counters.",
                       epilog="exit status: 0; 1 no agent runs in this network namespace (--json: an error object)"
                       "\n\nexamples:\n  bpftap status\n  bpftap status --json | jq '.sessions[] | {name, packets}'"
                       "\n  ip netns exec ns1 bpftap status       the agent of another network namespace")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--bytes", action="store_true", help="byte counts as plain numbers, not with units")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pause", help="kill switch: stop all copying at once, without detaching", formatter_class=fmt,
                       description="Stop every copy at once; everything stays attached and originals flow as "
                       "before ('bpftap resume' copies again).",
                       epilog="examples:\n  bpftap pause\n  bpftap pause && sleep 60 && bpftap resume")
    p.set_defaults(func=cmd_pause)
    p = sub.add_parser("resume", help="copy again after 'bpftap pause'", formatter_class=fmt,
                       description="Copy again after 'bpftap pause'.",
                       epilog="examples:\n  bpftap resume\n  ip netns exec ns1 bpftap resume        the agent of "
                       "another network namespace")
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("detach", help="remove everything bpftap left attached or pinned, in every network namespace",
                       formatter_class=fmt,
                       description="Detach bpftap's programs and remove its pins, internal devices and state in "
                       "every network namespace\n(after a crash, or a run with --keep-attached). Mirroring "
                       "stops; other programs are left alone.",
                       epilog="examples:\n  bpftap detach\n  systemctl stop bpftap && bpftap detach")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("demo", help="run the whole path in a lab of network namespaces", formatter_class=fmt,
                       description="Build a lab of network namespaces (source, tapped host, collector), mirror "
                       "a flow with the agent,\nreceive the copies with 'bpftap collect', show them, and "
                       "tear the lab down.",
                       epilog="examples:\n  bpftap demo\n  bpftap demo --keep        keep the capture and logs "
                       "(their folder is printed)")
    p.add_argument("--keep", action="store_true", help="keep the lab's output folder")
    p.set_defaults(func=cmd_demo, unwind_on_sigterm=True)

    p = sub.add_parser("version", help="bpftap's version and its BPF object's build", formatter_class=fmt,
                       description="bpftap's version, and the BPF object it loads by default: path, size and "
                       "SHA-256 (the build id).",
                       epilog="examples:\n  bpftap version\n  bpftap version --json | jq -r .object.sha256")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("completion", help="a shell completion script for bash or zsh", formatter_class=fmt,
                       description="Print a completion script for bpftap's commands and options.",
                       epilog="examples:\n  bpftap completion bash > /etc/bash_completion.d/bpftap\n"
                       "  source <(bpftap completion zsh)")
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    p.set_defaults(func=cmd_completion)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    # the global options are taken after the command too: bpftap status --log-format json
    for sp in sub.choices.values():
        group = sp.add_argument_group("global options (also before the command)")
        group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log")
        group.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                           help="show the Python traceback of an error")
        group.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                           help="log lines as text or JSON objects")
    return parser


def object_build(path: Path) -> dict[str, Any]:
    """The BPF object's path, and its size and SHA-256 (its build id) if it is there."""
    import hashlib

    if not path.exists():
        return {"path": str(path), "exists": False}
    data = path.read_bytes()
    return {"path": str(path), "exists": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def cmd_version(args: argparse.Namespace) -> int:
    build = object_build(abi.object_path())
    if args.json:
        print(json.dumps({"version": __version__, "object": build}))
    elif build["exists"]:
        print(f"bpftap {__version__}\nobject {build['path']} ({build['bytes']:,} bytes, sha256 {build['sha256'][:16]})")
    else:
        print(f"bpftap {__version__}\nobject {build['path']}: missing (run 'make build')")
    return ExitStatus.OK if build["exists"] else ExitStatus.ERROR


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(build_parser(), args.shell))
    return ExitStatus.OK


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """bash (or zsh, through bashcompinit) completion of commands and each command's options."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, sp in sub.choices.items():
        opts = sorted(o for a in sp._actions for o in a.option_strings)
        cases.append(f"    {name}) opts=\"{' '.join(opts)}\" ;;")
    top = sorted(o for a in parser._actions for o in a.option_strings)
    script = "\n".join([
        "# bpftap completion (bpftap completion bash|zsh)",
        "_bpftap() {",
        "  local cur=${COMP_WORDS[COMP_CWORD]} cmd='' opts='' i",
        "  for ((i = 1; i < COMP_CWORD; i++)); do",
        "    case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac",
        "  done",
        "  if [[ -z $cmd ]]; then",
        f"    COMPREPLY=($(compgen -W \"{' '.join(sub.choices)} {' '.join(top)}\" -- \"$cur\"))",
        "    return",
        "  fi",
        "  case $cmd in",
        *cases,
        "  esac",
        ("  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W \"$opts\" -- \"$cur\"));"
         " else COMPREPLY=($(compgen -f -- \"$cur\")); fi"),
        "}",
        "complete -F _bpftap bpftap",
    ])
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def _error(as_json: bool, kind: str, messages: list[str], text: str) -> None:
    """The error that ends a command, on stderr: `text` with each message, or (--log-format json) an object each."""
    for message in messages:
        if as_json:
            print(json.dumps({"ts": round(time.time(), 6), "level": "error", "logger": "bpftap", "kind": kind,
                              "message": message}), file=sys.stderr)
        else:
            print(text.format(message), file=sys.stderr)


def _unwind_on_sigterm() -> Callable[[], object]:
    """SIGTERM raises KeyboardInterrupt in this process; returns what puts the previous handler back.

    A child forked from this process without exec (pyroute2 enters a network
    namespace that way, and ends the child with SIGTERM) ends as SIGTERM ends
    it by default: it must never go on running this process's code.
    """
    owner = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, map bpftap's errors to exit codes.

    For `demo` and `bench`, SIGTERM unwinds like Ctrl-C (exit 130), so the
    namespaces and processes they made go as on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter("bpftap: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if args.verbose < 2:
        logging.getLogger("bpftap.libbpf").setLevel(logging.WARNING)
    as_json = args.log_format == "json"
    undo = _unwind_on_sigterm() if getattr(args, "unwind_on_sigterm", False) else None
    try:
        return int(args.func(args))
    except ConfigError as exc:
        if args.traceback:
            raise
        _error(as_json, "config", getattr(exc, "errors", None) or [str(exc)], "{}")
        return ExitStatus.USAGE
    except NotSupportedError as exc:
        if args.traceback:
            raise
        _error(as_json, "not_supported", [str(exc)], "bpftap: not supported: {}")
        return ExitStatus.NOT_SUPPORTED
    except (BpfError, BpftapError, PermissionError) as exc:
        if args.traceback:
            raise
        _error(as_json, "error", [str(exc)], "bpftap: {}")
        return ExitStatus.ERROR
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    finally:
        if undo is not None:
            undo()


if __name__ == "__main__":
    sys.exit(main())
