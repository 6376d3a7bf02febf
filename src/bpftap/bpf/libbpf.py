"""ctypes declarations of every libbpf call bpftap makes (the system libbpf 1.x).

Nothing else in bpftap calls ctypes on libbpf. Every function is declared with
`argtypes`/`restype`, loaded with `use_errno=True`; `check()` turns libbpf's
negative-errno convention into BpfError. libbpf's own log goes to the
`bpftap.libbpf` logger (warnings as warnings, the rest at DEBUG).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

from bpftap.errors import BpfError, NotSupportedError

log = logging.getLogger("bpftap.libbpf")

c_size_t = ctypes.c_size_t
c_u32 = ctypes.c_uint32
c_void_p = ctypes.c_void_p

# enum bpf_tc_attach_point
BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
# enum bpf_attach_type values used with bpf_link_create / bpf_prog_query
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_XDP = 37
# flags
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_REPLACE = 1 << 2
BPF_TC_F_REPLACE = 1 << 0
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SCHED_CLS = 3
# enum bpf_link_type values of the links bpftap pins
BPF_LINK_TYPE_XDP = 6
BPF_LINK_TYPE_TCX = 11


class BpfTcHook(ctypes.Structure):
    """struct bpf_tc_hook."""

    _fields_ = [("sz", c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int), ("parent", c_u32)]


class BpfTcOpts(ctypes.Structure):
    """struct bpf_tc_opts."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", c_u32),
        ("prog_id", c_u32),
        ("handle", c_u32),
        ("priority", c_u32),
    ]


class BpfLinkCreateOpts(ctypes.Structure):
    """struct bpf_link_create_opts (1.1.2 layout; only `flags` is used, the rest stays zero)."""

    _fields_ = [
        ("sz", c_size_t),
        ("flags", c_u32),
        ("iter_info", c_void_p),
        ("iter_info_len", c_u32),
        ("target_btf_id", c_u32),
        ("_union", ctypes.c_uint8 * 32),
    ]


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_u32),
        ("data_size_out", c_u32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_u32),
        ("ctx_size_out", c_u32),
        ("retval", c_u32),
        ("repeat", ctypes.c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


class BpfProgQueryOpts(ctypes.Structure):
    """struct bpf_prog_query_opts."""

    _fields_ = [
        ("sz", c_size_t),
        ("query_flags", c_u32),
        ("attach_flags", c_u32),
        ("prog_ids", ctypes.POINTER(c_u32)),
        ("prog_cnt", c_u32),
        ("prog_attach_flags", ctypes.POINTER(c_u32)),
    ]


class BpfProgInfo(ctypes.Structure):
    """The leading part of struct bpf_prog_info, up to `name`."""

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_u32),
        ("xlated_prog_len", c_u32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", c_u32),
        ("nr_map_ids", c_u32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class BpfMapInfo(ctypes.Structure):
    """The leading part of struct bpf_map_info: what makes a pinned map reusable by an object."""

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", ctypes.c_char * 16),
    ]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info up to its union's xdp/tcx member: (ifindex, attach_type) for tcx, ifindex for xdp."""

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("prog_id", c_u32),
        ("_pad", c_u32),
        ("ifindex", c_u32),
        ("attach_type", c_u32),
        ("_union_rest", ctypes.c_uint64 * 4),
    ]


class BpfProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts (libbpf 1.1, up to log_buf)."""

    _fields_ = [
        ("sz", c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_int),
        ("prog_btf_fd", c_u32),
        ("prog_flags", c_u32),
        ("prog_ifindex", c_u32),
        ("kern_version", c_u32),
        ("attach_btf_id", c_u32),
        ("attach_prog_fd", c_u32),
        ("attach_btf_obj_fd", c_u32),
        ("fd_array", c_void_p),
        ("func_info", c_void_p),
        ("func_info_cnt", c_u32),
        ("func_info_rec_size", c_u32),
        ("line_info", c_void_p),
        ("line_info_cnt", c_u32),
        ("line_info_rec_size", c_u32),
        ("log_level", c_u32),
        ("log_size", c_u32),
        ("log_buf", c_void_p),
    ]


def sized(struct_type: type[ctypes.Structure], **fields: Any) -> Any:
    """An opts struct with `sz` set, as libbpf's LIBBPF_OPTS does."""
    value = struct_type(**fields)
    value.sz = ctypes.sizeof(struct_type)
    return value


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, c_void_p)
# ring_buffer_sample_fn: (ctx, data, size) -> 0 to go on
RING_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, c_void_p, c_void_p, c_size_t)

_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "libbpf_set_print": ([_PRINT_FN], c_void_p),
    "bpf_object__open_file": ([ctypes.c_char_p, c_void_p], c_void_p),
    "bpf_object__load": ([c_void_p], ctypes.c_int),
    "bpf_object__close": ([c_void_p], None),
    "bpf_object__find_program_by_name": ([c_void_p, ctypes.c_char_p], c_void_p),
    "bpf_object__find_map_by_name": ([c_void_p, ctypes.c_char_p], c_void_p),
    "bpf_program__fd": ([c_void_p], ctypes.c_int),
    "bpf_object__next_program": ([c_void_p, c_void_p], c_void_p),
    "bpf_program__name": ([c_void_p], ctypes.c_char_p),
    "bpf_program__set_log_level": ([c_void_p, c_u32], ctypes.c_int),
    "bpf_program__set_log_buf": ([c_void_p, c_void_p, c_size_t], ctypes.c_int),
    "bpf_map__fd": ([c_void_p], ctypes.c_int),
    "bpf_map_update_elem": ([ctypes.c_int, c_void_p, c_void_p, ctypes.c_uint64], ctypes.c_int),
    "bpf_map_lookup_elem": ([ctypes.c_int, c_void_p, c_void_p], ctypes.c_int),
    "bpf_map_delete_elem": ([ctypes.c_int, c_void_p], ctypes.c_int),
    "bpf_map_update_batch": ([ctypes.c_int, c_void_p, c_void_p, ctypes.POINTER(c_u32), c_void_p], ctypes.c_int),
    "bpf_map__set_max_entries": ([c_void_p, c_u32], ctypes.c_int),
    "bpf_object__next_map": ([c_void_p, c_void_p], c_void_p),
    "bpf_map__name": ([c_void_p], ctypes.c_char_p),
    "bpf_map__is_internal": ([c_void_p], ctypes.c_bool),
    "bpf_map__type": ([c_void_p], ctypes.c_int),
    "bpf_map__key_size": ([c_void_p], c_u32),
    "bpf_map__value_size": ([c_void_p], c_u32),
    "bpf_map__max_entries": ([c_void_p], c_u32),
    "bpf_map__map_flags": ([c_void_p], c_u32),
    "bpf_map__set_pin_path": ([c_void_p, ctypes.c_char_p], ctypes.c_int),
    "bpf_map_get_next_key": ([ctypes.c_int, c_void_p, c_void_p], ctypes.c_int),
    "bpf_obj_pin": ([ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
    "bpf_obj_get": ([ctypes.c_char_p], ctypes.c_int),
    "bpf_link_update": ([ctypes.c_int, ctypes.c_int, c_void_p], ctypes.c_int),
    "bpf_prog_load": (
        [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, c_void_p, c_size_t, ctypes.POINTER(BpfProgLoadOpts)],
        ctypes.c_int,
    ),
    "bpf_prog_test_run_opts": ([ctypes.c_int, ctypes.POINTER(BpfTestRunOpts)], ctypes.c_int),
    "bpf_tc_hook_create": ([ctypes.POINTER(BpfTcHook)], ctypes.c_int),
    "bpf_tc_hook_destroy": ([ctypes.POINTER(BpfTcHook)], ctypes.c_int),
    "bpf_tc_attach": ([ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)], ctypes.c_int),
    "bpf_tc_detach": ([ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)], ctypes.c_int),
    "bpf_tc_query": ([ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)], ctypes.c_int),
    "bpf_link_create": (
        [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(BpfLinkCreateOpts)],
        ctypes.c_int,
    ),
    "bpf_prog_query_opts": ([ctypes.c_int, ctypes.c_int, ctypes.POINTER(BpfProgQueryOpts)], ctypes.c_int),
    "bpf_prog_get_fd_by_id": ([c_u32], ctypes.c_int),
    "bpf_obj_get_info_by_fd": ([ctypes.c_int, c_void_p, ctypes.POINTER(c_u32)], ctypes.c_int),
    "libbpf_num_possible_cpus": ([], ctypes.c_int),
    "ring_buffer__new": ([ctypes.c_int, RING_SAMPLE_FN, c_void_p, c_void_p], c_void_p),
    "ring_buffer__poll": ([c_void_p, ctypes.c_int], ctypes.c_int),
    "ring_buffer__free": ([c_void_p], None),
    "libbpf_probe_bpf_map_type": ([ctypes.c_int, c_void_p], ctypes.c_int),
    "libbpf_probe_bpf_prog_type": ([ctypes.c_int, c_void_p], ctypes.c_int),
}


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise NotSupportedError("load libbpf", name, 2, "install libbpf1 (apt-get install libbpf1)") from exc
    for fn, (argtypes, restype) in _SIGNATURES.items():
        func = getattr(lib, fn)
        func.argtypes, func.restype = argtypes, restype
    return lib


lib = _load()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, c_size_t, ctypes.c_char_p, c_void_p]

# libbpf_print_level: 0 WARN, 1 INFO, 2 DEBUG
_LEVELS = {0: logging.WARNING, 1: logging.DEBUG, 2: logging.DEBUG}


def _print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if text:
        log.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    return 0


_print_cb = _PRINT_FN(_print)  # kept referenced: libbpf holds the pointer
lib.libbpf_set_print(_print_cb)


def check(ret: int, op: str, target: str = "", hint: str = "") -> int:
    """Return `ret` if it is >= 0, else raise BpfError with the errno libbpf reported."""
    if ret >= 0:
        return ret
    raise BpfError(op, target, -ret if ret < -1 else ctypes.get_errno(), hint)


def check_ptr(ptr: int | None, op: str, target: str = "") -> int:
    """Return a non-NULL pointer, else raise BpfError from errno."""
    if not ptr:
        raise BpfError(op, target, ctypes.get_errno())
    return ptr


def num_possible_cpus() -> int:
    """The per-CPU map slot count."""
    return check(lib.libbpf_num_possible_cpus(), "count possible CPUs")
