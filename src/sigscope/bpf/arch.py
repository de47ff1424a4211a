"""The machine: syscall numbers per architecture, and the CPUs the kernel lays per-CPU data out
for. No system calls beyond reading sysfs; the lowest module of the engine (syscall.py takes its
numbers from here). Kernel *features* (what this kernel can do) are in features.py.

- Syscall numbers for x86_64 and aarch64 (others raise UnsupportedArchError).
- Possible CPUs (the count per-CPU map values are laid out for).
"""

from __future__ import annotations

import functools
import os
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
