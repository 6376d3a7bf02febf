/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * license_debug.h: the licence of the debug build only (`make debug`):
 * GPL, so the verifier allows bpf_printk (dbg() in maps.bpf.h). The default
 * object is BSD-2-Clause and uses no GPL-only helper.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";
