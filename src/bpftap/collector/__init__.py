"""Collector: receive tunnelled copies, decapsulate them and record pcapng.

Stages (house style H7): ``sockets`` (UDP and raw IP sockets) -> ``server``
(receive loop, counters) -> ``bpftap.tunnels`` (pure decoders, one per
tunnel type) -> ``pcapng`` (writer with rotation); ``cli`` adds the
``collect`` subcommand.
"""
