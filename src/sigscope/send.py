"""Send a signal through any of the six signal-sending syscalls, as raw syscalls via ctypes.

Going around libc matters here: glibc's kill()/sigqueue() wrappers pick the syscall for us, and
sigscope needs to exercise (and test the tracing of) each syscall path exactly. Syscall numbers come
from bpf/arch.py, the one place for per-architecture differences.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from sigscope.bpf.arch import UnsupportedArchError, syscall_numbers
from sigscope.errors import SetupError, SigscopeError
from sigscope.model.record import SYSCALL_VIAS
from sigscope.model.signals import SI_QUEUE, errno_name, signal_name

__all__ = ["SIGINFO_SIZE", "VIAS", "SendError", "SendSetupError", "build_siginfo", "pidfd_open",
           "send_signal"]

# The six send paths, in record.VIA_NAMES order.
VIAS: tuple[str, ...] = SYSCALL_VIAS

# Kernel siginfo_t (include/uapi/asm-generic/siginfo.h) on 64-bit ABIs: si_signo, si_errno,
# si_code, then the _sifields union, which holds pointers and so starts 8-aligned at 16. Its _rt
# member is {pid, uid, sigval}: si_pid at 16, si_uid at 20, the 8-byte sigval union at 24.
SIGINFO_SIZE = 128
_SIGINFO_HEADER = struct.Struct("=iii")  # si_signo, si_errno, si_code
_SIGINFO_RT = struct.Struct("=iIQ")  # si_pid, si_uid, si_value
_SIGINFO_RT_OFFSET = 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SendError(SigscopeError, OSError):
    """A signal could not be sent; ``errno`` is set and ``str()`` is one line naming the errno."""

    def __init__(self, error: int, message: str) -> None:
        super().__init__(error, os.strerror(error))
        self.message = message

    def __str__(self) -> str:
        return self.message


class SendSetupError(SendError, SetupError):
    """sigscope cannot send here at all: this architecture's syscall numbers are unknown to it
    (bpf/arch.py). A SendError with errno ENOSYS for the API; exit status 3 (a SetupError, like
    any missing architecture support) on the command line, since the kernel refused nothing."""


def build_siginfo(sig: int, value: int, code: int = SI_QUEUE) -> ctypes.Array:
    """A 128-byte siginfo as sigqueue(3) fills it: our pid and uid, and `value` as si_value.

    The kernel refuses si_code >= 0 (and SI_TKILL) from userspace unless the target is the caller
    itself, so queued signals are sent as SI_QUEUE.
    """
    if not -(1 << 63) <= value < (1 << 64):
        raise SendError(errno.EINVAL, f"signal value {value} does not fit in 64 bits")
    buffer = ctypes.create_string_buffer(SIGINFO_SIZE)
    _SIGINFO_HEADER.pack_into(buffer, 0, sig, 0, code)
    _SIGINFO_RT.pack_into(
        buffer, _SIGINFO_RT_OFFSET, os.getpid(), os.getuid(), value & 0xFFFFFFFFFFFFFFFF
    )
    return buffer


def _syscall(name: str, *args: int) -> int:
    try:
        number = getattr(syscall_numbers(), name)
    except UnsupportedArchError as exc:
        raise SendSetupError(errno.ENOSYS, str(exc)) from None
    result = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args))
    if result == -1:
        return -ctypes.get_errno()
    return result


def _check(result: int, call: str) -> int:
    if result < 0:
        error = -result
        raise SendError(error, f"{call} failed: {errno_name(error)} ({os.strerror(error)})")
    return result


def pidfd_open(pid: int, flags: int = 0) -> int:
    """A pidfd for process `pid` (close it with os.close); `flags` PIDFD_THREAD
    (bpf/features.py, Linux 6.9): for the thread `pid`. Raises SendError."""
    return _check(_syscall("pidfd_open", pid, flags), f"pidfd_open({pid})")


def _require(value: int | None, via: str, what: str) -> int:
    if value is None:
        raise SendError(errno.EINVAL, f"{via} needs {what}")
    return value


def send_signal(
    via: str,
    sig: int,
    pid: int | None = None,
    tid: int | None = None,
    value: int | None = None,
    pidfd: int | None = None,
) -> None:
    """Send `sig` through the syscall named by `via` (one of VIAS).

    - kill(pid), rt_sigqueueinfo(pid): `pid` is the process (or -pgid for kill).
    - tkill(tid): `tid`, or `pid` when no tid is given.
    - tgkill / rt_tgsigqueueinfo(pid, tid): `pid` is the thread group; `tid` defaults to it.
    - pidfd_send_signal: uses `pidfd`, or opens (and closes) one for `pid`.
    - The sigqueue variants always carry a siginfo with si_value = `value` (0 when None);
      pidfd_send_signal carries one only when `value` is given, else the kernel fills SI_USER.
    Raises SendError (one line, with the errno name) on failure: SendSetupError (ENOSYS) where
    the architecture's syscall numbers are unknown.
    """
    name = signal_name(sig)
    if via == "kill":
        target = _require(pid, via, "a pid")
        _check(_syscall("kill", target, sig), f"kill({target}, {name})")
    elif via == "tkill":
        target = _require(tid if tid is not None else pid, via, "a tid")
        _check(_syscall("tkill", target, sig), f"tkill({target}, {name})")
    elif via == "tgkill":
        tgid = _require(pid, via, "a pid (the thread group id)")
        thread = tid if tid is not None else tgid
        _check(_syscall("tgkill", tgid, thread, sig), f"tgkill({tgid}, {thread}, {name})")
    elif via == "rt_sigqueueinfo":
        target = _require(pid, via, "a pid")
        info = build_siginfo(sig, value or 0)
        _check(
            _syscall("rt_sigqueueinfo", target, sig, ctypes.addressof(info)),
            f"rt_sigqueueinfo({target}, {name}, value={value or 0})",
        )
    elif via == "rt_tgsigqueueinfo":
        tgid = _require(pid, via, "a pid (the thread group id)")
        thread = tid if tid is not None else tgid
        info = build_siginfo(sig, value or 0)
        _check(
            _syscall("rt_tgsigqueueinfo", tgid, thread, sig, ctypes.addressof(info)),
            f"rt_tgsigqueueinfo({tgid}, {thread}, {name}, value={value or 0})",
        )
    elif via == "pidfd_send_signal":
        _send_via_pidfd(sig, pid, value, pidfd)
    else:
        raise SendError(errno.EINVAL, f"unknown send path {via!r}: use one of {', '.join(VIAS)}")


def _send_via_pidfd(
    sig: int, pid: int | None, value: int | None, pidfd: int | None
) -> None:
    if pidfd is not None:
        _pidfd_send(pidfd, sig, value, f"pidfd {pidfd}")
        return
    target = _require(pid, "pidfd_send_signal", "a pid or a pidfd")
    fd = pidfd_open(target)
    try:
        _pidfd_send(fd, sig, value, f"pid {target}")
    finally:
        os.close(fd)


def _pidfd_send(fd: int, sig: int, value: int | None, target: str) -> None:
    info = build_siginfo(sig, value) if value is not None else None
    shown = f", value={value}" if value is not None else ""
    address = ctypes.addressof(info) if info is not None else 0
    _check(
        _syscall("pidfd_send_signal", fd, sig, address, 0),
        f"pidfd_send_signal({target}, {signal_name(sig)}{shown})",
    )
