"""Linux signal numbers and names, si_code and errno names, and parsing of user signal specs.

Numbers are the kernel's, as seen in tracepoints: x86_64 and aarch64 both use the generic numbering
of include/uapi/asm-generic/signal.h. The kernel's real-time signals run from 32 to 64 (_NSIG),
but the C library reserves the lowest for itself (glibc: 32 and 33, for thread cancellation and
setxid; musl: 32 to 34) and its SIGRTMIN is the first one left to applications. The names people
use (bash's ``kill -l``, Python's ``signal.SIGRTMIN``, strace, ``sigqueue(pid, SIGRTMIN+1, ...)``
in C) count from the C library's SIGRTMIN, so sigscope names and parses real-time signals the
same way: ``rt_range()`` asks this process's C library once, when a name is first needed.
Signals between 32 and the C library's SIGRTMIN have no portable name and print as ``SIG32``,
``SIG33``; numbers are accepted everywhere.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Mapping

from sigscope.errors import UsageError

__all__ = [
    "CODE_NAMES",
    "CORE_SIGNALS",
    "DEFAULT_IGNORE_SIGNALS",
    "GENERIC_CODES",
    "OUTCOMES",
    "SIGCHLD",
    "SIGCONT",
    "SIGKILL",
    "SIGNALS",
    "KERNEL_SIGRTMIN",
    "SIGRTMAX",
    "SIGSTOP",
    "STOP_SIGNALS",
    "SYS_SECCOMP",
    "SI_QUEUE",
    "SI_TIMER",
    "SI_TKILL",
    "SI_USER",
    "SI_KERNEL",
    "SignalSpecError",
    "code_name",
    "errno_name",
    "outcome_name",
    "parse_signal",
    "parse_signal_list",
    "rt_range",
    "set_rt_range",
    "signal_name",
]

# include/uapi/asm-generic/signal.h (identical numbers on x86_64).
SIGNALS: Mapping[str, int] = {
    "SIGHUP": 1,
    "SIGINT": 2,
    "SIGQUIT": 3,
    "SIGILL": 4,
    "SIGTRAP": 5,
    "SIGABRT": 6,
    "SIGBUS": 7,
    "SIGFPE": 8,
    "SIGKILL": 9,
    "SIGUSR1": 10,
    "SIGSEGV": 11,
    "SIGUSR2": 12,
    "SIGPIPE": 13,
    "SIGALRM": 14,
    "SIGTERM": 15,
    "SIGSTKFLT": 16,
    "SIGCHLD": 17,
    "SIGCONT": 18,
    "SIGSTOP": 19,
    "SIGTSTP": 20,
    "SIGTTIN": 21,
    "SIGTTOU": 22,
    "SIGURG": 23,
    "SIGXCPU": 24,
    "SIGXFSZ": 25,
    "SIGVTALRM": 26,
    "SIGPROF": 27,
    "SIGWINCH": 28,
    "SIGIO": 29,
    "SIGPWR": 30,
    "SIGSYS": 31,
}
# Other names for the same numbers: accepted when parsing, never printed.
_ALIASES: Mapping[str, int] = {
    "SIGIOT": 6,
    "SIGCLD": 17,
    "SIGPOLL": 29,
    "SIGUNUSED": 31,
}
KERNEL_SIGRTMIN = 32  # include/uapi/asm-generic/signal.h: the kernel's first real-time signal
SIGRTMAX = 64  # _NSIG: the last signal, for the kernel and every C library on Linux
# glibc's values (nptl/pthreadP.h reserves SIGCANCEL = 32 and SIGSETXID = 33): used when the C
# library cannot be asked.
GLIBC_SIGRTMIN = 34

_NAME_BY_NUMBER: dict[int, str] = {number: name for name, number in SIGNALS.items()}

_SPEC_HELP = "use a name like SIGUSR1 or USR1, a number 1-64, or SIGRTMIN+N/SIGRTMAX-N"

_rt_range: tuple[int, int] | None = None


class SignalSpecError(UsageError):
    """A signal spec given by the user could not be parsed (one-line message)."""


def _ask_libc() -> tuple[int, int]:
    """(SIGRTMIN, SIGRTMAX) from the C library this process runs with. glibc and musl both
    export __libc_current_sigrtmin/__libc_current_sigrtmax (their SIGRTMIN/SIGRTMAX macros
    call them); a value outside the kernel's 32..64 is not believed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        low, high = libc.__libc_current_sigrtmin(), libc.__libc_current_sigrtmax()
    except (OSError, AttributeError, TypeError):
        return GLIBC_SIGRTMIN, SIGRTMAX
    if KERNEL_SIGRTMIN <= low < high <= SIGRTMAX:
        return low, high
    return GLIBC_SIGRTMIN, SIGRTMAX


def rt_range() -> tuple[int, int]:
    """(SIGRTMIN, SIGRTMAX) as this system's C library numbers them: (34, 64) with glibc.
    Asked once (a dlsym and two calls, ~0.2 ms), when a real-time signal is first named or
    parsed; glibc's values when the C library does not say."""
    global _rt_range
    if _rt_range is None:
        _rt_range = _ask_libc()
    return _rt_range


def set_rt_range(low: int, high: int = SIGRTMAX) -> None:
    """Name real-time signals from another C library's SIGRTMIN/SIGRTMAX (tests; a tool
    reporting for processes linked against another libc)."""
    global _rt_range
    if not KERNEL_SIGRTMIN <= low < high <= SIGRTMAX:
        raise ValueError(f"real-time range {low}..{high} is outside the kernel's 32..64")
    _rt_range = (low, high)


def signal_name(number: int) -> str:
    """SIGUSR1; SIGRTMIN, SIGRTMIN+3, SIGRTMAX-2, SIGRTMAX counted from the C library's
    SIGRTMIN (rt_range(); with glibc 35 is SIGRTMIN+1), the lower half of the range from
    SIGRTMIN and the upper half from SIGRTMAX as bash's `kill -l` does; "SIG32"/"SIG33" for
    the signals the C library keeps for itself; "0" for the null signal; "SIG#<n>" for a
    number no signal has (65, -1)."""
    if number == 0:
        return "0"
    name = _NAME_BY_NUMBER.get(number)
    if name is not None:
        return name
    if not KERNEL_SIGRTMIN <= number <= SIGRTMAX:
        return f"SIG#{number}"
    low, high = rt_range()
    if number < low or number > high:
        return f"SIG{number}"
    if number == low:
        return "SIGRTMIN"
    if number == high:
        return "SIGRTMAX"
    if number - low <= (high - low) // 2:
        return f"SIGRTMIN+{number - low}"
    return f"SIGRTMAX-{high - number}"


_RT_SPEC = re.compile(r"^(?:SIG)?RT(?P<base>MIN|MAX)(?:(?P<sign>[+-])(?P<offset>\d+))?$")
_NUMBERED = re.compile(r"^(?:SIG)?(?P<number>\d+)$")


def parse_signal(spec: str) -> int:
    """Parse "USR2", "SIGUSR2", "sigusr2", "12", "SIG32", "SIGRTMIN+3", "RTMIN+3",
    "SIGRTMAX-2" or "0" into a signal number (0-64). SIGRTMIN/SIGRTMAX are the C library's
    (rt_range()): with glibc "RTMIN+1" is 35. Raises SignalSpecError (one line)."""
    text = spec.strip().upper()
    numbered = _NUMBERED.match(text)
    if numbered is not None:
        number = int(numbered.group("number"))
        if number > SIGRTMAX:
            raise SignalSpecError(f"signal number {number} is out of range: {_SPEC_HELP}")
        return number
    rt = _RT_SPEC.match(text)
    if rt is not None:
        low, high = rt_range()
        base = low if rt.group("base") == "MIN" else high
        offset = int(rt.group("offset") or 0)
        number = base + offset if rt.group("sign") == "+" else base - offset
        if not low <= number <= high:
            raise SignalSpecError(
                f"signal {spec.strip()!r} is outside SIGRTMIN..SIGRTMAX ({low}-{high} with "
                f"this C library): {_SPEC_HELP}"
            )
        return number
    name = text if text.startswith("SIG") else "SIG" + text
    found = SIGNALS.get(name)
    if found is None:
        found = _ALIASES.get(name)
    if found is None:
        raise SignalSpecError(f"unknown signal {spec.strip()!r}: {_SPEC_HELP}")
    return found


def parse_signal_list(spec: str) -> frozenset[int]:
    """Parse a comma-separated list such as "USR1,TERM,12" (empty items are ignored)."""
    items = [item for item in spec.split(",") if item.strip()]
    if not items:
        raise SignalSpecError(f"empty signal list {spec!r}: {_SPEC_HELP}")
    return frozenset(parse_signal(item) for item in items)


# --- si_code -----------------------------------------------------------------------------------
# include/uapi/asm-generic/siginfo.h
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_MESGQ = -3
SI_ASYNCIO = -4
SI_SIGIO = -5
SI_TKILL = -6
SI_DETHREAD = -7
SI_ASYNCNL = -60

# Codes that mean the same for every signal.
GENERIC_CODES: Mapping[int, str] = {
    SI_USER: "SI_USER",
    SI_KERNEL: "SI_KERNEL",
    SI_QUEUE: "SI_QUEUE",
    SI_TIMER: "SI_TIMER",
    SI_MESGQ: "SI_MESGQ",
    SI_ASYNCIO: "SI_ASYNCIO",
    SI_SIGIO: "SI_SIGIO",
    SI_TKILL: "SI_TKILL",
    SI_DETHREAD: "SI_DETHREAD",
    SI_ASYNCNL: "SI_ASYNCNL",
}


def _numbered(*names: str) -> dict[int, str]:
    """Positive per-signal codes are numbered from 1 in UAPI order."""
    return {index: name for index, name in enumerate(names, start=1) if name}


_ILL_CODES = _numbered(
    "ILL_ILLOPC", "ILL_ILLOPN", "ILL_ILLADR", "ILL_ILLTRP", "ILL_PRVOPC", "ILL_PRVREG",
    "ILL_COPROC", "ILL_BADSTK", "ILL_BADIADDR",
)
_FPE_CODES = _numbered(
    "FPE_INTDIV", "FPE_INTOVF", "FPE_FLTDIV", "FPE_FLTOVF", "FPE_FLTUND", "FPE_FLTRES",
    "FPE_FLTINV", "FPE_FLTSUB", "", "", "", "", "", "FPE_FLTUNK", "FPE_CONDTRAP",
)
_SEGV_CODES = _numbered(
    "SEGV_MAPERR", "SEGV_ACCERR", "SEGV_BNDERR", "SEGV_PKUERR", "SEGV_ACCADI", "SEGV_ADIDERR",
    "SEGV_ADIPERR",
)
_BUS_CODES = _numbered("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO")
_TRAP_CODES = _numbered("TRAP_BRKPT", "TRAP_TRACE", "TRAP_BRANCH", "TRAP_HWBKPT", "TRAP_UNK")
_CLD_CODES = _numbered(
    "CLD_EXITED", "CLD_KILLED", "CLD_DUMPED", "CLD_TRAPPED", "CLD_STOPPED", "CLD_CONTINUED",
)
_POLL_CODES = _numbered("POLL_IN", "POLL_OUT", "POLL_MSG", "POLL_ERR", "POLL_PRI", "POLL_HUP")
SYS_SECCOMP = 1  # SIGSYS si_code: seccomp(2) SECCOMP_RET_TRAP
_SYS_CODES = {SYS_SECCOMP: "SYS_SECCOMP"}

# Per-signal positive codes. Signals without their own set use the POLL_* codes (the UAPI says
# so: fcntl(F_SETSIG) delivers any signal with POLL_* reasons).
CODE_NAMES: Mapping[int, Mapping[int, str]] = {
    SIGNALS["SIGILL"]: _ILL_CODES,
    SIGNALS["SIGFPE"]: _FPE_CODES,
    SIGNALS["SIGSEGV"]: _SEGV_CODES,
    SIGNALS["SIGBUS"]: _BUS_CODES,
    SIGNALS["SIGTRAP"]: _TRAP_CODES,
    SIGNALS["SIGCHLD"]: _CLD_CODES,
    SIGNALS["SIGSYS"]: _SYS_CODES,
}

# include/uapi/linux/ptrace.h: ptrace event stops report SIGTRAP with
# si_code = (PTRACE_EVENT_x << 8) | SIGTRAP.
_PTRACE_EVENTS: Mapping[int, str] = {
    1: "PTRACE_EVENT_FORK",
    2: "PTRACE_EVENT_VFORK",
    3: "PTRACE_EVENT_CLONE",
    4: "PTRACE_EVENT_EXEC",
    5: "PTRACE_EVENT_VFORK_DONE",
    6: "PTRACE_EVENT_EXIT",
    7: "PTRACE_EVENT_SECCOMP",
    128: "PTRACE_EVENT_STOP",
}


def code_name(code: int, sig: int) -> str:
    """The UAPI name of si_code `code` for signal `sig`, or str(code) when it has none."""
    generic = GENERIC_CODES.get(code)
    if generic is not None:
        return generic
    if code > 0:
        sigtrap = SIGNALS["SIGTRAP"]
        if sig == sigtrap and code & 0xFF == sigtrap and (code >> 8) in _PTRACE_EVENTS:
            return f"SIGTRAP|{_PTRACE_EVENTS[code >> 8]}<<8"
        name = CODE_NAMES.get(sig, _POLL_CODES).get(code)
        if name is not None:
            return name
    return str(code)


# --- errno -------------------------------------------------------------------------------------
# Python's errno.errorcode picks one name where Linux has aliases; prefer the names people grep for.
_PREFERRED_ERRNO_NAMES: Mapping[int, str] = {
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
}
# include/linux/errno.h: kernel-internal codes that tracepoints can still show (interrupted
# syscalls).
_KERNEL_ERRNO_NAMES: Mapping[int, str] = {
    512: "ERESTARTSYS",
    513: "ERESTARTNOINTR",
    514: "ERESTARTNOHAND",
    515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK",
}


def errno_name(value: int) -> str:
    """EPERM for 1 or -1 (syscall returns are negative); "0" for 0; "E#<n>" when unknown."""
    number = abs(value)
    if number == 0:
        return "0"
    name = (
        _PREFERRED_ERRNO_NAMES.get(number)
        or _KERNEL_ERRNO_NAMES.get(number)
        or _errno.errorcode.get(number)
    )
    return name if name is not None else f"E#{number}"


# --- signal_generate `result` ------------------------------------------------------------------
# include/trace/events/signal.h, enum TRACE_SIGNAL_* (DELIVERED, IGNORED, ALREADY_PENDING,
# OVERFLOW_FAIL, LOSE_INFO), in the names sigscope reports: index = the tracepoint's `result`.
OUTCOMES: tuple[str, ...] = (
    "delivered",
    "ignored",
    "already_pending",
    "overflow",
    "lose_info",
)


def outcome_name(result: int | None) -> str | None:
    """What signal_generate's `result` says became of the signal, e.g. "ignored"; None when
    nothing was generated (None or negative: record.GEN_NONE); str(result) when unknown."""
    if result is None or result < 0:
        return None
    return OUTCOMES[result] if result < len(OUTCOMES) else str(result)


# --- signals by default action ---------------------------------------------------------------
# signal(7), "Standard signals"; the kernel's sig_kernel_stop/sig_kernel_ignore/
# sig_kernel_coredump masks (include/linux/signal.h). Every other standard signal terminates.
SIGKILL = SIGNALS["SIGKILL"]
SIGCHLD = SIGNALS["SIGCHLD"]
SIGCONT = SIGNALS["SIGCONT"]
SIGSTOP = SIGNALS["SIGSTOP"]
STOP_SIGNALS: frozenset[int] = frozenset(
    SIGNALS[name] for name in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"))
DEFAULT_IGNORE_SIGNALS: frozenset[int] = frozenset(
    SIGNALS[name] for name in ("SIGCHLD", "SIGURG", "SIGWINCH"))
CORE_SIGNALS: frozenset[int] = frozenset(
    SIGNALS[name] for name in ("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
                               "SIGSEGV", "SIGXCPU", "SIGXFSZ", "SIGSYS"))
