# bpftap: `make demo` and `make test` do all set-up themselves (Debian 12, as root).
SHELL := /bin/bash
.DELETE_ON_ERROR:
.PHONY: all deps build debug lint test test-unit demo bench kernels soak clean

ARCH := $(shell uname -m)
VENV := .venv
PY := $(VENV)/bin/python
CLANG ?= clang
# bpf/cflags, the one list of BPF compile flags (deploy/Dockerfile uses it too). In it,
# -disable-block-placement: clang otherwise lays a loop out so that its back edge is a fall-through,
# which the verifier of Linux 6.1 refuses ("back-edge from insn"); see README "Kernel matrix"
BPF_CFLAGS := $(shell cat bpf/cflags) -I/usr/include/$(ARCH)-linux-gnu
APT_PACKAGES := clang llvm libbpf-dev libpcap0.8 bpftool iproute2 ethtool iputils-ping tshark iperf3 python3-venv linux-libc-dev libc6-dev tmux
BPF_OBJ := build/bpf/mirror_tc.bpf.o
PKG_OBJ := src/bpftap/data/mirror_tc.bpf.o
DEBUG_OBJ := build/bpf/mirror_tc.debug.bpf.o
# programs written for the tests (another vendor's TC program, for coexistence; a CNI's redirecting one)
TEST_BPF_OBJS := build/bpf/counter.bpf.o build/bpf/cni_redirect.bpf.o
ifeq ($(V),1)
Q :=
else
Q := @
endif

all: build

# apt: install only what is missing, so a second run is quick and offline
define apt_install
	$(Q)missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing >/dev/null; \
	fi
endef

deps: $(VENV)/.installed
	$(call apt_install,$(APT_PACKAGES))

$(VENV)/.installed: pyproject.toml
	$(Q)command -v python3 >/dev/null || (apt-get update -qq && apt-get install -y -qq python3 python3-venv)
	$(Q)test -x $(PY) || python3 -m venv $(VENV) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && python3 -m venv $(VENV))
	$(Q)$(PY) -m pip install -q --upgrade pip
	$(Q)$(PY) -m pip install -q -e '.[dev]'
	$(Q)touch $@

build: deps $(PKG_OBJ) $(DEBUG_OBJ) $(TEST_BPF_OBJS)

build/bpf/%.bpf.o: bpf/%.bpf.c bpf/*.h | deps
	$(Q)mkdir -p $(@D)
	@echo "  CLANG   $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(TEST_BPF_OBJS): build/bpf/%.bpf.o: tests/bpf_progs/%.bpf.c | deps
	$(Q)mkdir -p $(@D)
	@echo "  CLANG   $@"
	$(Q)$(CLANG) -g -O2 -target bpf -Wall -Werror -I/usr/include/$(ARCH)-linux-gnu -c $< -o $@

$(PKG_OBJ): $(BPF_OBJ)
	$(Q)mkdir -p $(@D) && cp $< $@

# GPL build: bpf_printk allowed (to /sys/kernel/tracing/trace_pipe), same behaviour otherwise
debug: deps $(DEBUG_OBJ)

$(DEBUG_OBJ): bpf/mirror_tc.bpf.c bpf/*.h | deps
	$(Q)mkdir -p $(@D)
	@echo "  CLANG   $@ (debug, GPL)"
	$(Q)$(CLANG) $(BPF_CFLAGS) -DMIRROR_DEBUG -c $< -o $@

# ruff over all the Python (src/ tests/ tools/), then mypy --strict over src/bpftap (config: pyproject.toml
# [tool.ruff], [tool.mypy]); a finding fails it. The first step of `make test`: seconds, and no build needed.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/mypy

test: lint build
	$(Q)mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: build
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# `bpftap bench`: every tier on the lab (about 10 minutes, root); results in bench/results/.
# Not part of `make test`. BENCH_ARGS is passed on, e.g. BENCH_ARGS="--tiers 1".
BENCH_OBJ := build/bench/empty.bpf.o

$(BENCH_OBJ): bench/empty.bpf.c | deps
	$(Q)mkdir -p $(@D)
	@echo "  CLANG   $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(VENV)/.bench-installed: pyproject.toml | deps
	$(Q)$(PY) -m pip install -q -e '.[bench]'
	$(Q)touch $@

bench: build $(BENCH_OBJ) $(VENV)/.bench-installed
	$(Q)mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(VENV)/bin/bpftap bench $(BENCH_ARGS)

# the kernel matrix (README "Kernel matrix"): the kernel tier, attach modes, the real tunnel receivers and a
# short lab on this machine's kernel and, under qemu, Debian 12's Linux 6.1; tables in build/kernels/.
# KERNEL_ROWS picks rows (host, 6.1, 6.12); `make soak` mirrors for SOAK seconds in the 6.1 guest.
KERNEL_ROWS ?= host,6.1
SOAK ?= 600
KERNELS_APT := qemu-system-x86 busybox-static

kernels: build
	$(call apt_install,$(KERNELS_APT),--no-install-recommends)
	$(Q)mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(PY) tools/kernels/matrix.py --rows $(KERNEL_ROWS)

soak: build
	$(call apt_install,$(KERNELS_APT),--no-install-recommends)
	$(PY) tools/kernels/matrix.py --rows 6.1 --soak $(SOAK)

demo: build
	$(VENV)/bin/bpftap demo

clean:
	rm -rf build src/bpftap/data
