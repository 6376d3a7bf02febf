"""`bpftap run`: the agent in the foreground, until SIGTERM or SIGINT.

SIGHUP, or a change of the config file (a ConfigMap update), reloads; every
REFRESH_SECONDS the sessions' next hops are refreshed and pod sources
synced. The status socket and, if asked, the metrics endpoint serve from
here; `bpftap.agent.daemon.Agent` does the work.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from bpftap.agent.configwatch import ConfigWatch
from bpftap.agent.daemon import REFRESH_SECONDS, Agent
from bpftap.agent.metrics import AgentSource, serve
from bpftap.agent.status import StatusServer
from bpftap.bpf import tc
from bpftap.config import load_config
from bpftap.errors import BpftapError

log = logging.getLogger("bpftap.agent")


def run(
    config_path: str,
    mode: tc.Mode,
    first: bool,
    priority: int,
    object_path: Path | None = None,
    metrics: tuple[str, int] | None = None,
    upgrade: bool = False,
    keep_attached: bool = False,
) -> int:
    """`bpftap run`: serve in the foreground until SIGTERM/SIGINT; SIGHUP reloads.

    An earlier agent's pins are adopted (its programs kept, or replaced by
    this object's with `upgrade`). `metrics` (host, port) also serves
    Prometheus metrics there; it is bound first, and a bind failure raises
    ConfigError before anything is attached. With `keep_attached`, SIGTERM leaves everything attached and
    pinned for the next run to adopt.
    """
    config = load_config(config_path)
    source = AgentSource()
    # bound before anything is made or attached: a bad address is exit 2 with nothing to undo
    exporter = serve(metrics, source) if metrics is not None else None
    try:
        # so is the status socket (it answers once the agent has started): one in use is another agent's
        server = StatusServer({"status": lambda: agent.status(), "pause": lambda: agent.pause(),
                               "resume": lambda: agent.resume()})
    except BaseException:
        if exporter is not None:
            exporter.close()
        raise
    try:
        agent = Agent(config, mode, first, priority, object_path, upgrade)
    except BaseException:
        server.close()
        if exporter is not None:
            exporter.close()
        raise
    source.agent = agent
    stop, reload, wake = threading.Event(), threading.Event(), threading.Event()
    config_watch = ConfigWatch(config_path)  # a ConfigMap update reloads like SIGHUP

    def on_signal(event: threading.Event) -> Callable[..., None]:
        return lambda *_: (event.set(), wake.set())

    signal.signal(signal.SIGTERM, on_signal(stop))
    signal.signal(signal.SIGINT, on_signal(stop))
    signal.signal(signal.SIGHUP, on_signal(reload))
    try:
        agent.start()
    except BaseException:
        server.close()
        if exporter is not None:
            exporter.close()
        raise
    server.start()
    log.info(
        "mirroring; SIGHUP reloads %s, SIGTERM or Ctrl-C %s and exits",
        config_path,
        f"leaves it attached, pinned at {agent.pin_dir}," if keep_attached else "detaches",
    )
    try:
        while not stop.is_set():
            # a signal ends the wait at once; otherwise refresh every second
            wake.wait(REFRESH_SECONDS)
            wake.clear()
            if stop.is_set():
                break
            if config_watch.changed():
                log.info("%s changed; reloading", config_path)
                reload.set()
            if reload.is_set():
                reload.clear()
                try:
                    agent.apply(load_config(config_path))
                except BpftapError as exc:
                    log.error("reload refused, the running rules stay: %s", exc)
            agent.refresh_sessions()
            if agent.pods is not None:
                agent.pods.sync()
    finally:
        if exporter is not None:
            exporter.close()
        server.close()
        agent.keep = keep_attached
        agent.stop()
        if keep_attached:
            log.info("left attached and pinned at %s for the next run; bye", agent.pin_dir)
        else:
            log.info("detached; bye")
    return 0
