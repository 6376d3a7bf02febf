"""bpftap: mirror live traffic from Linux interfaces to remote analysers with eBPF."""

__version__ = "0.1.0"
