"""bpf(2), perf_event_open(2) and ioctl(2) through ctypes, and the kernel structures they take.

Each bpf command reads its own member of ``union bpf_attr`` (include/uapi/linux/bpf.h); we pass
the member's layout alone, with its own size: the kernel zero-fills what we leave out and checks
that anything past what it knows is zero, so the same layouts work on older and newer kernels.
Pointers travel as u64 addresses (``ctypes.addressof`` of a buffer the caller keeps alive).
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import functools
import os
from typing import TypeVar

from sigscope.bpf import arch, uapi
from sigscope.errors import KernelError

_Info = TypeVar("_Info", bound=ctypes.Structure)

__all__ = [
    "BPFError",
    "BpfMapInfo",
    "BpfProgInfo",
    "BtfLoadAttr",
    "EnableStatsAttr",
    "LinkCreateAttr",
    "MapBatchAttr",
    "MapCreateAttr",
    "MapElemAttr",
    "MapGetNextKeyAttr",
    "ObjGetInfoByFdAttr",
    "ObjIdAttr",
    "PerfEventAttr",
    "ProgLoadAttr",
    "RawTracepointOpenAttr",
    "bpf",
    "close_fd",
    "ioctl",
    "perf_event_open",
]

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64  # also __aligned_u64: natural 8-byte alignment on our 64-bit arches


class BPFError(KernelError, OSError):
    """A failed bpf()/perf_event_open()/ioctl() call; str() is one line naming the command."""

    def __init__(self, err: int, command: str, detail: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.command = command
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.command}: {self.strerror}"
        if self.detail:
            text += f" ({self.detail})"
        return text

    def __reduce__(self):  # keep pickling (multiprocessing) working with our __init__
        return (type(self), (self.errno, self.command, self.detail))


# --- union bpf_attr members ----------------------------------------------------------------------


class MapCreateAttr(ctypes.Structure):
    """BPF_MAP_CREATE."""

    _fields_ = [
        ("map_type", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("inner_map_fd", u32),
        ("numa_node", u32),
        ("map_name", ctypes.c_char * uapi.BPF_OBJ_NAME_LEN),
        ("map_ifindex", u32),
        ("btf_fd", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("map_extra", u64),
    ]


class MapElemAttr(ctypes.Structure):
    """BPF_MAP_LOOKUP_ELEM / UPDATE_ELEM / DELETE_ELEM / LOOKUP_AND_DELETE_ELEM."""

    _fields_ = [
        ("map_fd", u32),
        ("key", u64),
        ("value", u64),
        ("flags", u64),
    ]


class MapGetNextKeyAttr(ctypes.Structure):
    """BPF_MAP_GET_NEXT_KEY: the MapElemAttr layout with ``value`` read as ``next_key``."""

    _fields_ = [
        ("map_fd", u32),
        ("key", u64),
        ("next_key", u64),
        ("flags", u64),
    ]


class MapBatchAttr(ctypes.Structure):
    """BPF_MAP_*_BATCH (the ``batch`` member)."""

    _fields_ = [
        ("in_batch", u64),
        ("out_batch", u64),
        ("keys", u64),
        ("values", u64),
        ("count", u32),
        ("map_fd", u32),
        ("elem_flags", u64),
        ("flags", u64),
    ]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD, up to ``log_true_size`` (Linux 6.4; older kernels see a zero tail)."""

    _fields_ = [
        ("prog_type", u32),
        ("insn_cnt", u32),
        ("insns", u64),
        ("license", u64),
        ("log_level", u32),
        ("log_size", u32),
        ("log_buf", u64),
        ("kern_version", u32),
        ("prog_flags", u32),
        ("prog_name", ctypes.c_char * uapi.BPF_OBJ_NAME_LEN),
        ("prog_ifindex", u32),
        ("expected_attach_type", u32),
        ("prog_btf_fd", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("func_info_cnt", u32),
        ("line_info_rec_size", u32),
        ("line_info", u64),
        ("line_info_cnt", u32),
        ("attach_btf_id", u32),
        ("attach_prog_fd", u32),  # union with attach_btf_obj_fd
        ("core_relo_cnt", u32),
        ("fd_array", u64),
        ("core_relos", u64),
        ("core_relo_rec_size", u32),
        ("log_true_size", u32),
    ]


class ObjIdAttr(ctypes.Structure):
    """BPF_{PROG,MAP,BTF,LINK}_GET_NEXT_ID and *_GET_FD_BY_ID (start_id is also prog_id/map_id)."""

    _fields_ = [
        ("start_id", u32),
        ("next_id", u32),
        ("open_flags", u32),
    ]


class ObjGetInfoByFdAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD (the ``info`` member)."""

    _fields_ = [
        ("bpf_fd", u32),
        ("info_len", u32),
        ("info", u64),
    ]


class _LinkCreateTarget(ctypes.Union):
    # The per-attach-type tail of link_create. 32 bytes covers the members we might fill
    # (perf_event.bpf_cookie, target_btf_id, tracing.cookie, kprobe_multi).
    _fields_ = [
        ("target_btf_id", u32),
        ("bpf_cookie", u64),  # perf_event.bpf_cookie
        ("_raw", u64 * 4),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE (the ``link_create`` member)."""

    _anonymous_ = ("_target",)
    _fields_ = [
        ("prog_fd", u32),
        ("target_fd", u32),  # union with target_ifindex
        ("attach_type", u32),
        ("flags", u32),
        ("_target", _LinkCreateTarget),
    ]


class RawTracepointOpenAttr(ctypes.Structure):
    """BPF_RAW_TRACEPOINT_OPEN (the ``raw_tracepoint`` member)."""

    _fields_ = [
        ("name", u64),
        ("prog_fd", u32),
    ]


class EnableStatsAttr(ctypes.Structure):
    """BPF_ENABLE_STATS (the ``enable_stats`` member)."""

    _fields_ = [("type", u32)]


class BtfLoadAttr(ctypes.Structure):
    """BPF_BTF_LOAD, up to ``btf_log_true_size`` (Linux 6.4)."""

    _fields_ = [
        ("btf", u64),
        ("btf_log_buf", u64),
        ("btf_size", u32),
        ("btf_log_size", u32),
        ("btf_log_level", u32),
        ("btf_log_true_size", u32),
    ]


# --- info structures filled by BPF_OBJ_GET_INFO_BY_FD --------------------------------------------


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info. The kernel fills min(our size, its size) bytes."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", u8 * uapi.BPF_TAG_SIZE),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", u64),
        ("xlated_prog_insns", u64),
        ("load_time", u64),  # ns since boot
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", u64),
        ("name", ctypes.c_char * uapi.BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("flags", u32),  # bit 0: gpl_compatible
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("nr_jited_ksyms", u32),
        ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64),
        ("jited_func_lens", u64),
        ("btf_id", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("nr_func_info", u32),
        ("nr_line_info", u32),
        ("line_info", u64),
        ("jited_line_info", u64),
        ("nr_jited_line_info", u32),
        ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32),
        ("nr_prog_tags", u32),
        ("prog_tags", u64),
        ("run_time_ns", u64),
        ("run_cnt", u64),
        ("recursion_misses", u64),  # Linux 5.12
        ("verified_insns", u32),
        ("attach_btf_obj_id", u32),
        ("attach_btf_id", u32),
        ("_pad", u32),
    ]


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("name", ctypes.c_char * uapi.BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("btf_id", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("_pad", u32),
        ("map_extra", u64),
    ]


# --- struct perf_event_attr ----------------------------------------------------------------------


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr as of PERF_ATTR_SIZE_VER8 (136 bytes).

    The C bitfield word (disabled, inherit, ..., watermark, ...) is the u64 ``flags``; set it
    from the ``uapi.PERF_ATTR_FLAG_*`` bits. ``size`` is filled in by the constructor.
    """

    _fields_ = [
        ("type", u32),
        ("size", u32),
        ("config", u64),
        ("sample_period", u64),  # union with sample_freq
        ("sample_type", u64),
        ("read_format", u64),
        ("flags", u64),
        ("wakeup_events", u32),  # union with wakeup_watermark
        ("bp_type", u32),
        ("config1", u64),  # union with bp_addr, kprobe_func, uprobe_path
        ("config2", u64),  # union with bp_len, kprobe_addr, probe_offset
        ("branch_sample_type", u64),
        ("sample_regs_user", u64),
        ("sample_stack_user", u32),
        ("clockid", s32),
        ("sample_regs_intr", u64),
        ("aux_watermark", u32),
        ("sample_max_stack", u16),
        ("_reserved_2", u16),
        ("aux_sample_size", u32),
        ("_reserved_3", u32),
        ("sig_data", u64),
        ("config3", u64),
    ]

    def __init__(self, **fields: int) -> None:
        super().__init__(**fields)
        if "size" not in fields:
            self.size = ctypes.sizeof(self)

    @property
    def sample_freq(self) -> int:
        return self.sample_period

    @sample_freq.setter
    def sample_freq(self, value: int) -> None:
        self.sample_period = value

    @property
    def wakeup_watermark(self) -> int:
        return self.wakeup_events

    @wakeup_watermark.setter
    def wakeup_watermark(self, value: int) -> None:
        self.wakeup_events = value


# --- the calls -----------------------------------------------------------------------------------


@functools.cache
def _libc_syscall():
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function


def _raw_syscall(number: int, *args: int) -> tuple[int, int]:
    """Call syscall(number, *args); returns (result, errno)."""
    ctypes.set_errno(0)
    result = _libc_syscall()(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return result, (ctypes.get_errno() if result < 0 else 0)


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof(attr)); returns the result or raises BPFError naming the command."""
    number = arch.syscall_numbers().bpf
    while True:
        result, err = _raw_syscall(number, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
        if result >= 0:
            return result
        if err != errno_module.EINTR:  # a signal during a long verification: just retry
            raise BPFError(err, uapi.BPF_CMD_NAMES.get(cmd, f"bpf command {cmd}"))


def perf_event_open(
    attr: PerfEventAttr,
    pid: int,
    cpu: int,
    group_fd: int = -1,
    flags: int = uapi.PERF_FLAG_FD_CLOEXEC,
) -> int:
    """perf_event_open(2); always close-on-exec. Returns the event fd or raises BPFError."""
    number = arch.syscall_numbers().perf_event_open
    flags |= uapi.PERF_FLAG_FD_CLOEXEC
    result, err = _raw_syscall(number, ctypes.addressof(attr), pid, cpu, group_fd, flags)
    if result < 0:
        detail = f"type={attr.type} config={attr.config} pid={pid} cpu={cpu}"
        raise BPFError(err, "perf_event_open", detail)
    return result


def ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl(fd, request, arg) with an integer (or address) argument; raises BPFError."""
    number = arch.syscall_numbers().ioctl
    result, err = _raw_syscall(number, fd, request, arg)
    if result < 0:
        raise BPFError(err, f"ioctl {_IOCTL_NAMES.get(request, hex(request))}")
    return result


_IOCTL_NAMES = {
    uapi.PERF_EVENT_IOC_ENABLE: "PERF_EVENT_IOC_ENABLE",
    uapi.PERF_EVENT_IOC_DISABLE: "PERF_EVENT_IOC_DISABLE",
    uapi.PERF_EVENT_IOC_SET_BPF: "PERF_EVENT_IOC_SET_BPF",
    uapi.PERF_EVENT_IOC_SET_OUTPUT: "PERF_EVENT_IOC_SET_OUTPUT",
    uapi.PERF_EVENT_IOC_RESET: "PERF_EVENT_IOC_RESET",
    uapi.PERF_EVENT_IOC_ID: "PERF_EVENT_IOC_ID",
    uapi.PERF_EVENT_IOC_PAUSE_OUTPUT: "PERF_EVENT_IOC_PAUSE_OUTPUT",
}


def close_fd(fd: int) -> None:
    """Close an fd we own, ignoring EBADF (already closed)."""
    try:
        os.close(fd)
    except OSError as err:
        if err.errno != errno_module.EBADF:
            raise


def obj_get_info_by_fd(fd: int, info: _Info) -> _Info:
    """Fill `info` (BpfProgInfo, BpfMapInfo, ...) for a bpf object fd and return it."""
    obj_get_info_len(fd, info)
    return info


def obj_get_info_len(fd: int, info: ctypes.Structure) -> int:
    """Fill `info` for a bpf object fd; return how many of its bytes the kernel filled: an
    older kernel's struct is shorter (kernel/bpf/syscall.c copies min(its size, ours) and
    writes that back to info_len), and the fields past it stay zero without meaning 0."""
    attr = ObjGetInfoByFdAttr(
        bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)
    )
    bpf(uapi.BPF_OBJ_GET_INFO_BY_FD, attr)
    return int(attr.info_len)


class Closable:
    """close() on leaving a with-block and when garbage-collected (kernel objects are owned by
    file descriptors: closing is what releases them)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # noqa: ANN204 (returns self, typed by each subclass)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class FdOwner(Closable):
    """A kernel object held through one file descriptor (a map, a program)."""

    _fd: int | None = None
    kind = "object"
    name = ""

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.kind} {self.name or '(unnamed)'} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            close_fd(fd)
