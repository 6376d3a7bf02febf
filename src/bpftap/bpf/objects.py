"""Loaded BPF objects: open and load a clang object, and handles on its programs and maps.

Opening reads the file; everything that depends on the kernel (the verifier,
map creation) happens in `load()`. `close()` releases every fd; programs stay
attached only through links or tc filters that hold their own references.
"""

from __future__ import annotations

import array
import ctypes
import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from bpftap.bpf import pins
from bpftap.bpf.libbpf import (
    BPF_PROG_TYPE_SCHED_CLS,
    RING_SAMPLE_FN,
    BpfProgLoadOpts,
    BpfTestRunOpts,
    check,
    check_ptr,
    lib,
    num_possible_cpus,
    sized,
)
from bpftap.errors import BpfError, BpftapError

T = TypeVar("T", bound=ctypes.Structure)
# what a map element can be: a struct, or a plain u32 or u64
Element = ctypes.Structure | ctypes.c_uint32 | ctypes.c_uint64


_U32 = ctypes.c_uint32


class SkBuff(ctypes.Structure):
    """struct __sk_buff from linux/bpf.h: the context of a test run (only some fields may be set)."""

    _fields_ = [
        *[(n, _U32) for n in ("len", "pkt_type", "mark", "queue_mapping", "protocol", "vlan_present")],
        *[(n, _U32) for n in ("vlan_tci", "vlan_proto", "priority", "ingress_ifindex", "ifindex", "tc_index")],
        ("cb", _U32 * 5),
        *[(n, _U32) for n in ("hash", "tc_classid", "data", "data_end", "napi_id", "family")],
        ("remote_ip4", _U32),
        ("local_ip4", _U32),
        ("remote_ip6", _U32 * 4),
        ("local_ip6", _U32 * 4),
        *[(n, _U32) for n in ("remote_port", "local_port", "data_meta")],
        ("flow_keys", ctypes.c_uint64),
        ("tstamp", ctypes.c_uint64),
        ("wire_len", _U32),
        ("gso_segs", _U32),
        ("sk", ctypes.c_uint64),
        ("gso_size", _U32),
        ("tstamp_type", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("hwtstamp", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class TestRun:
    """What BPF_PROG_TEST_RUN returned for one input."""

    retval: int
    data: bytes
    duration_ns: int
    ctx: SkBuff | None


class Program:
    """A loaded program of an object."""

    def __init__(self, name: str, fd: int) -> None:
        self.name, self.fd = name, fd

    def test_run(self, data: bytes, ctx: SkBuff | None = None, repeat: int = 1, out_size: int = 0) -> TestRun:
        """Run the program on `data` through BPF_PROG_TEST_RUN.

        `ctx` optionally sets the skb's mark, ifindex and the few other fields
        the kernel allows; the skb as the program left it comes back in
        `TestRun.ctx`. The retval is signed, so the neutral verdict reads as -1.
        Raises BpfError if the kernel refuses the run.
        """
        buf_in = ctypes.create_string_buffer(data, len(data))
        out_len = out_size or len(data) + 512
        buf_out = ctypes.create_string_buffer(out_len)
        ctx_out: SkBuff | None = None
        opts = sized(
            BpfTestRunOpts,
            data_in=ctypes.cast(buf_in, ctypes.c_void_p),
            data_size_in=len(data),
            data_out=ctypes.cast(buf_out, ctypes.c_void_p),
            data_size_out=out_len,
            repeat=repeat,
        )
        if ctx is not None:
            ctx_out = SkBuff()
            opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
            opts.ctx_size_in = ctypes.sizeof(ctx)
            opts.ctx_out = ctypes.cast(ctypes.pointer(ctx_out), ctypes.c_void_p)
            opts.ctx_size_out = ctypes.sizeof(ctx)
        check(lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)), "test run", self.name)
        retval = ctypes.c_int32(opts.retval).value
        return TestRun(retval, buf_out.raw[: opts.data_size_out], opts.duration, ctx_out)


class Map:
    """A map of a loaded object; keys are u32 indexes in every bpftap map."""

    def __init__(self, name: str, fd: int, percpu: bool = False) -> None:
        self.name, self.fd, self.percpu = name, fd, percpu

    def update(self, index: int, value: Element) -> None:
        """Write one element. Raises BpfError (e.g. E2BIG past max_entries)."""
        key = ctypes.c_uint32(index)
        ret = lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0)
        check(ret, f"update map {self.name}[{index}]")

    def update_percpu(self, index: int, values: ctypes.Array[Any]) -> None:
        """Write one element of a per-CPU map: `values` holds one value per possible CPU."""
        key = ctypes.c_uint32(index)
        check(lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(values), 0),
              f"update map {self.name}[{index}]")

    def update_batch(self, first: int, values: ctypes.Array[Any]) -> None:
        """Write len(values) consecutive elements from index `first` in one call (array maps)."""
        n = len(values)
        keys = (ctypes.c_uint32 * n).from_buffer(array.array("I", range(first, first + n)))
        count = ctypes.c_uint32(n)
        ret = lib.bpf_map_update_batch(self.fd, keys, values, ctypes.byref(count), None)
        check(ret, f"update map {self.name}[{first}:{first + n}]")

    def update_key(self, key: Element, value: Element) -> None:
        """Write one element under a struct key (hash and LPM maps)."""
        check(lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0), f"update map {self.name}")

    def delete_key(self, key: Element) -> None:
        """Delete one element; a missing one is not an error."""
        ret = lib.bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret < 0 and -ret != 2 and ctypes.get_errno() != 2:
            check(ret, f"delete from map {self.name}")

    def keys(self, key_type: type[T]) -> list[T]:
        """Every key of a hash or LPM trie map. Raises BpfError if the kernel refuses to walk it."""
        found: list[T] = []
        while True:
            key = key_type()
            prev = ctypes.byref(found[-1]) if found else None
            ret = lib.bpf_map_get_next_key(self.fd, prev, ctypes.byref(key))
            if ret == -errno.ENOENT:
                return found
            check(ret, f"walk map {self.name}")
            found.append(key)

    def lookup(self, index: int, value_type: type[T]) -> T:
        """Read one element of a plain (not per-CPU) map."""
        key = ctypes.c_uint32(index)
        value = value_type()
        check(lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)),
              f"read map {self.name}[{index}]")
        return value

    def lookup_percpu(self, index: int, value_type: type[T]) -> list[T]:
        """Read every CPU's slot of one element of a per-CPU map."""
        key = ctypes.c_uint32(index)
        slots = (value_type * num_possible_cpus())()
        check(lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(slots)),
              f"read map {self.name}[{index}]")
        return list(slots)

    def sum_percpu(self, index: int, value_type: type[T]) -> T:
        """One element of a per-CPU map of u64 fields, summed over CPUs."""
        total = value_type()
        for slot in self.lookup_percpu(index, value_type):
            for name, _ in value_type._fields_:  # type: ignore[misc]
                setattr(total, name, getattr(total, name) + getattr(slot, name))
        return total


class U64(ctypes.Structure):
    """A bare u64 map value, summable like the stats structs."""

    _fields_ = [("value", ctypes.c_uint64)]


class BpfObject:
    """An opened (then loaded) clang BPF object file."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path, self._obj = path, handle

    @classmethod
    def open(cls, path: Path) -> BpfObject:
        """Open `path`; raises BpfError if it is missing or not a BPF object."""
        if not path.exists():
            raise BpfError("open BPF object", str(path), 2, "run 'make build' first")
        return cls(path, check_ptr(lib.bpf_object__open_file(str(path).encode(), None), "open BPF object", str(path)))

    def load(self) -> BpfObject:
        """Create the maps and load every program; verifier errors are logged by libbpf."""
        check(
            lib.bpf_object__load(self._obj),
            "load BPF object",
            self.path.name,
            "the verifier log is above (run with -v for all of it)",
        )
        return self

    def keep_verifier_logs(self, level: int = 4, size: int = 1 << 20) -> dict[str, ctypes.Array[ctypes.c_char]]:
        """Before load(): a verifier log buffer for each program, by name; read them after load() or its failure.

        Level 4 (BPF_LOG_STATS) keeps the summary lines: processed insns, states,
        stack depth, verification time; 1 adds every instruction's state.
        """
        bufs = {}
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            name = lib.bpf_program__name(prog).decode()
            bufs[name] = ctypes.create_string_buffer(size)
            check(lib.bpf_program__set_log_buf(prog, bufs[name], size), "set verifier log buffer", name)
            check(lib.bpf_program__set_log_level(prog, level), "set verifier log level", name)
            prog = lib.bpf_object__next_program(self._obj, prog)
        return bufs

    def set_max_entries(self, name: str, entries: int) -> None:
        """Size a map before load(). Raises BpfError if the object is loaded or the map is missing."""
        handle = check_ptr(lib.bpf_object__find_map_by_name(self._obj, name.encode()), "find map", name)
        check(lib.bpf_map__set_max_entries(handle, entries), f"size map {name}", str(entries))

    def pin_maps(self, directory: Path) -> list[str]:
        """Before load(): pin every map of the object (but .rodata/.bss) at `directory`/NAME.

        load() then reuses a map already pinned there, contents and all, and
        creates and pins the others. Every map is picked up, so a map a new
        build adds needs no change here. Returns the names of the maps found
        pinned. Raises BpftapError naming the map if a pinned one differs from
        the object's in type, key or value size, entries or flags (pins of an
        incompatible build).
        """
        found = []
        handle = lib.bpf_object__next_map(self._obj, None)
        while handle:
            name = lib.bpf_map__name(handle).decode()
            if not lib.bpf_map__is_internal(handle):
                path = directory / name
                if path.exists():
                    have = pins.map_info(path)
                    want = (lib.bpf_map__type(handle), lib.bpf_map__key_size(handle), lib.bpf_map__value_size(handle),
                            lib.bpf_map__max_entries(handle), lib.bpf_map__map_flags(handle))
                    got = (have.type, have.key_size, have.value_size, have.max_entries, have.map_flags)
                    if got != want:
                        raise BpftapError(
                            f"map {name} pinned at {path} is not the one {self.path.name} declares (type, key size, "
                            f"value size, entries, flags: pinned {got}, object {want}): the pins are from an "
                            "incompatible build; run 'bpftap detach' to remove them (mirroring stops), then start again"
                        )
                    found.append(name)
                check(lib.bpf_map__set_pin_path(handle, str(path).encode()), "set pin path", str(path))
            handle = lib.bpf_object__next_map(self._obj, handle)
        directory.mkdir(parents=True, exist_ok=True)
        return found

    def program(self, name: str) -> Program:
        """A loaded program by its function name."""
        prog = check_ptr(lib.bpf_object__find_program_by_name(self._obj, name.encode()), "find program", name)
        return Program(name, check(lib.bpf_program__fd(prog), "program fd", name))

    def map(self, name: str, percpu: bool = False) -> Map:
        """A map by its name in the object."""
        handle = check_ptr(lib.bpf_object__find_map_by_name(self._obj, name.encode()), "find map", name)
        return Map(name, check(lib.bpf_map__fd(handle), "map fd", name), percpu)

    def close(self) -> None:
        """Release the object, its maps and programs (idempotent)."""
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = 0

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class RingBuffer:
    """libbpf's reader of a BPF ring buffer map: `callback(data_address, size)` for each record, on poll()."""

    def __init__(self, ring: Map, callback: Callable[[int, int], int]) -> None:
        self._callback = RING_SAMPLE_FN(lambda _ctx, data, size: callback(data, size))  # alive with the reader
        self._rb = lib.ring_buffer__new(ring.fd, self._callback, None, None)
        if not self._rb:
            raise BpfError("open ring buffer", ring.name, ctypes.get_errno())

    def poll(self, timeout_ms: int) -> None:
        """Hand what the ring holds to the callback, waiting up to `timeout_ms` for a first record."""
        lib.ring_buffer__poll(self._rb, timeout_ms)

    def free(self) -> None:
        if self._rb:
            lib.ring_buffer__free(self._rb)
            self._rb = None


def load_raw_program(name: str, insns: bytes, license: bytes, what: str) -> int:
    """Load a SCHED_CLS program from raw struct bpf_insn bytes; returns its fd (the caller closes it).

    Raises BpfError naming `what`, with the verifier's last lines (the load is
    tried again with a log only when the first one fails).
    """
    count = len(insns) // 8
    fd = lib.bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, name.encode(), license, insns, count, sized(BpfProgLoadOpts))
    if fd >= 0:
        return int(fd)
    size = 1 << 22
    log = ctypes.create_string_buffer(size)
    opts = sized(BpfProgLoadOpts, log_level=1, log_size=size, log_buf=ctypes.cast(log, ctypes.c_void_p))
    fd = lib.bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, name.encode(), license, insns, count, opts)
    if fd >= 0:
        return int(fd)
    tail = " | ".join(log.value.decode(errors="replace").strip().splitlines()[-3:])
    raise BpfError(f"load {what} ({count} instructions)", errno=ctypes.get_errno() or -fd, hint=f"verifier: {tail}")
