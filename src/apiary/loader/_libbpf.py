"""ctypes declarations for libbpf (Debian's libbpf 1.1). The only module that names C symbols.

Every function used anywhere in apiary is declared in ``_SIGNATURES`` with its argument and
result types, so a wrong call is a Python TypeError, never memory corruption.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

c_u32 = c_uint32
c_u64 = c_uint64


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf") or "libbpf.so"):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise OSError("libbpf.so.1 not found: install libbpf1 (apt-get install libbpf1 libbpf-dev)")


lib = _load()
libc = ctypes.CDLL(None, use_errno=True)


class BpfObjectOpenOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_stub", c_u32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_u32),
    ]


class BpfTcHook(Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_u32)]


class BpfTcOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_u32),
        ("prog_id", c_u32),
        ("handle", c_u32),
        ("priority", c_u32),
    ]


class BpfUprobeOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_u64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class BpfTracepointOpts(Structure):
    _fields_ = [("sz", c_size_t), ("bpf_cookie", c_u64)]


class BpfKprobeOpts(Structure):
    _fields_ = [("sz", c_size_t), ("bpf_cookie", c_u64), ("offset", c_size_t), ("retprobe", c_bool)]


class BpfTestRunOpts(Structure):
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
        ("repeat", c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


class BpfLinkCreateOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("flags", c_u32),
        ("iter_info", c_void_p),
        ("iter_info_len", c_u32),
        ("target_btf_id", c_u32),
        ("_union", c_u64 * 5),
    ]


class BpfMapBatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_u64), ("flags", c_u64)]


class BpfProgInfo(Structure):
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_u32),
        ("xlated_prog_len", c_u32),
        ("jited_prog_insns", c_u64),
        ("xlated_prog_insns", c_u64),
        ("load_time", c_u64),
        ("created_by_uid", c_u32),
        ("nr_map_ids", c_u32),
        ("map_ids", c_u64),
        ("name", c_char * 16),
        ("ifindex", c_u32),
        ("gpl_compatible", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("nr_jited_ksyms", c_u32),
        ("nr_jited_func_lens", c_u32),
        ("jited_ksyms", c_u64),
        ("jited_func_lens", c_u64),
        ("btf_id", c_u32),
        ("func_info_rec_size", c_u32),
        ("func_info", c_u64),
        ("nr_func_info", c_u32),
        ("nr_line_info", c_u32),
        ("line_info", c_u64),
        ("jited_line_info", c_u64),
        ("nr_jited_line_info", c_u32),
        ("line_info_rec_size", c_u32),
        ("jited_line_info_rec_size", c_u32),
        ("nr_prog_tags", c_u32),
        ("prog_tags", c_u64),
        ("run_time_ns", c_u64),
        ("run_cnt", c_u64),
        ("recursion_misses", c_u64),
        ("verified_insns", c_u32),
        ("attach_btf_obj_id", c_u32),
        ("attach_btf_id", c_u32),
        ("_pad", c_u32),
    ]


class BpfMapInfo(Structure):
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", c_char * 16),
        ("ifindex", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("btf_id", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("_pad", c_u32),
        ("map_extra", c_u64),
    ]


class BpfLinkInfo(Structure):
    _fields_ = [("type", c_u32), ("id", c_u32), ("prog_id", c_u32), ("_pad", c_u32), ("u", c_u64 * 8)]


class BtfType(Structure):
    _fields_ = [("name_off", c_u32), ("info", c_u32), ("size_or_type", c_u32)]


class BtfMember(Structure):
    _fields_ = [("name_off", c_u32), ("type", c_u32), ("offset", c_u32)]


class BtfVarSecinfo(Structure):
    _fields_ = [("type", c_u32), ("offset", c_u32), ("size", c_u32)]


PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

P = c_void_p
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (P, [PRINT_FN]),
    "libbpf_set_strict_mode": (c_int, [c_int]),
    "libbpf_get_error": (c_long, [P]),
    "bpf_object__open_file": (P, [c_char_p, POINTER(BpfObjectOpenOpts)]),
    "bpf_object__load": (c_int, [P]),
    "bpf_object__close": (None, [P]),
    "bpf_object__name": (c_char_p, [P]),
    "bpf_object__btf": (P, [P]),
    "bpf_object__next_program": (P, [P, P]),
    "bpf_object__next_map": (P, [P, P]),
    "bpf_object__find_program_by_name": (P, [P, c_char_p]),
    "bpf_object__find_map_by_name": (P, [P, c_char_p]),
    "bpf_program__name": (c_char_p, [P]),
    "bpf_program__section_name": (c_char_p, [P]),
    "bpf_program__fd": (c_int, [P]),
    "bpf_program__type": (c_int, [P]),
    "bpf_program__expected_attach_type": (c_int, [P]),
    "bpf_program__set_autoload": (c_int, [P, c_bool]),
    "bpf_program__autoload": (c_bool, [P]),
    "bpf_program__set_log_level": (c_int, [P, c_u32]),
    "bpf_program__attach": (P, [P]),
    "bpf_program__attach_tracepoint": (P, [P, c_char_p, c_char_p]),
    "bpf_program__attach_tracepoint_opts": (P, [P, c_char_p, c_char_p, POINTER(BpfTracepointOpts)]),
    "bpf_program__attach_raw_tracepoint": (P, [P, c_char_p]),
    "bpf_program__attach_trace": (P, [P]),
    "bpf_program__attach_lsm": (P, [P]),
    "bpf_program__attach_kprobe": (P, [P, c_bool, c_char_p]),
    "bpf_program__attach_kprobe_opts": (P, [P, c_char_p, POINTER(BpfKprobeOpts)]),
    "bpf_program__attach_uprobe_opts": (P, [P, c_int, c_char_p, c_size_t, POINTER(BpfUprobeOpts)]),
    "bpf_program__attach_xdp": (P, [P, c_int]),
    "bpf_program__attach_cgroup": (P, [P, c_int]),
    "bpf_program__attach_netns": (P, [P, c_int]),
    "bpf_link__destroy": (c_int, [P]),
    "bpf_link__fd": (c_int, [P]),
    "bpf_link__pin": (c_int, [P, c_char_p]),
    "bpf_link__unpin": (c_int, [P]),
    "bpf_link__detach": (c_int, [P]),
    "bpf_map__name": (c_char_p, [P]),
    "bpf_map__fd": (c_int, [P]),
    "bpf_map__type": (c_int, [P]),
    "bpf_map__key_size": (c_u32, [P]),
    "bpf_map__value_size": (c_u32, [P]),
    "bpf_map__max_entries": (c_u32, [P]),
    "bpf_map__set_max_entries": (c_int, [P, c_u32]),
    "bpf_map__set_value_size": (c_int, [P, c_u32]),
    "bpf_map__initial_value": (P, [P, POINTER(c_size_t)]),
    "bpf_map__set_pin_path": (c_int, [P, c_char_p]),
    "bpf_map__reuse_fd": (c_int, [P, c_int]),
    "bpf_map__set_autocreate": (c_int, [P, c_bool]),
    "bpf_map_lookup_elem": (c_int, [c_int, P, P]),
    "bpf_map_update_elem": (c_int, [c_int, P, P, c_u64]),
    "bpf_map_delete_elem": (c_int, [c_int, P]),
    "bpf_map_get_next_key": (c_int, [c_int, P, P]),
    "bpf_map_lookup_batch": (c_int, [c_int, P, P, P, P, POINTER(c_u32), POINTER(BpfMapBatchOpts)]),
    "bpf_map_update_batch": (c_int, [c_int, P, P, POINTER(c_u32), POINTER(BpfMapBatchOpts)]),
    "bpf_map_delete_batch": (c_int, [c_int, P, POINTER(c_u32), POINTER(BpfMapBatchOpts)]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, P, POINTER(c_u32)]),
    "bpf_prog_get_next_id": (c_int, [c_u32, POINTER(c_u32)]),
    "bpf_map_get_next_id": (c_int, [c_u32, POINTER(c_u32)]),
    "bpf_link_get_next_id": (c_int, [c_u32, POINTER(c_u32)]),
    "bpf_prog_get_fd_by_id": (c_int, [c_u32]),
    "bpf_map_get_fd_by_id": (c_int, [c_u32]),
    "bpf_link_get_fd_by_id": (c_int, [c_u32]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, POINTER(BpfLinkCreateOpts)]),
    "bpf_prog_attach": (c_int, [c_int, c_int, c_int, c_u32]),
    "bpf_prog_detach2": (c_int, [c_int, c_int, c_int]),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(BpfTestRunOpts)]),
    "bpf_enable_stats": (c_int, [c_int]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_u32, c_u32, c_u32, P]),
    "bpf_tc_hook_create": (c_int, [POINTER(BpfTcHook)]),
    "bpf_tc_hook_destroy": (c_int, [POINTER(BpfTcHook)]),
    "bpf_tc_attach": (c_int, [POINTER(BpfTcHook), POINTER(BpfTcOpts)]),
    "bpf_tc_detach": (c_int, [POINTER(BpfTcHook), POINTER(BpfTcOpts)]),
    "bpf_tc_query": (c_int, [POINTER(BpfTcHook), POINTER(BpfTcOpts)]),
    "btf__type_by_id": (POINTER(BtfType), [P, c_u32]),
    "btf__find_by_name_kind": (c_int, [P, c_char_p, c_u32]),
    "btf__name_by_offset": (c_char_p, [P, c_u32]),
    "btf__resolve_size": (c_long, [P, c_u32]),
    "btf__type_cnt": (c_u32, [P]),
    "btf__parse": (P, [c_char_p, P]),
    "btf__free": (None, [P]),
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, P]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, P]),
    "libbpf_probe_bpf_helper": (c_int, [c_int, c_int, P]),
}

for _name, (_res, _args) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args

libc.vsnprintf.restype = c_int
libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

# ---- libbpf's log goes through one print callback; we capture it per thread --------------------
_capture = threading.local()


_PRINT_BUF = ctypes.create_string_buffer(16 << 20)  # verifier logs arrive as one message
_PRINT_LOCK = threading.Lock()


def _print_cb(level: int, fmt: bytes, va_list: int) -> int:
    with _PRINT_LOCK:
        n = libc.vsnprintf(_PRINT_BUF, len(_PRINT_BUF), fmt, va_list)
        text = ctypes.string_at(_PRINT_BUF, min(max(n, 0), len(_PRINT_BUF) - 1))
    lines: list[str] | None = getattr(_capture, "lines", None)
    if lines is not None:
        lines.append(text.decode(errors="replace"))
    return 0


_PRINT_CB = PRINT_FN(_print_cb)  # keep a reference for the process lifetime
lib.libbpf_set_print(_PRINT_CB)


class captured_log:  # noqa: N801 - used as a context manager like a function
    """Collect everything libbpf prints in this thread while the block runs."""

    def __enter__(self) -> list[str]:
        self.prev = getattr(_capture, "lines", None)
        _capture.lines = []
        return _capture.lines

    def __exit__(self, *exc: object) -> None:
        _capture.lines = self.prev


def errno() -> int:
    return ctypes.get_errno()
