"""Stage two of the control plane: a validated Config in, map entries out (pure: no kernel, no libbpf).

    config/ -> compile/ (this package) -> agent/ (writes the maps)

- `slots`: each session's slot in the `sessions` map and rules' masks;
- `classifier`: the rules compiled into the classifier's class tables, and a Python run of them;
- `reference`: the rule set's meaning read straight off the Config, the classifier's oracle;
- `sessions`: one collector's `sessions` record, snaplen policy, group flow buckets;
- `ids`: counter and source ids that stay put across reloads.

Nothing here imports bpftap.bpf, bpftap.netlink or pyroute2, or runs a
process (tests/unit/test_layers.py checks it).
"""
