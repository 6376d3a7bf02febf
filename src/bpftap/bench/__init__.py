"""`bpftap bench`: measure bpftap against same-run baselines on the lab (see README, "Performance").

Modules by tier: `progcost` (1, BPF_PROG_TEST_RUN), `tcp` (2, bulk TCP),
`loss` (3, loss against channel utilisation), `memory` (4); `labkit` holds
the lab plumbing they share, `stats` and `report` the pure statistics and
text, `plots` the PNGs, `sysinfo` what the machine was, `cli` the command.
"""
