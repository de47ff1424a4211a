"""The one place that knows what the running kernel can do.

Each feature is asked of the kernel directly (never inferred from a version number): a probe
makes the smallest object that needs the feature, with the project's own assembler and loader,
and closes whatever it created. Results are cached per process. ``since`` is the mainline
release that brought the feature (as cilium/ebpf's feature tests say it): documentation and the
kernel-matrix table, never an input to a decision.

    from sigscope.bpf import features
    features.has("ringbuf")            # -> bool (cached)
    features.table()                   # -> [(name, since, present), ...] in FEATURES order
    features.check_essentials()        # raises KernelFeatureError (one line) when unusable

Names are fixed: the kernel-matrix runner's table and the tests' ``needs`` marker use them.
This module sits above syscall.py, maps.py and program.py (it uses them); nothing below it
imports it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from sigscope.bpf import asm, btf_scan, uapi
from sigscope.bpf.asm import DW, R0, R1, R10, W
from sigscope.bpf.privileges import raise_memlock_limit
from sigscope.bpf.syscall import (
    BPFError,
    BpfProgInfo,
    LinkCreateAttr,
    MapBatchAttr,
    RawTracepointOpenAttr,
    bpf,
    close_fd,
    obj_get_info_len,
)


class KernelFeatureError(RuntimeError):
    """The kernel lacks something sigscope cannot work without; str() is one line."""


class Feature(NamedTuple):
    """A kernel feature: `probe()` -> present; `since` the mainline version that brought it
    (None when it is a build option rather than a release, e.g. BTF)."""

    name: str
    since: str | None
    description: str
    probe: Callable[[], bool]
    needs_btf: bool = False   # SIGSCOPE_NO_BTF makes it absent (as on a kernel without BTF)
    essential: bool = False   # sigscope cannot trace at all without it


_RETURN_ZERO = [asm.mov64_imm(R0, 0), asm.exit_()]


def _loads(insns: list, **kwargs: Any) -> bool:
    """True when the kernel accepts the program (any refusal: False)."""
    from sigscope.bpf.program import Program

    try:
        Program.load(insns, name="sigscope_feat", **kwargs).close()
    except (OSError, ValueError):
        return False
    return True


# --- probes ------------------------------------------------------------------------------

def _probe_bpf_tracepoint() -> bool:
    return _loads(_RETURN_ZERO)


def _probe_perf_buffer() -> bool:
    from sigscope.bpf.maps import PerfEventArrayMap

    try:
        PerfEventArrayMap(name="sigscope_feat").close()
    except OSError:
        return False
    return True


def _probe_ringbuf() -> bool:
    from sigscope.bpf.maps import RingBufMap

    try:
        RingBufMap(4096, name="sigscope_feat").close()
    except OSError:
        return False
    return True


def _probe_btf_vmlinux() -> bool:
    if btf_scan.vmlinux_btf_missing_reason() is not None:
        return False
    try:
        btf_scan.vmlinux_struct_members("task_struct")
    except btf_scan.BtfScanError:
        return False
    return True


@functools.cache
def _btf_type_id(name: str, kind: str) -> int | None:
    """The id of a named type (kind "typedef" or "func") in vmlinux BTF, or None. By the quick
    scan (btf_scan.vmlinux_type_id, ~13 ms here), not the full parser (~80 ms): start-up."""
    return btf_scan.vmlinux_type_id(
        name, btf_scan.BTF_KIND_FUNC if kind == "func" else btf_scan.BTF_KIND_TYPEDEF)


def tp_btf_type_id(event: str) -> int | None:
    """The attach_btf_id of a tp_btf program for raw tracepoint `event`: the id of the
    typedef ``btf_trace_<event>`` in vmlinux BTF (include/trace/bpf_probe.h), or None."""
    return _btf_type_id(f"btf_trace_{event}", "typedef")


def _probe_tp_btf() -> bool:
    # A BTF-typed raw tracepoint program: the kernel checks the attach target at load time.
    # signal_generate's, the one sigscope attaches (its id is then looked up once).
    type_id = _btf_type_id("btf_trace_signal_generate", "typedef")
    return type_id is not None and _loads(
        _RETURN_ZERO, prog_type=uapi.BPF_PROG_TYPE_TRACING,
        expected_attach_type=uapi.BPF_TRACE_RAW_TP, attach_btf_id=type_id)


def _probe_fentry() -> bool:
    """Load and attach an fentry program (some kernels load it but refuse the attach, e.g.
    under lockdown: EPERM). The target is bpf_fentry_test1, which the kernel keeps for tests."""
    from sigscope.bpf.program import Program

    type_id = _btf_type_id("bpf_fentry_test1", "func")
    if type_id is None:
        return False
    try:
        prog = Program.load(_RETURN_ZERO, prog_type=uapi.BPF_PROG_TYPE_TRACING,
                            name="sigscope_feat", expected_attach_type=uapi.BPF_TRACE_FENTRY,
                            attach_btf_id=type_id)
    except (OSError, ValueError):
        return False
    try:
        link_fd = bpf(uapi.BPF_RAW_TRACEPOINT_OPEN, RawTracepointOpenAttr(name=0,
                                                                          prog_fd=prog.fd))
    except BPFError:
        return False
    finally:
        prog.close()
    close_fd(link_fd)
    return True


def _probe_map_batch() -> bool:
    """BPF_MAP_LOOKUP_BATCH on an empty hash map answers ENOENT where it exists."""
    from sigscope.bpf.maps import HashMap

    try:
        m = HashMap(4, 4, 1, name="sigscope_feat")
    except OSError:
        return False
    with m:
        out_batch = ctypes.create_string_buffer(8)
        keys, values = ctypes.create_string_buffer(4), ctypes.create_string_buffer(4)
        attr = MapBatchAttr(out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(keys),
                            values=ctypes.addressof(values), count=1, map_fd=m.fd)
        try:
            bpf(uapi.BPF_MAP_LOOKUP_BATCH, attr)
        except BPFError as err:
            return err.errno == errno.ENOENT
    return True


def _probe_bpf_atomics() -> bool:
    # BPF_ATOMIC with an operation in imm (here a 32-bit compare-and-exchange, as the in-flight
    # claim uses): older kernels refuse it as "BPF_STX uses reserved fields".
    return _loads([asm.st(DW, R10, -8, 0), asm.mov64_imm(R0, 0), asm.mov64_imm(R1, 1),
                   asm.atomic_op(W, "CMPXCHG", R10, R1, -8), asm.mov64_imm(R0, 0),
                   asm.exit_()])


def _probe_recursion_misses() -> bool:
    from sigscope.bpf.program import RECURSION_MISSES_END, Program

    try:
        prog = Program.load(_RETURN_ZERO, name="sigscope_feat")
    except (OSError, ValueError):
        return False
    with prog:
        try:
            return obj_get_info_len(prog.fd, BpfProgInfo()) >= RECURSION_MISSES_END
        except OSError:
            return False


def _probe_get_current_task_btf() -> bool:
    return _loads([asm.call("get_current_task_btf"), asm.mov64_imm(R0, 0), asm.exit_()])


def _probe_task_pt_regs() -> bool:
    return _loads([asm.call("get_current_task_btf"), asm.mov64_reg(R1, R0),
                   asm.call("task_pt_regs"), asm.mov64_imm(R0, 0), asm.exit_()])


def _probe_perf_event_link() -> bool:
    """BPF_LINK_CREATE with attach type BPF_PERF_EVENT: a kernel without it refuses the attach
    type (EINVAL) before looking at the target; one with it resolves the target fd, which we
    make invalid so that it fails with EBADF."""
    from sigscope.bpf.program import Program

    try:
        prog = Program.load(_RETURN_ZERO, name="sigscope_feat")
    except (OSError, ValueError):
        return False
    with prog:
        attr = LinkCreateAttr(prog_fd=prog.fd, target_fd=0xFFFFFFFF,
                              attach_type=uapi.BPF_PERF_EVENT)
        try:
            link_fd = bpf(uapi.BPF_LINK_CREATE, attr)
        except BPFError as err:
            return err.errno == errno.EBADF
        close_fd(link_fd)  # not expected, but never leak
        return True


def _probe_sched_exit_group_dead() -> bool:
    from sigscope.bpf.tracefs import TracefsError, event_format

    try:
        return "group_dead" in event_format("sched", "sched_process_exit").fields
    except (TracefsError, OSError):
        return False


def _probe_cgroup_kill() -> bool:
    # cgroup v2's cgroup.kill file (kernel/cgroup/cgroup.c, cgroup_kill_write): its handler is
    # a file operation, so it is never inlined away and kallsyms names it where it exists.
    try:
        with open("/proc/kallsyms") as symbols:
            return any(line.rstrip().endswith(" cgroup_kill_write") for line in symbols)
    except OSError:
        return False


# include/uapi/linux/pidfd.h: PIDFD_THREAD is O_EXCL (asm-generic/fcntl.h 00000200, also x86).
PIDFD_THREAD = 0o200


def _probe_pidfd_thread() -> bool:
    """pidfd_open(2) of this thread with PIDFD_THREAD (kernel/pid.c): EINVAL before 6.9."""
    import os

    from sigscope.bpf.arch import syscall_numbers

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(syscall_numbers().pidfd_open), ctypes.c_long(os.getpid()),
                      ctypes.c_long(PIDFD_THREAD))
    if fd < 0:
        return False
    os.close(fd)
    return True


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("bpf_tracepoint", "4.7", "BPF programs on tracepoints (BPF_PROG_TYPE_TRACEPOINT)",
            _probe_bpf_tracepoint, essential=True),
    Feature("perf_buffer", "4.4", "perf event array output (bpf_perf_event_output)",
            _probe_perf_buffer),
    Feature("ringbuf", "5.8", "BPF ring buffer map (BPF_MAP_TYPE_RINGBUF)", _probe_ringbuf),
    Feature("btf_vmlinux", None, "kernel BTF at /sys/kernel/btf/vmlinux "
            "(CONFIG_DEBUG_INFO_BTF)", _probe_btf_vmlinux, needs_btf=True),
    Feature("tp_btf", "5.5", "BTF-typed raw tracepoint programs (BPF_TRACE_RAW_TP)",
            _probe_tp_btf, needs_btf=True),
    Feature("fentry", "5.5", "fentry programs load and attach (refused under some lockdowns)",
            _probe_fentry, needs_btf=True),
    Feature("map_batch", "5.6", "BPF_MAP_LOOKUP_BATCH", _probe_map_batch),
    Feature("get_current_task_btf", "5.11", "bpf_get_current_task_btf() helper",
            _probe_get_current_task_btf, needs_btf=True),
    Feature("bpf_atomics", "5.12", "BPF atomic operations beyond add (cmpxchg)",
            _probe_bpf_atomics),
    Feature("recursion_misses", "5.12", "bpf_prog_info.recursion_misses (skipped runs counted)",
            _probe_recursion_misses),
    Feature("perf_event_link", "5.15", "BPF links for perf events (BPF_LINK_CREATE, "
            "BPF_PERF_EVENT)", _probe_perf_event_link),
    Feature("cgroup_kill", "5.14", "cgroup v2 cgroup.kill (a kernel SIGKILL origin)",
            _probe_cgroup_kill),
    Feature("task_pt_regs", "5.15", "bpf_task_pt_regs() helper", _probe_task_pt_regs,
            needs_btf=True),
    Feature("sched_exit_group_dead", "6.16", "sched:sched_process_exit has a group_dead field",
            _probe_sched_exit_group_dead),
    Feature("pidfd_thread", "6.9", "pidfd_open(2) with PIDFD_THREAD (a pidfd for one thread)",
            _probe_pidfd_thread),
)}


@functools.cache
def has(name: str) -> bool:
    """Whether the running kernel has feature `name` (a key of FEATURES; KeyError otherwise).
    Cached; a feature that needs BTF is absent while SIGSCOPE_NO_BTF is set."""
    feature = FEATURES[name]
    if feature.needs_btf and btf_scan.vmlinux_btf_disabled():
        return False
    # Before Linux 5.11 maps and programs are charged to RLIMIT_MEMLOCK: a probe must not
    # fail (and report a feature absent) only because the default limit is small.
    raise_memlock_limit()
    return bool(feature.probe())


def clear_cache() -> None:
    """Forget every probe result (tests; after changing SIGSCOPE_NO_BTF)."""
    has.cache_clear()


def table() -> list[tuple[str, str | None, bool]]:
    """(name, since, present) of every feature, in FEATURES order."""
    return [(name, feature.since, has(name)) for name, feature in FEATURES.items()]


def missing_essentials() -> list[str]:
    """One-line descriptions of what sigscope cannot work without and this kernel lacks."""
    missing = [f"{f.description} [{f.name}, Linux {f.since}]"
               for f in FEATURES.values() if f.essential and not has(f.name)]
    if not has("ringbuf") and not has("perf_buffer"):
        missing.append("an output buffer: neither the BPF ring buffer (Linux 5.8) nor a perf "
                       "event array (Linux 4.4)")
    return missing


def check_essentials() -> None:
    """Raise KernelFeatureError (one line, naming what is missing) when this kernel cannot run
    sigscope. Call after the privilege check: without privileges every probe fails."""
    missing = missing_essentials()
    if missing:
        raise KernelFeatureError("this kernel lacks " + "; ".join(missing)
                                 + ": sigscope needs Linux >= 5.10 with BPF and tracepoints")


def parse_feature_list(text: str) -> frozenset[str]:
    """A comma list of feature names (SIGSCOPE_EXPECT_MISSING) -> names; unknown names raise
    ValueError naming them (a typo in the matrix table must not pass silently)."""
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(names - FEATURES.keys())
    if unknown:
        raise ValueError(f"unknown kernel feature name(s): {', '.join(unknown)} "
                         f"(known: {', '.join(FEATURES)})")
    return names
