"""Collector: receive VXLAN copies over UDP, decapsulate them and record pcapng.

Stages (house style H7): ``server`` (socket reader) -> ``vxlan`` (pure decap)
-> ``pcapng`` (writer with rotation); ``cli`` adds the ``collect`` subcommand.
"""
