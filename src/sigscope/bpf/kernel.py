"""The one place for kernel-version and architecture differences.

- Syscall numbers per architecture (x86_64 and aarch64; others raise UnsupportedArchError).
- Feature probes, each a cached function that asks the running kernel directly and closes
  whatever it created: ring buffer maps, BPF links for perf events, map batch operations.
- Possible CPUs (the count per-CPU map values are laid out for).

This module sits below syscall.py: the probes import it lazily inside the functions.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from typing import NamedTuple

from sigscope.errors import SetupError


class UnsupportedArchError(SetupError, RuntimeError):
    """sigscope only knows the syscall numbers of x86_64 and aarch64."""


class SyscallNumbers(NamedTuple):
    bpf: int
    perf_event_open: int
    ioctl: int
    kill: int
    tkill: int
    tgkill: int
    rt_sigqueueinfo: int
    rt_tgsigqueueinfo: int
    pidfd_send_signal: int
    pidfd_open: int


# x86_64: arch/x86/entry/syscalls/syscall_64.tbl. aarch64 uses the asm-generic table
# (include/uapi/asm-generic/unistd.h); the pidfd calls were added to every table with one number.
_SYSCALLS_BY_ARCH: dict[str, SyscallNumbers] = {
    "x86_64": SyscallNumbers(
        bpf=321, perf_event_open=298, ioctl=16, kill=62, tkill=200, tgkill=234,
        rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424, pidfd_open=434,
    ),
    "aarch64": SyscallNumbers(
        bpf=280, perf_event_open=241, ioctl=29, kill=129, tkill=130, tgkill=131,
        rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_send_signal=424, pidfd_open=434,
    ),
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def normalized_machine(machine: str | None = None) -> str:
    name = (machine if machine is not None else os.uname().machine).lower()
    return _ARCH_ALIASES.get(name, name)


def syscall_numbers(machine: str | None = None) -> SyscallNumbers:
    """Syscall numbers for `machine` (default: this one)."""
    arch = normalized_machine(machine)
    try:
        return _SYSCALLS_BY_ARCH[arch]
    except KeyError:
        supported = ", ".join(sorted(_SYSCALLS_BY_ARCH))
        raise UnsupportedArchError(
            f"unsupported architecture {arch!r}: sigscope supports {supported}"
        ) from None


# --- CPUs ----------------------------------------------------------------------------------------

_POSSIBLE_CPUS_PATH = "/sys/devices/system/cpu/possible"


def parse_cpu_list(text: str) -> list[int]:
    """Parse a kernel CPU list such as ``0-3,8,10-11`` into sorted CPU ids."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first, last = part.split("-", 1)
            cpus.update(range(int(first), int(last) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


@functools.cache
def possible_cpu_ids() -> tuple[int, ...]:
    with open(_POSSIBLE_CPUS_PATH) as possible:
        return tuple(parse_cpu_list(possible.read()))


def possible_cpus() -> int:
    """How many CPUs the kernel lays per-CPU map values out for (num_possible_cpus())."""
    return len(possible_cpu_ids())


# --- feature probes ------------------------------------------------------------------------------

# A two-instruction program, "r0 = 0; exit", encoded by hand so the probes do not depend on asm.py.
_RETURN_ZERO_PROGRAM = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


@functools.cache
def has_ringbuf() -> bool:
    """BPF_MAP_TYPE_RINGBUF exists (Linux >= 5.8)."""
    from sigscope.bpf import syscall, uapi

    attr = syscall.MapCreateAttr(
        map_type=uapi.BPF_MAP_TYPE_RINGBUF, key_size=0, value_size=0, max_entries=4096
    )
    try:
        fd = syscall.bpf(uapi.BPF_MAP_CREATE, attr)
    except syscall.BPFError:
        return False
    syscall.close_fd(fd)
    return True


@functools.cache
def has_perf_event_link() -> bool:
    """BPF_LINK_CREATE accepts attach type BPF_PERF_EVENT (Linux >= 5.15).

    A kernel without it rejects the attach type with EINVAL before looking at the target; one with
    it goes on to resolve the target fd, which we make invalid (-1) so it fails with EBADF.
    """
    from sigscope.bpf import syscall, uapi

    try:
        prog_fd = _load_probe_program(uapi.BPF_PROG_TYPE_TRACEPOINT)
    except syscall.BPFError:
        return False
    try:
        attr = syscall.LinkCreateAttr(
            prog_fd=prog_fd, target_fd=0xFFFFFFFF, attach_type=uapi.BPF_PERF_EVENT
        )
        try:
            link_fd = syscall.bpf(uapi.BPF_LINK_CREATE, attr)
        except syscall.BPFError as err:
            return err.errno == errno.EBADF
        syscall.close_fd(link_fd)  # not expected, but never leak
        return True
    finally:
        syscall.close_fd(prog_fd)


@functools.cache
def has_map_batch() -> bool:
    """BPF_MAP_LOOKUP_BATCH exists (Linux >= 5.6): on an empty hash map it answers ENOENT."""
    import ctypes

    from sigscope.bpf import syscall, uapi

    create = syscall.MapCreateAttr(
        map_type=uapi.BPF_MAP_TYPE_HASH, key_size=4, value_size=4, max_entries=1
    )
    try:
        map_fd = syscall.bpf(uapi.BPF_MAP_CREATE, create)
    except syscall.BPFError:
        return False
    try:
        out_batch = ctypes.create_string_buffer(8)
        keys = ctypes.create_string_buffer(4)
        values = ctypes.create_string_buffer(4)
        attr = syscall.MapBatchAttr(
            out_batch=ctypes.addressof(out_batch),
            keys=ctypes.addressof(keys),
            values=ctypes.addressof(values),
            count=1,
            map_fd=map_fd,
        )
        try:
            syscall.bpf(uapi.BPF_MAP_LOOKUP_BATCH, attr)
        except syscall.BPFError as err:
            return err.errno == errno.ENOENT
        return True
    finally:
        syscall.close_fd(map_fd)


def _load_probe_program(prog_type: int) -> int:
    import ctypes

    from sigscope.bpf import syscall, uapi

    insns = ctypes.create_string_buffer(_RETURN_ZERO_PROGRAM, len(_RETURN_ZERO_PROGRAM))
    license_text = ctypes.create_string_buffer(b"GPL")
    attr = syscall.ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(_RETURN_ZERO_PROGRAM) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_text),
    )
    return syscall.bpf(uapi.BPF_PROG_LOAD, attr)
