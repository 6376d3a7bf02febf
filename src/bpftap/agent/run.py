"""`bpftap run` (and `bpftap mirror`): the agent in the foreground, until SIGTERM or SIGINT.

`run` reads a config file, `mirror` builds its config from the command
line (`bpftap.mirror`); both serve through `run_config`. SIGHUP, or a
change of the config file (a ConfigMap update), reloads; every
REFRESH_SECONDS the sessions' next hops are refreshed and pod sources
synced. The status socket and, if asked, the metrics endpoint serve from
here; `bpftap.agent.daemon.Agent` does the work.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpftap.agent.configwatch import ConfigWatch
from bpftap.agent.daemon import REFRESH_SECONDS, Agent
from bpftap.agent.metrics import AgentSource, serve
from bpftap.agent.status import StatusServer
from bpftap.bpf import tc
from bpftap.config import Config, load_config
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
    return run_config(load_config(config_path), mode, first, priority, object_path, metrics=metrics, upgrade=upgrade,
                 keep_attached=keep_attached, config_path=config_path)


def run_config(
    config: Config,
    mode: tc.Mode = tc.Mode.AUTO,
    first: bool = True,
    priority: int = 1,
    object_path: Path | None = None,
    *,
    metrics: tuple[str, int] | None = None,
    upgrade: bool = False,
    keep_attached: bool = False,
    config_path: str | None = None,
    duration: float | None = None,
    tick: Callable[[Agent], None] | None = None,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """The agent for a validated `config`, until SIGTERM/SIGINT or `duration` seconds of mirroring; returns 0.

    `run` passes `config_path`: SIGHUP and a change of that file reload it.
    Without one (`bpftap mirror`) there is nothing to reload. `tick(agent)`
    runs once attached, then about every REFRESH_SECONDS; `done(status)` gets
    the agent's last status before it detaches. Raises what `Agent.start`
    raises, with nothing left attached.
    """
    source = AgentSource()
    # bound before anything is made or attached: a bad address is exit 2 with nothing to undo
    exporter = serve(metrics, source) if metrics is not None else None
    try:
        # so is the status socket (it answers once the agent has started): one in use is another agent's.
        # Lambdas, not bound methods: `agent` is made below
        server = StatusServer({"status": lambda: agent.status(), "pause": lambda: agent.pause(),  # noqa: PLW0108
                               "resume": lambda: agent.resume()})  # noqa: PLW0108
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
    # a ConfigMap update reloads like SIGHUP
    config_watch = ConfigWatch(config_path) if config_path is not None else None

    def on_signal(event: threading.Event) -> Callable[..., None]:
        def handler(*_: object) -> None:
            event.set()
            wake.set()

        return handler

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
    deadline = None if duration is None else time.monotonic() + duration  # mirroring from now on
    log.info(
        "mirroring; %sSIGTERM or Ctrl-C %s and exits",
        f"SIGHUP reloads {config_path}, " if config_path is not None else "",
        f"leaves it attached, pinned at {agent.pin_dir}," if keep_attached else "detaches",
    )
    try:
        if tick is not None:
            tick(agent)
        while not stop.is_set():
            # a signal ends the wait at once; otherwise refresh every second
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            wake.wait(REFRESH_SECONDS if left is None else min(left, REFRESH_SECONDS))
            wake.clear()
            if stop.is_set():
                break
            hup, changed = reload.is_set(), config_watch is not None and config_watch.changed()
            reload.clear()
            if hup and config_path is None:
                log.info("SIGHUP: no config file to reload")
            elif config_path is not None and (hup or changed):
                try:
                    config = load_config(config_path)
                    # SIGHUP always applies (it also re-resolves links: and every session's next hop); a file
                    # rewritten with the same content (a ConfigMap's periodic sync) changes nothing
                    if hup or config != agent.config:
                        if changed:
                            log.info("%s changed; reloading", config_path)
                        agent.apply(config)
                    else:
                        log.info("%s rewritten with the same content; the running rules stay", config_path)
                except BpftapError as exc:
                    log.error("reload refused, the running rules stay: %s", exc)
            agent.refresh_sessions()
            if agent.pods is not None:
                agent.pods.sync()
            if tick is not None:
                tick(agent)
    finally:
        if exporter is not None:
            exporter.close()
        server.close()
        try:
            if done is not None:
                done(agent.status())
        finally:  # whatever the report does, detach
            agent.keep = keep_attached
            agent.stop()
        if keep_attached:
            log.info("left attached and pinned at %s for the next run; bye", agent.pin_dir)
        else:
            log.info("detached; bye")
    return 0
