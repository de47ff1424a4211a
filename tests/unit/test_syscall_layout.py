"""The ctypes layouts must match the kernel UAPI byte for byte.

The expected offsets and sizes are those of include/uapi/linux/bpf.h and perf_event.h on a 64-bit
architecture (checked against the C compiler's offsetof on the UAPI headers).
"""

from __future__ import annotations

import ctypes
import errno

import pytest

from sigscope.bpf import arch, syscall, uapi
from sigscope.bpf.program import VerifierError


def offset(struct: type, field: str) -> int:
    return getattr(struct, field).offset


@pytest.mark.parametrize(
    "struct, field, expected",
    [
        (syscall.MapCreateAttr, "map_name", 28),
        (syscall.MapCreateAttr, "map_ifindex", 44),
        (syscall.MapCreateAttr, "map_extra", 64),
        (syscall.MapElemAttr, "key", 8),
        (syscall.MapElemAttr, "value", 16),
        (syscall.MapElemAttr, "flags", 24),
        (syscall.MapGetNextKeyAttr, "next_key", 16),
        (syscall.MapBatchAttr, "count", 32),
        (syscall.MapBatchAttr, "map_fd", 36),
        (syscall.MapBatchAttr, "elem_flags", 40),
        (syscall.ProgLoadAttr, "insns", 8),
        (syscall.ProgLoadAttr, "license", 16),
        (syscall.ProgLoadAttr, "log_level", 24),
        (syscall.ProgLoadAttr, "log_size", 28),
        (syscall.ProgLoadAttr, "log_buf", 32),
        (syscall.ProgLoadAttr, "prog_flags", 44),
        (syscall.ProgLoadAttr, "prog_name", 48),
        (syscall.ProgLoadAttr, "expected_attach_type", 68),
        (syscall.ProgLoadAttr, "fd_array", 120),
        (syscall.ProgLoadAttr, "core_relo_rec_size", 136),
        (syscall.ProgLoadAttr, "log_true_size", 140),
        (syscall.ObjGetInfoByFdAttr, "info_len", 4),
        (syscall.ObjGetInfoByFdAttr, "info", 8),
        (syscall.ObjIdAttr, "next_id", 4),
        (syscall.ObjIdAttr, "open_flags", 8),
        (syscall.LinkCreateAttr, "target_fd", 4),
        (syscall.LinkCreateAttr, "attach_type", 8),
        (syscall.LinkCreateAttr, "bpf_cookie", 16),
        (syscall.LinkCreateAttr, "target_btf_id", 16),
        (syscall.RawTracepointOpenAttr, "prog_fd", 8),
        (syscall.BtfLoadAttr, "btf_size", 16),
        (syscall.BtfLoadAttr, "btf_log_level", 24),
        (syscall.BtfLoadAttr, "btf_log_true_size", 28),
        (syscall.BpfProgInfo, "tag", 8),
        (syscall.BpfProgInfo, "load_time", 40),
        (syscall.BpfProgInfo, "name", 64),
        (syscall.BpfProgInfo, "netns_dev", 88),
        (syscall.BpfProgInfo, "btf_id", 128),
        (syscall.BpfProgInfo, "prog_tags", 184),
        (syscall.BpfProgInfo, "run_time_ns", 192),
        (syscall.BpfProgInfo, "run_cnt", 200),
        (syscall.BpfProgInfo, "recursion_misses", 208),
        (syscall.BpfProgInfo, "verified_insns", 216),
        (syscall.BpfMapInfo, "name", 24),
        (syscall.BpfMapInfo, "netns_dev", 48),
        (syscall.BpfMapInfo, "map_extra", 80),
        (syscall.PerfEventAttr, "config", 8),
        (syscall.PerfEventAttr, "sample_type", 24),
        (syscall.PerfEventAttr, "flags", 40),
        (syscall.PerfEventAttr, "wakeup_events", 48),
        (syscall.PerfEventAttr, "config1", 56),
        (syscall.PerfEventAttr, "config2", 64),
        (syscall.PerfEventAttr, "sample_regs_intr", 96),
        (syscall.PerfEventAttr, "aux_watermark", 104),
        (syscall.PerfEventAttr, "aux_sample_size", 112),
        (syscall.PerfEventAttr, "sig_data", 120),
        (syscall.PerfEventAttr, "config3", 128),
    ],
)
def test_field_offsets(struct: type, field: str, expected: int) -> None:
    assert offset(struct, field) == expected


@pytest.mark.parametrize(
    "struct, expected",
    [
        (syscall.MapCreateAttr, 72),
        (syscall.MapElemAttr, 32),
        (syscall.MapGetNextKeyAttr, 32),
        (syscall.MapBatchAttr, 56),
        (syscall.ProgLoadAttr, 144),
        (syscall.ObjGetInfoByFdAttr, 16),
        (syscall.LinkCreateAttr, 48),
        (syscall.RawTracepointOpenAttr, 16),
        (syscall.BtfLoadAttr, 32),
        (syscall.BpfProgInfo, 232),
        (syscall.BpfMapInfo, 88),
        (syscall.PerfEventAttr, uapi.PERF_ATTR_SIZE_VER8),
    ],
)
def test_struct_sizes(struct: type, expected: int) -> None:
    assert ctypes.sizeof(struct) == expected


def test_perf_event_attr_fills_its_size_and_aliases() -> None:
    attr = syscall.PerfEventAttr(type=uapi.PERF_TYPE_TRACEPOINT, config=7)
    assert attr.size == 136
    attr.wakeup_watermark = 4096
    attr.sample_freq = 99
    assert (attr.wakeup_events, attr.sample_period) == (4096, 99)


def test_perf_attr_flag_bits() -> None:
    assert uapi.PERF_ATTR_FLAG_DISABLED == 1
    assert uapi.PERF_ATTR_FLAG_INHERIT == 2
    assert uapi.PERF_ATTR_FLAG_WATERMARK == 1 << 14
    assert uapi.PERF_ATTR_FLAG_SAMPLE_ID_ALL == 1 << 18


def test_ioctl_numbers() -> None:
    assert uapi.PERF_EVENT_IOC_ENABLE == 0x2400
    assert uapi.PERF_EVENT_IOC_DISABLE == 0x2401
    assert uapi.PERF_EVENT_IOC_SET_OUTPUT == 0x2405
    assert uapi.PERF_EVENT_IOC_SET_BPF == 0x40042408
    assert uapi.PERF_EVENT_IOC_ID == 0x80082407


def test_uapi_enum_values() -> None:
    assert uapi.BPF_PROG_LOAD == 5
    assert uapi.BPF_OBJ_GET_INFO_BY_FD == 15
    assert uapi.BPF_RAW_TRACEPOINT_OPEN == 17
    assert uapi.BPF_MAP_LOOKUP_BATCH == 24
    assert uapi.BPF_LINK_CREATE == 28
    assert uapi.BPF_MAP_TYPE_PERCPU_ARRAY == 6
    assert uapi.BPF_MAP_TYPE_RINGBUF == 27
    assert uapi.BPF_PROG_TYPE_TRACEPOINT == 5
    assert uapi.BPF_PROG_TYPE_RAW_TRACEPOINT == 17
    assert uapi.BPF_PERF_EVENT == 41
    assert uapi.BPF_CMD_NAMES[uapi.BPF_MAP_CREATE] == "BPF_MAP_CREATE"
    assert uapi.BPF_CMD_NAMES[uapi.BPF_PROG_TEST_RUN] == "BPF_PROG_TEST_RUN"


def test_syscall_numbers_per_arch() -> None:
    x86 = arch.syscall_numbers("x86_64")
    arm = arch.syscall_numbers("aarch64")
    assert (x86.bpf, x86.perf_event_open, x86.tgkill, x86.rt_tgsigqueueinfo) == (321, 298, 234, 297)
    assert (arm.bpf, arm.perf_event_open, arm.tgkill, arm.rt_tgsigqueueinfo) == (280, 241, 131, 240)
    assert arch.syscall_numbers("arm64") == arm
    assert x86.pidfd_send_signal == arm.pidfd_send_signal == 424


def test_unsupported_arch_is_a_clear_error() -> None:
    with pytest.raises(arch.UnsupportedArchError, match="unsupported architecture 'riscv64'"):
        arch.syscall_numbers("riscv64")


def test_parse_cpu_list() -> None:
    assert arch.parse_cpu_list("0-3\n") == [0, 1, 2, 3]
    assert arch.parse_cpu_list("0,2-3,8") == [0, 2, 3, 8]
    assert arch.parse_cpu_list("0") == [0]


def test_bpf_error_message_names_the_command() -> None:
    err = syscall.BPFError(errno.EPERM, "BPF_MAP_CREATE")
    assert str(err) == "BPF_MAP_CREATE: Operation not permitted"
    assert isinstance(err, OSError) and err.errno == errno.EPERM
    detailed = syscall.BPFError(errno.EINVAL, "BPF_MAP_LOOKUP_ELEM", "map m: key is 3 bytes")
    assert str(detailed) == "BPF_MAP_LOOKUP_ELEM: Invalid argument (map m: key is 3 bytes)"
    assert "\n" not in str(detailed)


def test_verifier_error_is_one_line_with_the_reason() -> None:
    log = (
        "func#0 @0\n"
        "0: R1=ctx() R10=fp0\n"
        "0: (95) exit\n"
        "R0 !read_ok\n"
        "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0\n"
    )
    err = VerifierError(errno.EACCES, "probe", log)
    assert str(err) == "verifier rejected program 'probe': R0 !read_ok"
    assert err.log == log
    assert err.last_lines(2).splitlines() == [
        "R0 !read_ok",
        "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0",
    ]
    assert isinstance(err, syscall.BPFError)
