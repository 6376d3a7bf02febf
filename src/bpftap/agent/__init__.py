"""The agent: the long-running side of bpftap."""
