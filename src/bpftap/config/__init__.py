"""Stage one of the control plane: the YAML configuration, validated into a plain model.

    config/ (this package) -> compile/ (pure: map entries) -> agent/ (writes the maps)

- `model`: Config, Source, Session, Rule, Link as frozen dataclasses, and their limits;
- `values`: parsers of single values (CIDRs, ports, protocols, names) and the strict YAML loader;
- `fields`: parsers of rule fields (VLAN id, TCP flags, interface) and rates;
- `pod_selector`: `sources[].pods` selectors, model and parser;
- `validate`: `load_config` / `parse_config`, every mistake reported at once.

What the rest of bpftap needs is importable from here; nothing here touches
the kernel.
"""

from __future__ import annotations

from bpftap.config.model import (
    Action,
    Config,
    Direction,
    Link,
    Rule,
    Session,
    Source,
)
from bpftap.config.pod_selector import PodSelector
from bpftap.config.validate import InvalidConfigError, load_config, parse_config
from bpftap.config.values import ANY_PORTS, IPAddress, IPNetwork, PortRange, Ports

__all__ = [
    "ANY_PORTS",
    "Action",
    "Config",
    "Direction",
    "IPAddress",
    "IPNetwork",
    "InvalidConfigError",
    "Link",
    "PodSelector",
    "PortRange",
    "Ports",
    "Rule",
    "Session",
    "Source",
    "load_config",
    "parse_config",
]
