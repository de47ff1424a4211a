"""The tool's model: one Event per send attempt and recipient."""

from __future__ import annotations

import time
from typing import Any

from sigscope.model.origins import ORIGINS
from sigscope.model.signals import code_name, errno_name, signal_name

# What signal_generate's `result` says became of the signal (enum TRACE_SIGNAL_*), in the
# names sigscope reports.
OUTCOMES = ("delivered", "ignored", "already_pending", "overflow", "lose_info")

__all__ = ["ORIGINS", "OUTCOMES", "VALUE_FIELDS", "Event", "Shape", "kernel_origin",
           "outcome_name"]

_SIGNUM = {
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGBUS": 7,
    "SIGFPE": 8, "SIGKILL": 9, "SIGSEGV": 11, "SIGPIPE": 13, "SIGALRM": 14, "SIGCHLD": 17,
    "SIGCONT": 18, "SIGTSTP": 20, "SIGTTIN": 21, "SIGTTOU": 22, "SIGURG": 23, "SIGXCPU": 24,
    "SIGXFSZ": 25, "SIGVTALRM": 26, "SIGPROF": 27, "SIGWINCH": 28, "SIGIO": 29, "SIGSYS": 31,
}
SI_USER, SI_KERNEL, SI_QUEUE, SI_TIMER, SI_TKILL = 0, 0x80, -1, -2, -6
SYS_SECCOMP = 1
_FAULT_SIGNALS = {_SIGNUM[n] for n in ("SIGILL", "SIGTRAP", "SIGBUS", "SIGFPE", "SIGSEGV")}
_TIMER_SIGNALS = {_SIGNUM[n] for n in ("SIGALRM", "SIGVTALRM", "SIGPROF")}
_TTY_SIGNALS = {_SIGNUM[n] for n in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTSTP", "SIGTTIN",
                                     "SIGTTOU", "SIGWINCH", "SIGCONT")}
_IO_SIGNALS = {_SIGNUM[n] for n in ("SIGIO", "SIGURG")}
_RLIMIT_SIGNALS = {_SIGNUM[n] for n in ("SIGXCPU", "SIGXFSZ")}
_SIGKILL = _SIGNUM["SIGKILL"]


def kernel_origin(sig: int, code: int, stack_origin: str | None = None) -> str:
    """Why the kernel generated a signal (one of ORIGINS, defined in model/origins.py), from
    the signal, its si_code and, for a SIGKILL, the origin its kernel stack names
    (``stack_origin``; None: no stack, or a path that names none)."""
    if code == SI_TIMER or (sig in _TIMER_SIGNALS and code in (SI_KERNEL, SI_USER)):
        return "timer"
    if sig == _SIGKILL:
        return stack_origin if stack_origin is not None else "other"
    if sig == _SIGNUM["SIGCHLD"]:
        return "child"
    if sig in _FAULT_SIGNALS and (code > 0 or code == SI_KERNEL):
        return "fault"
    if sig == _SIGNUM["SIGSYS"] and code == SYS_SECCOMP:
        return "seccomp"
    if sig == _SIGNUM["SIGPIPE"]:
        return "pipe"
    if sig in _RLIMIT_SIGNALS:
        return "rlimit"
    # Positive codes below SI_KERNEL are POLL_* reasons (F_SETSIG); SI_KERNEL itself is not.
    if sig in _IO_SIGNALS or (0 < code < SI_KERNEL and sig not in _FAULT_SIGNALS):
        return "io"
    if sig in _TTY_SIGNALS and code == SI_KERNEL:
        return "tty"
    return "other"


def outcome_name(result: int | None) -> str | None:
    if result is None or result < 0:
        return None
    return OUTCOMES[result] if result < len(OUTCOMES) else str(result)


# The fields that make an Event's value, in constructor order.
VALUE_FIELDS = (
    "id", "ktime_ns", "time_ns", "sig", "via", "sender_pid", "sender_tid", "sender_comm",
    "sender_uid", "target_pid", "target_tid", "target_comm", "arg_pid", "arg_tid", "arg_pidfd",
    "code", "result", "outcome", "group", "stack_origin",
)


class Shape:
    """What a run of Events has in common: every field but id and times (see Decoder).
    Outputs may keep what they rendered for it in `rendered`, keyed by output."""

    __slots__ = ("fields", "rendered")

    def __init__(self, fields: tuple) -> None:
        self.fields = fields
        self.rendered: dict[str, object] = {}


class Event:
    """One signal send attempt and recipient.

    Times: ``ktime_ns`` is CLOCK_MONOTONIC as the kernel took it; ``time_ns`` the same instant
    on the wall clock (UTC). Target fields are None when neither the kernel nor /proc could tell.
    ``result``/``error`` are the syscall's return and errno name (None for via == "kernel");
    ``outcome`` is what the kernel did with the signal (None when nothing was generated).
    ``stack_origin`` is, for a kernel-generated SIGKILL, the origin its kernel stack names
    (model/origins.py; None when no stack was taken or the path names none); ``origin``
    combines it with the signal and si_code.

    ``shape`` is shared with events that differ only in id and time (set by the decoder), so
    outputs can reuse what they rendered for the previous one; ``fate`` is, with --fate, the
    Fate (sigscope.fate) of this signal once known (the tracer also yields it after this Event).
    Neither is part of the event's value. (A plain class with slots rather than a dataclass:
    one is built per record, and `dataclasses` costs start-up time.)
    """

    __slots__ = VALUE_FIELDS + ("shape", "fate")

    def __init__(
        self, id: int, ktime_ns: int, time_ns: int, sig: int, via: str, sender_pid: int,
        sender_tid: int, sender_comm: str, sender_uid: int, target_pid: int | None,
        target_tid: int | None, target_comm: str | None, arg_pid: int | None,
        arg_tid: int | None, arg_pidfd: int | None, code: int | None, result: int | None,
        outcome: str | None, group: bool | None = None, stack_origin: str | None = None,
        shape: Shape | None = None, fate: Any = None,
    ) -> None:
        self.id = id
        self.ktime_ns = ktime_ns
        self.time_ns = time_ns
        self.sig = sig
        self.via = via
        self.sender_pid = sender_pid
        self.sender_tid = sender_tid
        self.sender_comm = sender_comm
        self.sender_uid = sender_uid
        self.target_pid = target_pid
        self.target_tid = target_tid
        self.target_comm = target_comm
        self.arg_pid = arg_pid
        self.arg_tid = arg_tid
        self.arg_pidfd = arg_pidfd
        self.code = code
        self.result = result
        self.outcome = outcome
        self.group = group
        self.stack_origin = stack_origin
        self.shape = shape
        self.fate = fate

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in VALUE_FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable (fate is filled in later)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in VALUE_FIELDS)
        return f"Event({inner})"

    @property
    def signal(self) -> str:
        return signal_name(self.sig)

    @property
    def origin(self) -> str | None:
        if self.via != "kernel":
            return None
        return kernel_origin(self.sig, self.code if self.code is not None else SI_KERNEL,
                             self.stack_origin)

    @property
    def error(self) -> str | None:
        if self.result is None or self.result >= 0:
            return None
        return errno_name(self.result)

    @property
    def code_name(self) -> str | None:
        return None if self.code is None else code_name(self.code, self.sig)

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result < 0

    def iso_time(self) -> str:
        seconds, nanos = divmod(self.time_ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{stamp}.{nanos // 1000:06d}Z"

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines object (documented in README; keys may be added, never renamed)."""
        return {
            "type": "signal",
            "id": self.id,
            "time": self.iso_time(),
            "ktime_ns": self.ktime_ns,
            "sig": self.sig,
            "signal": self.signal,
            "via": self.via,
            "origin": self.origin,
            "sender": {"pid": self.sender_pid, "tid": self.sender_tid,
                       "comm": self.sender_comm, "uid": self.sender_uid},
            "target": {"pid": self.target_pid, "tid": self.target_tid,
                       "comm": self.target_comm},
            "args": {"pid": self.arg_pid, "tid": self.arg_tid, "pidfd": self.arg_pidfd},
            "code": self.code,
            "code_name": self.code_name,
            "result": self.result,
            "error": self.error,
            "outcome": self.outcome,
        }
